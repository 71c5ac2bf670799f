"""Search efficiency: how many epochs (and how much time) each kind of search needs to come within 2% of the best
validation MAE any of them found, on the same space with the same budget, over several seeds.

    python benchmarks/search_efficiency.py record     # train every configuration of the space once, per target (~25 min)
    python benchmarks/search_efficiency.py replay     # replay the arms over the recorded tables, many seeds (seconds)
    python benchmarks/search_efficiency.py real       # one real search per arm, to check the replay (~20 min)

Many seeds of real searches do not fit a 2-core machine, so, as tabular HPO benchmarks do, ``record`` trains every
configuration of a discrete version of the quickstart space (``BENCH_SEARCH``) to its last epoch once, keeping each
epoch's validation MAE and seconds, for the target and for a second target (the warm-start source). ``replay`` then
runs the searches over that table with the real samplers (``tune_fusion.searcher.make_sampler``: Optuna TPE with the
project's settings, or random) and Ray's asynchronous successive halving rule (a trial stops at a rung when its
validation MAE is worse than the best 1/reduction_factor of those recorded there before it), with the same number
of trials running at once as the real search. Arms: random + FIFO (every trial runs all its epochs), random + ASHA,
TPE + ASHA, and TPE + ASHA warm-started with the other target's table. ``real`` runs each arm once as a real search
(the warm one from a real TPE + ASHA search of the other target) and reports the same measures, which the replay's
spread should contain.

Writes ``benchmarks/results/search_efficiency.json`` (keys ``arms`` with ``epochs_to_target`` per seed, and
``tpe_asha_over_random_fifo``, the median ratio of epochs to target) and prints a table.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
TARGETS = ("formation_energy_peratom", "optb88vdw_bandgap")  # the searched target, the warm-start source
BENCH_SEARCH = {
    "learning_rate": {"type": "choice", "values": [0.0005, 0.001, 0.002, 0.004]},
    "use_middle_fusion": {"type": "choice", "values": [True, False]},
    "middle_fusion_layers": {"type": "choice", "values": ["0", "1", "0,1"], "when": {"use_middle_fusion": True}},
    "middle_fusion_initial_scale": {"type": "choice", "values": [2.0, 8.0], "when": {"use_middle_fusion": True}},
    "use_cross_modal": {"type": "choice", "values": [True, False]},
}
ARMS = ("random_fifo", "random_asha", "tpe_asha", "tpe_asha_warm")
LEVEL = 1.02  # "within 2% of the best any arm found"


def bench_space(target: str, max_structures: int, epochs: int, num_samples: int, concurrency: int,
                sampler: str = "tpe", scheduler: str = "asha", seed: int = 0, grace_period: int = 0) -> dict[str, Any]:
    """The quickstart space with discrete choices (so a table can hold every configuration) and its ASHA settings
    for ``epochs`` (unless ``grace_period`` is given)."""
    import yaml

    raw = yaml.safe_load((REPO / "search_spaces" / "quickstart.yaml").read_text())
    raw["dataset"] = {**raw["dataset"], "target": target, "max_structures": max_structures}
    raw["search"] = BENCH_SEARCH
    shipped = raw["scheduler"]  # its first rung at the same fraction of the epochs
    shipped_epochs = shipped.get("max_t") or raw["fixed"]["epochs"]
    grace_period = grace_period or max(1, round(shipped["grace_period"] * epochs / shipped_epochs))
    asha = {**shipped, "max_t": epochs, "grace_period": grace_period}
    raw["fixed"] = {**raw["fixed"], "epochs": epochs}
    raw["scheduler"] = asha if scheduler == "asha" else {"type": "fifo"}
    raw["searcher"] = {"type": "optuna", "sampler": sampler, "seed": seed}
    raw.update(num_samples=num_samples, max_concurrent=concurrency)
    return raw


def key_of(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def configurations(spec) -> list[dict[str, Any]]:
    """Every configuration the (discrete, conditional) space can draw."""
    out = []
    names = [p.name for p in spec.params]
    for values in itertools.product(*(p.values for p in spec.params)):
        chosen: dict[str, Any] = {}
        base = spec.base.to_dict()
        for param, value in zip(spec.params, values):
            if param.drawn_with(chosen, base):
                chosen[param.name] = value
        out.append({n: chosen[n] for n in names if n in chosen})
    return list({key_of(c): c for c in out}.values())


# --- record ---------------------------------------------------------------------------------------------------

def record(target: str, args: argparse.Namespace) -> Path:
    """Train every configuration to its last epoch once (FIFO, ``--concurrency`` at once); returns the table."""
    from tune_fusion.cluster import connect, parallel_map
    from tune_fusion.confirm import run_configurations
    from tune_fusion.data import prepare
    from tune_fusion.space import parse_spec

    spec = parse_spec(bench_space(target, args.max_structures, args.epochs, 1, args.concurrency), "bench.yaml")
    configs = configurations(spec)
    jobs = [{"config": {**spec.base.to_dict(), **c}, "confirms": key_of(c)} for c in configs]
    with tempfile.TemporaryDirectory() as storage:
        connect(verbose=False)
        data, _ = prepare(spec.base.data, parallel_map)
        results = run_configurations(jobs, data.path.name, None, {"cpu": 1, "gpu": 0}, args.concurrency, "record",
                                     storage, False, target)
        table = {}
        for result in results:
            job = result.config["job"]
            frame = result.metrics_dataframe
            table[job["confirms"]] = {"params": json.loads(job["confirms"]), "val_mae": frame["val_mae"].tolist(),
                                      "seconds": frame["seconds_per_epoch"].tolist()}
    path = RESULTS / f"search_table_{target}.json"
    path.write_text(json.dumps({"target": target, "epochs": args.epochs, "max_structures": args.max_structures,
                                "configurations": table}))
    print(f"recorded {len(table)} configurations of {target} in {path}")
    return path


# --- replay ---------------------------------------------------------------------------------------------------

class Asha:
    """Ray's asynchronous successive halving for a minimised metric, one bracket: rungs at grace_period x rf^k
    below max_t; at a rung, a trial whose value is worse than the (1/rf)-quantile of the values recorded there
    before it stops."""

    def __init__(self, max_t: int, grace_period: int, reduction_factor: float) -> None:
        self.rf = reduction_factor
        self.rungs: dict[int, list[float]] = {}
        milestone = grace_period
        while milestone < max_t:
            self.rungs[milestone] = []
            milestone = int(milestone * reduction_factor)

    def stop(self, epoch: int, value: float) -> bool:
        if epoch not in self.rungs:
            return False
        recorded = self.rungs[epoch]
        cutoff = float(np.nanpercentile(recorded, 100 / self.rf)) if recorded else None
        recorded.append(value)
        return cutoff is not None and value > cutoff


def warm_trials(study, spec, table: dict[str, Any]) -> None:
    """The other target's table as finished trials of the study (what --warm-start gives a real search)."""
    import optuna

    params = {p.name: p for p in spec.params}
    for entry in table["configurations"].values():
        curve = entry["val_mae"]
        study.add_trial(optuna.trial.create_trial(
            params=entry["params"], distributions={k: params[k].distribution() for k in entry["params"]},
            value=min(curve), intermediate_values=dict(enumerate(curve, start=1)),
            user_attrs={"warm_start_from": "the other target's table"}))


