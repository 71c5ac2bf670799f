"""The GPU check's measurements (``benchmarks/gpu_check.sh`` runs it), Ray-free: it reads a prepared cache and needs
only torch and the project's light dependencies, as on the lent GPU machine. Writes one JSON file:

- ``throughput``: train crystals/s of graph-only and fused (the seed guide's example 5: middle fusion at layer 2 with
  LayerNorm and a learnable scale starting at 12, 4-head cross-modal attention of width 256), default model size,
  at batch 64 and 256; fp32, TF32 and bf16 autocast, each eager and under ``torch.compile(dynamic=True)``; with each
  configuration's peak memory (``torch.cuda.max_memory_allocated``; on the CPU the process's peak RSS), its
  TFLOP/s and its share of the H200's bf16 peak (790 TFLOP/s), the FLOPs counted with
  ``torch.utils.flop_counter.FlopCounterMode`` on the same batches (matrix products: what the tensor cores do);
- ``packing``: 1, 2, 4 and 8 training processes at once on the one device (fused, batch 64, fp32, eager, each
  assembling its own batches as a trial does), each one's and the total crystals/s, each one's peak memory;
- ``batch_assembly``: seconds per batch the CPU side takes to assemble cached batches, with 1 and 4 loader workers.

    python benchmarks/gpu_bench.py --cache-dir .gpu_carry/cache                 # on the GPU (about 6 minutes)
    python benchmarks/gpu_bench.py --cache-dir .gpu_carry/cache --dry-run       # CPU, tiny sizes, same JSON keys

Every measurement runs in a worker process of its own (so its peak memory is its own); one that breaks is recorded
as ``failed`` with its error, one that cannot run here (TF32 on a CPU) or did not fit the time budget as ``skipped``
with the reason; the keys are the same either way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from tune_fusion.config import DataConfig

__all__ = ["BATCH_SIZES", "BF16_PEAK_TFLOPS", "MODELS", "MODES", "PACKING", "PRECISIONS", "WORKERS", "main",
           "model_settings", "run_benchmark"]

BF16_PEAK_TFLOPS = 790.0  # the H200's dense bf16 rate measured on the lent machine (KINDS.md: 769-798)
MODELS = ("graph_only", "fused")
BATCH_SIZES = (64, 256)
PRECISIONS = ("fp32", "tf32", "bf16")
MODES = ("eager", "compile")
PACKING = (1, 2, 4, 8)
WORKERS = (1, 4)
# the seed guide's example 5 ("all fusion mechanisms"), as tune-fusion options
EXAMPLE_5 = {"use_middle_fusion": True, "middle_fusion_layers": "2", "middle_fusion_use_gate_norm": True,
             "middle_fusion_use_learnable_scale": True, "middle_fusion_initial_scale": 12.0, "use_cross_modal": True,
             "cross_modal_num_heads": 4, "cross_modal_hidden_dim": 256, "learning_rate": 0.001}
# --dry-run: a tiny model with example 5's structure (middle fusion at layer 2 needs 3 ALIGNN layers)
TINY = {"alignn_layers": 3, "gcn_layers": 1, "hidden_features": 16, "embedding_features": 8,
        "edge_input_features": 16, "triplet_input_features": 8, "text_projection_dim": 8,
        "middle_fusion_hidden_dim": 16, "cross_modal_hidden_dim": 16}


def model_settings(model: str, tiny: bool) -> dict[str, Any]:
    """The config of ``model`` (graph_only or fused), on the torch message-passing path (the one CUDA runs)."""
    settings = {"graph_only": True} if model == "graph_only" else dict(EXAMPLE_5)
    return {**settings, **(TINY if tiny else {}), "graph_backend": "torch"}


# ---- inside a worker process -------------------------------------------------------------------------------------

def _open(cache: str):
    from tune_fusion.data import load

    return load(cache)


def _peak_mb(device) -> tuple[float, str]:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak RSS of the process (CPU)"


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _trainer(model_name: str, tiny: bool, data, device):
    """(model, one training step batch -> None): forward, MSE, backward, gradient clip, AdamW, as ``fit`` does."""
    import torch

    from tune_fusion.config import Config
    from tune_fusion.train import build_model, parameter_groups, place_model

    cfg = Config.from_dict(model_settings(model_name, tiny), source="gpu_bench")
    model = place_model(build_model(cfg, data), device, cfg.train.graph_backend)
    model.train()
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.train.weight_decay), lr=cfg.train.learning_rate)
    clip = cfg.train.grad_clip_norm

    def step(forward, batch, autocast) -> None:
        with autocast():
            loss = torch.nn.functional.mse_loss(forward(batch).prediction.float(), batch.target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()

    return model, step


def _precision(name: str, device):
    """(skip reason or None, autocast context factory) for fp32, tf32 or bf16; sets the TF32 switches."""
    import torch

    tf32 = name == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if tf32 and device.type != "cuda":
        return "TF32 is a CUDA matrix mode; this device is a CPU", contextlib.nullcontext
    if name == "bf16":
        return None, lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return None, contextlib.nullcontext


def _batches(data, batch_size: int, count: int, device, workers: int = 0) -> list:
    """``count`` shuffled training batches (epochs repeat as needed), already on ``device``."""
    from tune_fusion.data import Standardizer, make_loader

    scaler = Standardizer.fit(data.targets[data.split("train")])
    out, epoch = [], 0
    while len(out) < count:
        loader = make_loader(data, "train", batch_size, scaler, shuffle=True, seed=epoch, num_workers=workers)
        out += [b.to(device) for _, b in zip(range(count - len(out)), loader)]
        epoch += 1
    return out


def _count_flops(model, step, batches) -> float:
    """FLOPs of forward + backward over ``batches`` (eager, fp32; the optimizer's element-wise work not counted)."""
    import contextlib as ctx

    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        for batch in batches:
            step(model, batch, ctx.nullcontext)
    return float(counter.get_total_flops())


def throughput_worker(args) -> dict[str, Any]:
    """One model in one mode (eager or compiled): every batch size x precision, on the same batches. Each result is
    also written to ``--result-file`` as soon as it is measured, so a worker stopped at the time limit keeps them."""
    import torch

    from tune_fusion.train import pick_device

    torch.manual_seed(0)
    device = pick_device(args.device)
    data = _open(args.cache)
    model, step = _trainer(args.model, args.tiny, data, device)
    doc: dict[str, Any] = {"model": args.model, "mode": args.mode, "params": sum(p.numel() for p in model.parameters()),
                           "device": str(device), "results": {}}
    out = doc["results"]
    if args.mode == "compile" and device.type == "cpu" and not args.compile_on_cpu:
        reason = ("torch.compile on the CPU took 48-116 s per model and precision on 2 cores (measured); the dry run "
                  "skips it (--compile-on-cpu measures it)")
        out.update({f"batch_{b}/{p}": {"status": "skipped", "reason": reason} for b in BATCH_SIZES for p in PRECISIONS})
        return doc
    forward = torch.compile(model, dynamic=True) if args.mode == "compile" else model
    for batch_size in BATCH_SIZES:
        batches = _batches(data, batch_size, args.warmup + args.steps, device)
        timed = batches[args.warmup:]
        flops = _count_flops(model, step, timed) if args.mode == "eager" else None
        for precision in PRECISIONS:
            out[f"batch_{batch_size}/{precision}"] = _measure(step, forward, batches, args, precision, device, flops)
            if args.result_file:
                Path(args.result_file).write_text(json.dumps(doc))
    return doc


def _measure(step, forward, batches: list, args, precision: str, device, flops: float | None) -> dict[str, Any]:
    """Warm-up steps (they compile, in the compiled mode), then the timed ones; crystals/s and peak memory."""
    if time.time() > args.deadline:
        return {"status": "skipped", "reason": "the time budget ran out"}
    skip, autocast = _precision(precision, device)
    if skip:
        return {"status": "skipped", "reason": skip}
    timed = batches[args.warmup:]
    try:
        _reset_peak(device)
        start = time.perf_counter()
        for batch in batches[: args.warmup]:
            step(forward, batch, autocast)
        _sync(device)
        warmup_s = time.perf_counter() - start
        start = time.perf_counter()
        for batch in timed:
            step(forward, batch, autocast)
        _sync(device)
        seconds = time.perf_counter() - start
        peak, memory_kind = _peak_mb(device)
        crystals = sum(len(b) for b in timed)
        return {"status": "measured", "crystals_per_s": crystals / seconds, "step_s": seconds / len(timed),
                "steps": len(timed), "crystals": crystals, "warmup_s": warmup_s, "peak_memory_mb": peak,
                "memory_kind": memory_kind, "flops": flops}
    except Exception as err:  # recorded with the figures: finding what breaks is what the GPU run is for
        return {"status": "failed", "error": f"{type(err).__name__}: {err}"[:2000],
                "traceback": traceback.format_exc()[-3000:]}
    finally:
        _precision("fp32", device)


def pack_worker(args) -> dict[str, Any]:
    """One of ``--processes`` trials sharing the device: warm up, wait for the others, train for ``--seconds``."""
    import torch

    from tune_fusion.train import pick_device

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.processes))
    torch.manual_seed(args.rank)
    device = pick_device(args.device)
    data = _open(args.cache)
    model, step = _trainer("fused", args.tiny, data, device)
    batches = iter(_endless(data, 64))
    for _ in range(args.warmup):
        step(model, next(batches).to(device), contextlib.nullcontext)
    _sync(device)
    _reset_peak(device)
    ready = Path(args.ready_dir)
    (ready / f"ready-{args.rank}").touch()
    while not (ready / "go").exists():
        time.sleep(0.01)
    crystals, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        batch = next(batches).to(device)  # assembled on the CPU, as in a trial
        step(model, batch, contextlib.nullcontext)
        crystals += len(batch)
    _sync(device)
    seconds = time.perf_counter() - start
    peak, memory_kind = _peak_mb(device)
    return {"crystals_per_s": crystals / seconds, "crystals": crystals, "seconds": seconds, "peak_memory_mb": peak,
            "memory_kind": memory_kind, "threads": torch.get_num_threads()}


