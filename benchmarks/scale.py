"""Full-scale data: a dft_3d-sized cache (55,000 crystals) shared by every trial on a node.

    python benchmarks/scale.py                  # about 20 minutes on 2 cores; writes benchmarks/results/scale.json
    python benchmarks/scale.py --records 2000   # a quick look

A synthetic dataset of ``--records`` records is made from the bundled 800: each copy of a crystal has its lattice
strained by up to 1% (so its graph differs) and keeps the crystal's description (so the text is reused, as in a
real dataset where many structures share phrasing). It is prepared once (graphs and embeddings), then:

- a second target of the same dataset is prepared (every graph and embedding reused): its time over the first's;
- a trial's start: opening the cache, and the first batch (seconds, in a fresh process);
- the unique memory (USS) of 1 and of 4 concurrent processes that open the cache and read one epoch of batches
  (and their anonymous memory, what a process allocates itself: a lone reader's USS also counts the cache pages it
  mapped, which the page cache holds once for every process);
- training throughput (train crystals/s of a small model, shuffled batches over the whole cache) against the bundled
  800-record cache, in alternating fresh processes;
- the cache's size on disk.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "scale.json"
SMALL_MODEL = {"alignn_layers": 2, "gcn_layers": 1, "hidden_features": 64, "embedding_features": 32,
               "edge_input_features": 40, "triplet_input_features": 20, "graph_only": True, "batch_size": 32}


def synthetic_dataset(records: int, path: Path, seed: int = 0) -> Path:
    """``records`` dft_3d-style records from the bundled 800, strained copies carrying the original's description."""
    import numpy as np
    from jarvis.core.atoms import Atoms

    from tune_fusion.config import SAMPLE_DATASET
    from tune_fusion.data.sources import sidecar_path
    from tune_fusion.data.text import read_descriptions, structure_hash

    with gzip.open(SAMPLE_DATASET, "rt") as handle:
        base = json.load(handle)
    texts = read_descriptions(sidecar_path(SAMPLE_DATASET))
    described = []
    for record in base:
        text = texts.get(structure_hash(Atoms.from_dict(record["atoms"])))
        if text is not None:
            described.append({**record, "description": text[2]})
    rng = np.random.default_rng(seed)
    out = []
    for i in range(records):
        record = described[i % len(described)]
        atoms = dict(record["atoms"])
        strain = np.eye(3) + rng.uniform(-0.01, 0.01, size=(3, 3))
        atoms["lattice_mat"] = (np.asarray(atoms["lattice_mat"]) @ strain).tolist()  # cartesian=False: fractional
        out.append({**record, "jid": f"{record['jid']}-s{i}", "atoms": atoms})
    path.write_text(json.dumps(out))
    return path


def prepare_seconds(dataset: Path, cache_dir: Path, target: str) -> tuple[float, str]:
    from tune_fusion.config import DataConfig
    from tune_fusion.data import prepare

    start = time.perf_counter()
    data, built = prepare(DataConfig(dataset=str(dataset), cache_dir=str(cache_dir), target=target))
    assert built
    return time.perf_counter() - start, str(data.path)


READER = """
import json, sys, time
t0 = time.perf_counter()
import psutil, torch
from tune_fusion.data import Standardizer, load, make_loader
torch.set_num_threads(1)
imported = time.perf_counter()
data = load(sys.argv[1])
opened = time.perf_counter()
loader = make_loader(data, "train", 64, Standardizer(0.0, 1.0), shuffle=True, seed=0)
batches = iter(loader)
next(batches)
first = time.perf_counter()
if sys.argv[2] == "epoch":
    for _ in batches:
        pass
mem = psutil.Process().memory_full_info()
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
print(json.dumps({"anon_mb": int(status["RssAnon"].split()[0]) / 1024, "open_s": opened - imported, "first_batch_s": first - imported, "import_s": imported - t0,
                  "uss_mb": mem.uss / 2**20, "pss_mb": mem.pss / 2**20, "rss_mb": mem.rss / 2**20,
                  "epoch_s": time.perf_counter() - first}))
"""

