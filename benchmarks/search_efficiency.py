"""Search efficiency and scheduling overhead: ASHA + TPE against a full-budget random search (FIFO), same space,
same number of trials, same maximum epochs, on the bundled sample data.

    python benchmarks/search_efficiency.py                       # quickstart space, 12 trials each; ~12 min, 2 cores
    python benchmarks/search_efficiency.py --num-samples 6 --output /tmp/curve.png

Prints, for each search, the best validation MAE, the epochs it consumed and the slot utilisation
(sum of trial time / (wall time x concurrent slots)); then the ratio of epochs ASHA + TPE needed to come within 5%
of the random search's best, and saves the best-MAE-vs-epochs curves as a PNG.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tune_fusion.space import load_spec, parse_spec


def curve(exp_dir: Path) -> list[tuple[int, float]]:
    """(epochs consumed so far, best val_mae so far) after every epoch of every trial, in wall-clock order."""
    events = []
    for result in exp_dir.glob("trial_*/result.json"):
        for line in result.read_text().splitlines():
            row = json.loads(line)
            events.append((row["timestamp"], row["time_total_s"], row["val_mae"]))
    events.sort()
    best, out = float("inf"), []
    for count, (_, _, mae) in enumerate(events, start=1):
        best = min(best, mae)
        out.append((count, best))
    return out


def trial_seconds(exp_dir: Path) -> float:
    total = 0.0
    for result in exp_dir.glob("trial_*/result.json"):
        lines = result.read_text().splitlines()
        total += json.loads(lines[-1])["time_total_s"] if lines else 0.0
    return total


def epochs_to_reach(points: list[tuple[int, float]], level: float) -> int | None:
    return next((epochs for epochs, best in points if best <= level), None)


def run_one(raw: dict, source: str, storage: str, name: str) -> dict:
    from tune_fusion.search import run_search

    spec = parse_spec(raw, source)
    start = time.perf_counter()
    outcome = run_search(spec, storage=storage, name=name)
    wall = time.perf_counter() - start
    exp_dir = Path(outcome.experiment_dir)
    points = curve(exp_dir)
    busy = trial_seconds(exp_dir)
    return {"name": name, "best_val_mae": outcome.best_val_mae, "epochs": points[-1][0], "wall_s": round(wall, 1),
            "trial_s": round(busy, 1), "slot_utilisation": round(busy / (wall * spec.max_concurrent), 3),
            "curve": points}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="search_spaces/quickstart.yaml")
    parser.add_argument("--num-samples", type=int, default=12)
    parser.add_argument("--output", default="benchmarks/search_efficiency.png")
    args = parser.parse_args()

    import yaml

    base = load_spec(args.space)  # validates, and resolves the dataset path
    raw = yaml.safe_load(Path(base.source).read_text())
    raw["dataset"]["path"] = base.base.data.dataset
    raw["num_samples"] = args.num_samples
    random_fifo = {**raw, "scheduler": {"type": "fifo"}, "searcher": {**raw["searcher"], "sampler": "random"}}
    with tempfile.TemporaryDirectory() as storage:
        asha = run_one(raw, base.source, storage, "asha_tpe")
        fifo = run_one(random_fifo, base.source, storage, "fifo_random")
    level = fifo["best_val_mae"] * 1.05
    asha_epochs, fifo_epochs = epochs_to_reach(asha["curve"], level), epochs_to_reach(fifo["curve"], level)
    for run in (asha, fifo):
        print(json.dumps({k: v for k, v in run.items() if k != "curve"}))
    if asha_epochs is None:
        print(f"ASHA + TPE never came within 5% of the random search's best ({level:.4f})")
    else:
        print(f"epochs to come within 5% of the random search's best ({level:.4f}): ASHA + TPE {asha_epochs}, "
              f"random {fifo_epochs} -> ratio {asha_epochs / fifo_epochs:.2f}; vs the random search's whole budget "
              f"({fifo['epochs']} epochs): {asha_epochs / fifo['epochs']:.2f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run, label in ((asha, "ASHA + TPE"), (fifo, "FIFO + random")):
        ax.step(*zip(*run["curve"]), where="post", label=label)
    ax.axhline(level, color="grey", linestyle=":", label="random best + 5%")
    ax.set_xlabel("epochs consumed")
    ax.set_ylabel("best validation MAE so far")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"curve saved to {args.output}")


if __name__ == "__main__":
    main()