def _endless(data, batch_size: int, workers: int = 0):
    from tune_fusion.data import Standardizer, make_loader

    scaler = Standardizer.fit(data.targets[data.split("train")])
    epoch = 0
    while True:
        yield from make_loader(data, "train", batch_size, scaler, shuffle=True, seed=epoch, num_workers=workers)
        epoch += 1


def assembly_worker(args) -> dict[str, Any]:
    """Seconds per batch of the DataLoader over the cached training split (shuffled, collated, on the CPU)."""
    from tune_fusion.data import Standardizer, make_loader

    data = _open(args.cache)
    scaler = Standardizer.fit(data.targets[data.split("train")])
    out = {}
    for batch_size in BATCH_SIZES:
        for workers in WORKERS:
            times, start, epoch = [], time.perf_counter(), 0
            while len(times) < args.steps + 1:
                loader = make_loader(data, "train", batch_size, scaler, shuffle=True, seed=epoch, num_workers=workers)
                for batch in loader:
                    now = time.perf_counter()
                    times.append((now - start, len(batch)))
                    start = now
                    if len(times) == args.steps + 1:
                        break
                epoch += 1
            rest = times[1:]
            out[f"batch_{batch_size}/workers_{workers}"] = {
                "s_per_batch": statistics.mean(t for t, _ in rest), "s_per_batch_median": statistics.median(t for t, _ in rest),
                "first_batch_s": times[0][0], "batches": len(rest), "crystals_per_batch": statistics.mean(n for _, n in rest)}
    return out