TRAINER = """
import json, sys, time, torch
from tune_fusion.config import Config
from tune_fusion.data import load
from tune_fusion.train import start_run, train_epoch
cfg = Config.from_dict(json.loads(sys.argv[2]))
data = load(sys.argv[1])
run = start_run(cfg, data)
loader = run.loader("train", shuffle=True, seed=0)
steps = int(sys.argv[3])
batches = [b for _, b in zip(range(steps + 1), loader)]
from tune_fusion.train import _step
_step(run, batches[0])
start = time.perf_counter()
crystals = 0
for batch in batches[1:]:
    _step(run, batch)
    crystals += len(batch)
assemble = time.perf_counter()
for _, batch in zip(range(steps), run.loader("train", shuffle=True, seed=1)):
    pass
print(json.dumps({"train_crystals_per_s": crystals / (assemble - start),
                  "batches_per_s": steps / (time.perf_counter() - assemble)}))
"""


def run_python(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, check=False)
    if out.returncode != 0:
        sys.exit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def concurrent_readers(cache: str, count: int) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, "-c", READER, cache, "epoch"], stdout=subprocess.PIPE, text=True,
                              cwd=REPO) for _ in range(count)]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=55_000)
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per throughput run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--workdir", help="keep the dataset and caches here (default: a temporary folder)")
    args = parser.parse_args()

    from tune_fusion.config import DataConfig
    from tune_fusion.data import prepare, summary

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        dataset = synthetic_dataset(args.records, work / f"synthetic_{args.records}.json")
        print(f"synthetic dataset: {args.records} records in {time.perf_counter() - start:.0f} s", flush=True)
        cache_dir = work / "cache"
        first_s, cache = prepare_seconds(dataset, cache_dir, "formation_energy_peratom")
        print(f"first preparation: {first_s:.0f} s", flush=True)
        second_s, _ = prepare_seconds(dataset, cache_dir, "optb88vdw_bandgap")
        print(f"second target: {second_s:.1f} s ({second_s / first_s:.3f} of the first)", flush=True)
        small, _ = prepare(DataConfig(cache_dir=str(cache_dir)))  # the bundled 800 records
        opened = [run_python(READER, cache, "first") for _ in range(args.repeats)]
        one = run_python(READER, cache, "epoch")
        four = concurrent_readers(cache, 4)
        throughput: dict[str, list[float]] = {"large": [], "small": []}
        settings = json.dumps(SMALL_MODEL)
        for _ in range(args.repeats):
            for name, path in (("large", cache), ("small", str(small.path))):
                throughput[name].append(run_python(TRAINER, path, settings, str(args.steps))["train_crystals_per_s"])
        from tune_fusion.data import load

        large = load(cache)
        size = summary(large)["size_mb"] / 1e3
    result = {
        "records": len(large),
        "prepare_first_s": round(first_s, 1),
        "prepare_second_target_s": round(second_s, 1),
        "second_target_prepare_ratio": round(second_s / first_s, 4),
        "open_seconds": round(statistics.median(r["open_s"] for r in opened), 4),
        "first_batch_seconds": round(statistics.median(r["first_batch_s"] for r in opened), 4),
        "uss_mb_one_trial": round(one["uss_mb"], 1),
        "anon_mb_one_trial": round(one["anon_mb"], 1),
        "anon_mb_four_trials_each": [round(r["anon_mb"], 1) for r in four],
        "uss_mb_four_trials_each": [round(r["uss_mb"], 1) for r in four],
        "pss_mb_four_trials_each": [round(r["pss_mb"], 1) for r in four],
        "rss_mb_four_trials_each": [round(r["rss_mb"], 1) for r in four],
        "epoch_read_s_one_trial": round(one["epoch_s"], 1),
        "train_crystals_per_s_large": [round(v, 2) for v in throughput["large"]],
        "train_crystals_per_s_small": [round(v, 2) for v in throughput["small"]],
        "throughput_ratio_large_over_small": round(statistics.median(throughput["large"])
                                                   / statistics.median(throughput["small"]), 3),
        "cache_gb": round(size, 3),
        "distinct_descriptions_embedded": large.meta["counts"]["text"]["embedded_now"],
        "machine": "2 CPU cores, 24 GiB; torch threads 1 per reader, default for training",
    }
    print(json.dumps(result, indent=2))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