def replay(spec, table: dict[str, Any], arm: str, seed: int, warm: dict[str, Any] | None) -> list[tuple[int, float, float]]:
    """One search over the table: [(epochs consumed, seconds elapsed, best validation MAE so far)] per epoch."""
    import dataclasses

    import optuna

    from tune_fusion.searcher import ask_new, make_sampler
    from tune_fusion.space import DefineByRun

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler_name = "random" if arm.startswith("random") else "tpe"
    searcher = dataclasses.replace(spec.searcher, sampler=sampler_name, seed=seed)
    study = optuna.create_study(sampler=make_sampler(dataclasses.replace(spec, searcher=searcher)),
                                direction="minimize")
    if arm == "tpe_asha_warm":
        warm_trials(study, spec, warm)
    asha = Asha(spec.scheduler.max_t, spec.scheduler.grace_period, spec.scheduler.reduction_factor) \
        if arm.endswith("asha") or arm.endswith("warm") else None
    space, max_t = DefineByRun(spec.params, spec.base), spec.scheduler.max_t
    running: list[tuple[float, int, Any, dict, int]] = []  # (finish time of its epoch, tie, trial, entry, epoch)
    started, consumed, best, now, events, tie = 0, 0, float("inf"), 0.0, [], itertools.count()

    def ask() -> optuna.Trial:
        trial = study.ask()
        space(trial)
        return trial

    def start(at: float) -> None:
        nonlocal started
        trial = ask_new(study, ask)  # as the real search does: a repeat of a finished configuration is skipped
        entry = table["configurations"][key_of(trial.params)]
        heapq.heappush(running, (at + entry["seconds"][0], next(tie), trial, entry, 1))
        started += 1

    while started < min(spec.max_concurrent, spec.num_samples):
        start(0.0)
    while running:
        now, _, trial, entry, epoch = heapq.heappop(running)
        value = entry["val_mae"][epoch - 1]
        trial.report(value, epoch)
        consumed += 1
        best = min(best, value)
        events.append((consumed, now, best))
        if epoch >= max_t or (asha is not None and asha.stop(epoch, value)):
            if epoch >= max_t:
                study.tell(trial, min(entry["val_mae"][:epoch]))
            else:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            if started < spec.num_samples:
                start(now)
        else:
            heapq.heappush(running, (now + entry["seconds"][epoch], next(tie), trial, entry, epoch + 1))
    return events


