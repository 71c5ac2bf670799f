"""Training throughput and peak memory: tune-fusion's ALIGNN vs the reference ``alignn`` package, and the fused model's
overhead over graph-only. Same graphs, same batches (batch 64), same optimizer, default model size.

    pip install alignn==2026.8.11        # the reference, for this benchmark only
    python benchmarks/throughput.py      # about 5 minutes on 2 CPU cores
    python benchmarks/throughput.py --profile ours   # where the time goes (torch profiler, top operators)

Each implementation runs in its own process (so peak memory is its own), alternating, ``--repeats`` times;
the medians and their ratios are printed.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from tune_fusion.config import DataConfig

IMPLS = ("ours", "reference", "fused")


def build(impl: str, data):
    """The model under test and a function batch -> prediction."""
    from tune_fusion.config import Config
    from tune_fusion.model import FusionNetwork

    if impl == "reference":
        from alignn.models.alignn import ALIGNN, ALIGNNConfig

        model = ALIGNN(ALIGNNConfig(name="alignn", atom_input_features=data.atom_feature_dim, output_features=1))
        return model, lambda batch: model((batch.graph, batch.line_graph, None))
    fused = {"use_middle_fusion": True, "middle_fusion_layers": "2", "use_cross_modal": True}
    cfg = Config.from_dict(fused if impl == "fused" else {"graph_only": True})
    model = FusionNetwork(cfg.model, data.atom_feature_dim, data.text_dim)
    return model, lambda batch: model(batch).prediction


def worker(impl: str, cache: str, batches: int, batch_size: int, device_name: str, profile: bool) -> dict:
    """Train ``batches`` steps after one warm-up step; crystals per second and peak memory."""
    import torch

    import tune_fusion  # noqa: F401  (DGL compatibility before alignn imports dgl)
    from tune_fusion.data import Standardizer, load, make_loader
    from tune_fusion.train import pick_device

    torch.manual_seed(0)
    device = pick_device(device_name)
    data = load(cache)
    scaler = Standardizer.fit(data.tensors["targets"][data.split("train")])
    loader = make_loader(data, "train", batch_size, scaler, shuffle=True, seed=0)
    model, predict = build(impl, data)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    steps = [b.to(device) for _, b in zip(range(batches + 1), loader)]

    def step(batch):
        loss = torch.nn.functional.mse_loss(predict(batch), batch.target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step(steps[0])  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if profile:
        with torch.profiler.profile() as prof:
            for batch in steps[1:]:
                step(batch)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), file=sys.stderr)
    else:
        for batch in steps[1:]:
            step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    crystals = sum(len(b) for b in steps[1:])
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"impl": impl, "crystals_per_s": crystals / seconds, "step_s": seconds / len(steps[1:]),
            "peak_mb": peak, "device": str(device), "params": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=6, help="timed training steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per implementation (alternating)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-structures", type=int, default=0, help="crystals to prepare (0 = all 800)")
    parser.add_argument("--cache-dir", default=DataConfig().cache_dir)
    parser.add_argument("--impls", default=",".join(IMPLS), help="which of ours,reference,fused to run")
    parser.add_argument("--profile", choices=IMPLS, help="profile one implementation instead")
    parser.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.cache, args.batches, args.batch_size, args.device,
                                args.profile is not None)))
        return

    from tune_fusion.data import prepare

    data, _ = prepare(DataConfig(max_structures=args.max_structures, cache_dir=args.cache_dir))
    impls = [args.profile] if args.profile else args.impls.split(",")
    runs: dict[str, list[dict]] = {impl: [] for impl in impls}
    for _ in range(1 if args.profile else args.repeats):
        for impl in impls:
            cmd = [sys.executable, __file__, "--worker", impl, "--cache", str(data.path), "--batches",
                   str(args.batches), "--batch-size", str(args.batch_size), "--device", args.device] + (["--profile", impl] if args.profile else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                sys.exit(f"{impl} failed:\n{out.stderr[-3000:]}")
            if args.profile:
                print(out.stderr)
            runs[impl].append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = {impl: {key: statistics.median(r[key] for r in rs) for key in ("crystals_per_s", "step_s", "peak_mb")}
               | {"params": rs[0]["params"], "device": rs[0]["device"]} for impl, rs in runs.items()}
    print(json.dumps(summary, indent=2))
    if "ours" in summary and "reference" in summary:
        ratio = summary["ours"]["crystals_per_s"] / summary["reference"]["crystals_per_s"]
        print(f"throughput ours / reference ALIGNN (graph-only, batch {args.batch_size}): {ratio:.2f}x; peak memory ratio "
              f"{summary['ours']['peak_mb'] / summary['reference']['peak_mb']:.2f}")
    if "ours" in summary and "fused" in summary:
        print(f"step time fused / graph-only: {summary['fused']['step_s'] / summary['ours']['step_s']:.2f}x")


if __name__ == "__main__":
    main()