# ---- the driver ----------------------------------------------------------------------------------------------------

def _worker(kind: str, extra: list[str], common: list[str], timeout: float) -> dict[str, Any]:
    """Run a worker process; its JSON result, what it had written to its result file when it was stopped at
    ``timeout``, or a failure with the reason."""
    with tempfile.TemporaryDirectory() as folder:
        partial = Path(folder) / "result.json"
        cmd = [sys.executable, __file__, "--worker", kind, *common, *extra, "--result-file", str(partial)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 10), check=False)
        except subprocess.TimeoutExpired:
            if partial.is_file():
                return {**json.loads(partial.read_text()), "error": f"stopped after {timeout:.0f} s (time budget)"}
            return {"status": "failed", "error": f"the worker ran past {timeout:.0f} s (time budget)"}
    if done.returncode != 0:
        return {"status": "failed", "error": done.stderr[-3000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _packing(n: int, common: list[str], args) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as ready:
        cmd = [sys.executable, __file__, "--worker", "pack", *common, "--processes", str(n), "--ready-dir", ready,
               "--seconds", str(args.pack_seconds)]
        procs = [subprocess.Popen([*cmd, "--rank", str(rank)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for rank in range(n)]
        wait_until = time.time() + args.worker_timeout
        while len(list(Path(ready).glob("ready-*"))) < n and time.time() < wait_until \
                and all(p.poll() is None for p in procs):
            time.sleep(0.05)
        (Path(ready) / "go").touch()
        results, errors = [], []
        for proc in procs:
            try:
                stdout, stderr = proc.communicate(timeout=max(5.0, wait_until - time.time() + args.pack_seconds))
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
            if proc.returncode == 0:
                results.append(json.loads(stdout.strip().splitlines()[-1]))
            else:
                errors.append(stderr[-2000:])
    if errors:
        return {"status": "failed", "error": errors[0], "processes_failed": len(errors)}
    each = [r["crystals_per_s"] for r in results]
    return {"status": "measured", "per_process_crystals_per_s": each, "total_crystals_per_s": sum(each),
            "peak_memory_mb": [r["peak_memory_mb"] for r in results], "memory_kind": results[0]["memory_kind"],
            "threads_per_process": results[0]["threads"], "seconds": args.pack_seconds}


def _machine() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})",
            "gpu_memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1) if cuda else None,
            "cpu_cores": os.cpu_count(), "host": platform.node()}


def _throughput(models: dict[str, dict[str, Any]]) -> tuple[dict, dict]:
    """The workers' results as model -> batch -> precision -> mode, with TFLOP/s and the share of the bf16 peak;
    and the FLOPs per step by model and batch."""
    table: dict[str, Any] = {}
    flops_per_step: dict[str, Any] = {}
    for model in MODELS:
        table[model], flops_per_step[model] = {}, {}
        eager = models[(model, "eager")].get("results", {})
        for batch_size in BATCH_SIZES:
            key = f"batch_{batch_size}"
            fp32 = eager.get(f"{key}/fp32", {})
            flops = fp32.get("flops")
            flops_per_step[model][key] = flops / fp32["steps"] if flops else None
            table[model][key] = {}
            for precision in PRECISIONS:
                table[model][key][precision] = {}
                for mode in MODES:
                    worker = models[(model, mode)]
                    leaf = dict(worker.get("results", {}).get(f"{key}/{precision}")
                                or {"status": "failed", "error": worker.get("error", "no result")})
                    leaf.pop("flops", None)
                    if leaf["status"] == "measured" and flops:
                        leaf["tflop_per_s"] = flops / (leaf["step_s"] * leaf["steps"]) / 1e12
                        leaf["bf16_peak_share"] = leaf["tflop_per_s"] / BF16_PEAK_TFLOPS
                    table[model][key][precision][mode] = leaf
    return table, flops_per_step


def run_benchmark(cache: Path, device: str, dry_run: bool, budget_s: float, compile_on_cpu: bool = False,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every measurement; returns the JSON document (see the module docstring). Eager throughput, the packing curve
    and batch assembly run first; the compiled throughput (the slow part: compiling) last, inside what is left of
    ``budget_s`` seconds (a measurement that does not fit is recorded as skipped)."""
    start = time.time()
    deadline = start + budget_s
    sizes = ({"warmup": 1, "steps": 2, "pack_seconds": 1.5, "assembly_batches": 3} if dry_run
             else {"warmup": 3, "steps": 20, "pack_seconds": 15.0, "assembly_batches": 20})
    common = ["--cache", str(cache), "--device", device, "--deadline", str(deadline), "--warmup", str(sizes["warmup"])]
    common += (["--tiny"] if dry_run else []) + (["--compile-on-cpu"] if compile_on_cpu else [])

    def left() -> float:
        return deadline - time.time() + 30  # a worker started in time may finish its measurement

    phases: dict[str, float] = {}

    def lap(name: str) -> None:
        phases[name] = time.time() - start - sum(phases.values())

    workers = {}
    for model in MODELS:
        workers[(model, "eager")] = _worker("throughput", ["--model", model, "--mode", "eager", "--steps",
                                                           str(sizes["steps"])], common, left())
    lap("eager_throughput_s")
    args = argparse.Namespace(pack_seconds=sizes["pack_seconds"], worker_timeout=max(60.0, left()))
    packing = {str(n): _packing(n, common, args) if time.time() < deadline
               else {"status": "skipped", "reason": "the time budget ran out"} for n in PACKING}
    lap("packing_s")
    alone = packing["1"].get("total_crystals_per_s")
    for row in packing.values():
        if row["status"] == "measured" and alone:
            row["slowest_vs_alone"] = min(row["per_process_crystals_per_s"]) / alone
            row["total_vs_alone"] = row["total_crystals_per_s"] / alone
    assembly = _worker("assembly", ["--steps", str(sizes["assembly_batches"])], common, left())
    lap("batch_assembly_s")
    for model in MODELS:
        workers[(model, "compile")] = _worker("throughput", ["--model", model, "--mode", "compile", "--steps",
                                                             str(sizes["steps"])], common, left())
    lap("compiled_throughput_s")
    throughput, flops = _throughput(workers)
    return {
        "schema_version": 1, "dry_run": dry_run, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": _machine(), "cache": str(cache),
        "settings": {"models": {m: model_settings(m, dry_run) for m in MODELS},
                     "model_size": "tiny" if dry_run else "default", "batch_sizes": list(BATCH_SIZES),
                     "precisions": list(PRECISIONS), "modes": list(MODES),
                     "packing": {"processes": list(PACKING), "model": "fused", "batch_size": 64, "precision": "fp32",
                                 "mode": "eager", "seconds": sizes["pack_seconds"]},
                     "loader_workers": list(WORKERS), **sizes, "budget_s": budget_s,
                     "bf16_peak_tflops": BF16_PEAK_TFLOPS},
        "params": {m: workers[(m, "eager")].get("params") for m in MODELS},
        "throughput": throughput, "flops_per_step": flops, "packing": packing,
        "batch_assembly": {f"batch_{b}": {f"workers_{w}": assembly.get(f"batch_{b}/workers_{w}", assembly)
                                          for w in WORKERS} for b in BATCH_SIZES},
        **(extra or {}), "phases_s": phases, "wall_s": time.time() - start,
    }


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """What the check prints: one line per figure."""
    lines = [f"machine: {doc['machine']['device']}, torch {doc['machine']['torch']}, dry run: {doc['dry_run']}"]
    for model, by_batch in doc["throughput"].items():
        for batch, by_precision in by_batch.items():
            for precision, by_mode in by_precision.items():
                cells = []
                for mode, leaf in by_mode.items():
                    if leaf["status"] == "measured":
                        share = leaf.get("bf16_peak_share")
                        cells.append(f"{mode} {leaf['crystals_per_s']:.1f}/s peak {leaf['peak_memory_mb']:.0f} MB"
                                     + (f" {100 * share:.2g}% of bf16 peak" if share is not None else ""))
                    else:
                        cells.append(f"{mode} {leaf['status']} ({(leaf.get('reason') or leaf.get('error', ''))[:80]})")
                lines.append(f"{model} {batch} {precision}: " + "; ".join(cells))
    for n, row in doc["packing"].items():
        if row["status"] == "measured":
            lines.append(f"packing {n}: total {row['total_crystals_per_s']:.1f}/s, each "
                         + ", ".join(f"{v:.1f}" for v in row["per_process_crystals_per_s"])
                         + f"; slowest/alone {row.get('slowest_vs_alone', float('nan')):.2f}")
        else:
            lines.append(f"packing {n}: {row['status']} ({(row.get('reason') or row.get('error', ''))[:200]})")
    for batch, by_workers in doc["batch_assembly"].items():
        lines.append(f"batch assembly {batch}: " + "; ".join(
            f"{w} {r['s_per_batch'] * 1e3:.1f} ms/batch" if "s_per_batch" in r else f"{w} {r.get('status')}"
            for w, r in by_workers.items()))
    lines.append(f"wall time {doc['wall_s']:.0f} s")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=DataConfig().cache_dir, help="holds the prepared bundled-data cache")
    parser.add_argument("--max-structures", type=int, default=0, help="the cache's crystals (0 = all 800)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dry-run", action="store_true", help="tiny model, few steps (the CPU rehearsal)")
    parser.add_argument("--budget-s", type=float, default=420, help="later measurements are skipped past this")
    parser.add_argument("--output", default="benchmarks/results/gpu_check.json")
    parser.add_argument("--compile-on-cpu", action="store_true", help="measure torch.compile on a CPU too (slow)")
    parser.add_argument("--tests-rc", type=int, help="exit status of the cuda tests (recorded in the JSON)")
    parser.add_argument("--tests-s", type=float, help="their wall time (recorded in the JSON)")
    parser.add_argument("--worker", choices=("throughput", "pack", "assembly"), help=argparse.SUPPRESS)
    for name, kind in (("--cache", str), ("--model", str), ("--mode", str), ("--warmup", int), ("--steps", int),
                       ("--deadline", float), ("--processes", int), ("--rank", int), ("--ready-dir", str),
                       ("--seconds", float), ("--result-file", str)):
        parser.add_argument(name, type=kind, help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run = {"throughput": throughput_worker, "pack": pack_worker, "assembly": assembly_worker}[args.worker]
        print(json.dumps(run(args)))
        return

    from tune_fusion.data import cache_path
    from tune_fusion.errors import DataError

    cache = cache_path(DataConfig(cache_dir=args.cache_dir, max_structures=args.max_structures))
    if not (cache / "meta.json").is_file():
        raise DataError(f"no prepared cache of the bundled data at {cache}; prepare it with "
                        "`bash benchmarks/gpu_check.sh --prepare-carry` (or python -m tune_fusion.data prepare "
                        f"--cache_dir {args.cache_dir})")
    extra = {"tests": {"returncode": args.tests_rc, "wall_s": args.tests_s}} if args.tests_rc is not None else {}
    doc = run_benchmark(cache, args.device, args.dry_run, args.budget_s, args.compile_on_cpu, extra=extra)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print("\n".join(summary_lines(doc)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
