"""Training throughput and peak memory: tune-fusion's ALIGNN on both message-passing paths (DGL kernels, plain
PyTorch) vs the reference ``alignn`` package, and the fused model's overhead over graph-only. Same graphs, same
batches (batch 64), same optimizer, default model size.

    pip install alignn==2026.8.11        # the reference, for this benchmark only
    python benchmarks/throughput.py      # about 10 minutes on 2 CPU cores
    python benchmarks/throughput.py --device cuda --impls ours,fused      # on a GPU (the torch path)
    python benchmarks/throughput.py --profile ours   # where the time goes (torch profiler, top operators)
    python benchmarks/throughput.py --conv           # one line-graph-sized convolution, DGL vs torch (+ compile)

Each implementation runs in its own process (so peak memory is its own), alternating, ``--repeats`` times;
the medians, their spread and the ratios are printed. ``ours`` is graph-only on the path ``graph_backend: auto``
picks (DGL on CPU, torch on CUDA), ``ours_torch`` graph-only on the torch path, ``fused`` middle fusion at
layer 2 + cross-modal attention on the auto path.
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

IMPLS = ("ours", "ours_torch", "reference", "fused")


def reference_graphs(batch):
    """The batch as the DGL graph pair the reference ALIGNN reads (batched: its readout needs the crystal sizes)."""
    import dgl
    import torch

    crystal_of_atom = torch.repeat_interleave(torch.arange(len(batch.atoms_per_crystal)), batch.atoms_per_crystal)
    bonds = torch.bincount(crystal_of_atom[batch.edge_src], minlength=len(batch.atoms_per_crystal))
    pairs = torch.bincount(crystal_of_atom[batch.edge_src][batch.angle_src], minlength=len(batch.atoms_per_crystal))
    g = dgl.graph((batch.edge_src, batch.edge_dst), num_nodes=len(batch.atom_features))
    g.ndata["atom_features"], g.edata["r"] = batch.atom_features, batch.bond_vectors
    g.set_batch_num_nodes(batch.atoms_per_crystal)
    g.set_batch_num_edges(bonds)
    lg = dgl.graph((batch.angle_src, batch.angle_dst), num_nodes=len(batch.edge_src))
    lg.edata["h"] = batch.angle_cosines
    lg.set_batch_num_nodes(bonds)
    lg.set_batch_num_edges(pairs)
    return g, lg


def build(impl: str, data, device):
    """The model under test and a function batch -> prediction."""
    from tune_fusion.config import Config
    from tune_fusion.model import FusionNetwork
    from tune_fusion.train import place_model

    if impl == "reference":
        from alignn.models.alignn import ALIGNN, ALIGNNConfig

        model = ALIGNN(ALIGNNConfig(name="alignn", atom_input_features=data.atom_feature_dim, output_features=1))
        return model.to(device), lambda batch: model((*batch.reference, None))
    settings = {"fused": {"use_middle_fusion": True, "middle_fusion_layers": "2", "use_cross_modal": True},
                "ours_torch": {"graph_only": True, "graph_backend": "torch"}}.get(impl, {"graph_only": True})
    cfg = Config.from_dict(settings)
    model = place_model(FusionNetwork(cfg.model, data.atom_feature_dim, data.text_dim), device, cfg.train.graph_backend)
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
    scaler = Standardizer.fit(data.targets[data.split("train")])
    loader = make_loader(data, "train", batch_size, scaler, shuffle=True, seed=0)
    model, predict = build(impl, data, device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    steps = [b.to(device) for _, b in zip(range(batches + 1), loader)]
    if impl == "reference":
        for batch in steps:
            batch.reference = tuple(x.to(device) for x in reference_graphs(batch))

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
            "peak_mb": peak, "device": str(device), "params": sum(p.numel() for p in model.parameters()),
            "backend": getattr(model, "graph_backend", "dgl (reference)")}


def conv_benchmark(nodes: int, edges: int, features: int, repeats: int, device_name: str) -> dict:
    """One edge-gated convolution (forward + backward) on a random graph of line-graph size, on each path; seconds
    (median of ``repeats``, after a warm-up) for DGL (CPU only), torch, and torch with ``torch.compile``."""
    import torch

    from tune_fusion.model.alignn import EdgeGatedGraphConv
    from tune_fusion.model.message_passing import GRAPHS
    from tune_fusion.train import pick_device

    device = pick_device(device_name)
    gen = torch.Generator().manual_seed(0)
    src, dst = (torch.randint(0, nodes, (edges,), generator=gen).to(device) for _ in range(2))
    x = torch.randn(nodes, features, generator=gen).to(device)
    e = torch.randn(edges, features, generator=gen).to(device)
    conv = EdgeGatedGraphConv(features).to(device)
    compiled = torch.compile(conv, dynamic=True)
    paths = {"torch": (conv, "torch"), "torch_compile": (compiled, "torch")}
    if device.type == "cpu":
        paths["dgl"] = (conv, "dgl")
    out = {}
    for name, (module, backend) in paths.items():
        graph = GRAPHS[backend](src, dst, nodes)
        times = []
        for _ in range(repeats + 1):  # the first run warms up (and compiles)
            start = time.perf_counter()
            xo, eo = module(graph, x.requires_grad_(), e.requires_grad_())
            (xo.sum() + eo.sum()).backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        out[name] = {"seconds": round(statistics.median(times[1:]), 4), "runs": [round(t, 4) for t in times[1:]],
                     "first_run_s": round(times[0], 2)}
    return {"nodes": nodes, "edges": edges, "features": features, "device": str(device),
            "threads": torch.get_num_threads(), **out}


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
    parser.add_argument("--conv", action="store_true",
                        help="time one line-graph-sized convolution (6k nodes, 74k edges, 256 features) instead")
    parser.add_argument("--conv-size", default="6000,74000,256", help="nodes,edges,features for --conv")
    parser.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.conv:
        nodes, edges, features = (int(v) for v in args.conv_size.split(","))
        print(json.dumps(conv_benchmark(nodes, edges, features, args.repeats, args.device), indent=2))
        return
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
               | {"crystals_per_s_runs": [round(r["crystals_per_s"], 2) for r in rs], "params": rs[0]["params"],
                  "device": rs[0]["device"], "backend": rs[0]["backend"]} for impl, rs in runs.items()}
    print(json.dumps(summary, indent=2))
    for a, b, what in (("ours", "reference", "throughput ours / reference ALIGNN"),
                       ("ours_torch", "reference", "throughput ours (torch path) / reference ALIGNN"),
                       ("ours_torch", "ours", "throughput torch path / auto path")):
        if a in summary and b in summary:
            ratio = summary[a]["crystals_per_s"] / summary[b]["crystals_per_s"]
            print(f"{what} (graph-only, batch {args.batch_size}): {ratio:.2f}x; peak memory ratio "
                  f"{summary[a]['peak_mb'] / summary[b]['peak_mb']:.2f}")
    if "ours" in summary and "fused" in summary:
        print(f"step time fused / graph-only: {summary['fused']['step_s'] / summary['ours']['step_s']:.2f}x")


if __name__ == "__main__":
    main()