def to_target(events: list[tuple[int, float, float]], level: float) -> tuple[int | None, float | None]:
    """Epochs and seconds until the best-so-far came within ``level``; (None, None) if it never did."""
    for epochs, seconds, best in events:
        if best <= level:
            return epochs, seconds
    return None, None


def summarise(runs: dict[str, list[list[tuple[int, float, float]]]], seeds: list[int], source: str) -> dict[str, Any]:
    best_any = min(events[-1][2] for arm in runs.values() for events in arm)
    level = best_any * LEVEL
    arms = {}
    for arm, found in runs.items():
        reached = [to_target(events, level) for events in found]
        budget = [events[-1][0] for events in found]
        arms[arm] = {"epochs_to_target": [e for e, _ in reached], "seconds_to_target": [
                         round(s, 1) if s is not None else None for _, s in reached],
                     "epochs_budget_used": budget, "best_val_mae": [events[-1][2] for events in found],
                     "seeds": seeds}
    # an arm that never got there is counted at the epochs it used (a lower bound on what it would need)
    def epochs(arm: str, i: int) -> float:
        value = arms[arm]["epochs_to_target"][i]
        return value if value is not None else arms[arm]["epochs_budget_used"][i]
    def ratios(arm: str) -> list[float]:
        return [epochs(arm, i) / epochs("random_fifo", i) for i in range(len(seeds))]

    return {"source": source, "level": level, "best_val_mae_any_arm": best_any, "arms": arms,
            "tpe_asha_over_random_fifo": statistics.median(ratios("tpe_asha")),
            "tpe_asha_over_random_fifo_per_seed": [round(r, 3) for r in ratios("tpe_asha")],
            "over_random_fifo": {arm: round(statistics.median(ratios(arm)), 3) for arm in arms},
            "medians": {arm: {"epochs_to_target": statistics.median(epochs(arm, i) for i in range(len(seeds))),
                              "reached": sum(e is not None for e in v["epochs_to_target"])}
                        for arm, v in arms.items()}}


def run_replay(args: argparse.Namespace) -> dict[str, Any]:
    from tune_fusion.space import parse_spec

    tables = {t: json.loads((Path(args.tables) / f"search_table_{t}.json").read_text()) for t in TARGETS}
    table = tables[TARGETS[0]]
    spec = parse_spec(bench_space(TARGETS[0], table["max_structures"], table["epochs"], args.num_samples,
                                  args.concurrency, grace_period=args.grace_period), "bench.yaml")
    seeds = list(range(args.seeds))
    runs = {arm: [replay(spec, table, arm, 1000 * (k + 1) + s, tables[TARGETS[1]]) for s in seeds]
            for k, arm in enumerate(ARMS)}  # a different random stream for every arm and seed
    result = summarise(runs, seeds, "replay")
    result.update(num_samples=args.num_samples, concurrency=args.concurrency, epochs=table["epochs"],
                  configurations=len(table["configurations"]), curves={arm: [e for e in runs[arm][0]] for arm in runs})
    return result


# --- real -----------------------------------------------------------------------------------------------------

def run_real(args: argparse.Namespace) -> dict[str, Any]:
    """One real search per arm (seed 0), the warm one from a real TPE + ASHA search of the other target."""
    from tune_fusion.search import run_search
    from tune_fusion.space import parse_spec

    table = json.loads((Path(args.tables) / f"search_table_{TARGETS[0]}.json").read_text())
    shapes = {"random_fifo": ("random", "fifo"), "random_asha": ("random", "asha"), "tpe_asha": ("tpe", "asha"),
              "tpe_asha_warm": ("tpe", "asha")}
    runs, slots = {}, {}
    with tempfile.TemporaryDirectory() as storage:
        source = parse_spec(bench_space(TARGETS[1], table["max_structures"], table["epochs"], args.num_samples,
                                        args.concurrency, grace_period=args.grace_period), "source.yaml")
        run_search(source, storage=storage, name="source", verbose=False)
        for k, arm in enumerate(ARMS):
            sampler, scheduler = shapes[arm]
            spec = parse_spec(bench_space(TARGETS[0], table["max_structures"], table["epochs"], args.num_samples,
                                          args.concurrency, sampler, scheduler, seed=1000 * (k + 1),
                                          grace_period=args.grace_period), f"{arm}.yaml")
            start = time.monotonic()
            found = run_search(spec, storage=storage, name=arm, verbose=False,
                               warm_start=(f"{storage}/source",) if arm == "tpe_asha_warm" else ())
            wall = time.monotonic() - start
            runs[arm] = [real_events(Path(found.experiment_dir))]
            slots[arm] = round(trial_seconds(Path(found.experiment_dir)) / (wall * args.concurrency), 3)
    result = summarise(runs, [0], "real")
    result["slot_utilisation"] = slots
    return result


def real_events(exp_dir: Path) -> list[tuple[int, float, float]]:
    """(epochs consumed, seconds since the first epoch, best validation MAE so far), in wall-clock order."""
    rows = sorted((json.loads(line) for result in exp_dir.glob("trial_*/result.json")
                   for line in result.read_text().splitlines()), key=lambda r: r["timestamp"])
    first = rows[0]["timestamp"] - rows[0]["time_this_iter_s"] if rows else 0
    best, out = float("inf"), []
    for count, row in enumerate(rows, start=1):
        best = min(best, row["val_mae"])
        out.append((count, row["timestamp"] - first, best))
    return out


def trial_seconds(exp_dir: Path) -> float:
    total = 0.0
    for result in exp_dir.glob("trial_*/result.json"):
        lines = result.read_text().splitlines()
        total += json.loads(lines[-1])["time_total_s"] if lines else 0.0
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("record", "replay", "real"))
    parser.add_argument("--max-structures", type=int, default=400, help="crystals of the bundled data used")
    parser.add_argument("--epochs", type=int, default=9, help="epochs of every trial (ASHA's max_t)")
    parser.add_argument("--num-samples", type=int, default=24, help="trials per search, every arm")
    parser.add_argument("--concurrency", type=int, default=2, help="trials at once, every arm")
    parser.add_argument("--grace-period", type=int, default=0,
                        help="ASHA's first rung (default: the quickstart space's)")
    parser.add_argument("--seeds", type=int, default=20, help="replayed searches per arm")
    parser.add_argument("--tables", default=str(RESULTS), help="where the recorded tables are")
    parser.add_argument("--output", default=str(RESULTS / "search_efficiency.json"))
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.mode == "record":
        for target in TARGETS:
            record(target, args)
        return
    result = run_replay(args) if args.mode == "replay" else run_real(args)
    output = Path(args.output)
    merged = json.loads(output.read_text()) if output.is_file() else {}
    merged.update(result if args.mode == "replay" else {"real": result})
    output.write_text(json.dumps(merged, indent=1) + "\n")
    for arm, found in result["arms"].items():
        print(f"{args.mode} {arm:14s} epochs to within 2% of the best any arm found: {found['epochs_to_target']} "
              f"(budget used {found['epochs_budget_used']})")
    print(f"{args.mode}: median ratio of epochs to target over random + FIFO's: {result['over_random_fifo']}")


if __name__ == "__main__":
    main()
