#!/usr/bin/env python
"""Run a hyperparameter search: ``python run_search.py`` runs the quickstart search on the bundled sample data.

    python run_search.py --space search_spaces/middle_fusion.yaml --num-samples 32 --max-concurrent 4
    python run_search.py --address auto --storage /shared/ray_results     # on a Ray cluster
    python run_search.py --space search_spaces/full.yaml --resume          # continue an interrupted search
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tune_fusion.cli import Parser, console_warnings_only, ignore_stop_signals, run, stop_early_on_signals
from tune_fusion.errors import EXIT_DISK_FULL, EXIT_INTERRUPTED
from tune_fusion.experiment import read_trials, status_counts
from tune_fusion.names import DEFAULT_STOP_WITHIN_S, DEFAULT_STORAGE


def flag(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """``--num-samples`` and ``--num_samples`` alike, as the other commands accept both."""
    parser.add_argument(f"--{name}", f"--{name.replace('-', '_')}", **kwargs)


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__)
    parser.add_argument("--space", default="search_spaces/quickstart.yaml", help="search-space YAML file")
    parser.add_argument("--address", help="join a running Ray cluster: auto or HOST:PORT (default: a local Ray)")
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help="experiment storage: a path or s3://, gs://")
    parser.add_argument("--name", help="experiment name (default: the space file's name)")
    parser.add_argument("--resume", nargs="?", const=True, choices=[True, "auto"], type=lambda v: v, metavar="auto",
                        help="continue an interrupted search of the same name; `--resume auto`: continue it if there "
                             "is one, start it otherwise (what a requeued SLURM job runs)")
    flag(parser, "num-samples", type=int, help="trials to run (overrides the YAML)")
    flag(parser, "max-concurrent", type=int, help="trials at once (overrides the YAML)")
    flag(parser, "cpus-per-trial", type=float, help="CPUs per trial (overrides the YAML)")
    flag(parser, "gpus-per-trial", type=float, help="GPUs per trial, fractions allowed (overrides the YAML)")
    flag(parser, "warm-start", nargs="+", default=(), metavar="EXPERIMENT_DIR",
         help="start the study from the finished trials of earlier searches (same or compatible space)")
    flag(parser, "stop-within", type=float, default=DEFAULT_STOP_WITHIN_S, metavar="SECONDS",
         help="on SIGUSR1 or SIGTERM, how long running trials may take to end their epoch before the search is "
              f"saved and stops with exit status {EXIT_INTERRUPTED} (default %(default)g)")
    parser.add_argument("--verbose", action="store_true", help="Ray's own status tables, warnings and trial logs")
    args = parser.parse_args(argv)
    stop_early_on_signals("the search")
    if not args.verbose:
        console_warnings_only()  # INFO lines go to the search's log file (printed at the end)

    from tune_fusion.search import run_search
    from tune_fusion.space import load_spec

    resources = {k: v for k, v in (("cpu", args.cpus_per_trial), ("gpu", args.gpus_per_trial)) if v is not None}
    spec = load_spec(args.space, {"num_samples": args.num_samples, "max_concurrent": args.max_concurrent,
                                  "resources": resources or None})
    print("\n".join(first_lines(spec, args.name)))
    outcome = run_search(spec, address=args.address, storage=args.storage, name=args.name, resume=args.resume or False,
                         verbose=args.verbose, warm_start=tuple(args.warm_start), stop_within_s=args.stop_within)
    ignore_stop_signals()
    print_summary(outcome)
    if outcome.disk_full:
        print(f"error: the search stopped: {outcome.disk_full}", file=sys.stderr)
        sys.exit(EXIT_DISK_FULL)
    if outcome.stopped_by:
        print(f"stopped by {outcome.stopped_by}; the search is saved: continue it with the same command plus --resume")
        sys.exit(EXIT_INTERRUPTED)


def first_lines(spec, name: str | None) -> list[str]:
    """What the search is, and how its fusion layers count (0-based ALIGNN blocks, of which the model has so many)."""
    lines = [f"search {name or spec.name}: {spec.num_samples} trials, {spec.max_concurrent} at once, target "
             f"{spec.base.data.target}"]
    if spec.base.model.use_middle_fusion or any(p.name == "middle_fusion_layers" for p in spec.params):
        blocks = spec.base.model.alignn_layers
        lines.append(f"fusion layers are 0-based ALIGNN block indices: this model has {blocks} blocks "
                     f"({', '.join(map(str, range(blocks)))})")
    return lines


def _minutes(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest} s"


def print_summary(outcome) -> None:
    """How the trials ended and the time of preparation and search, the best trial with its unit beside the mean
    predictor's, and what to run next (TensorBoard, optuna-dashboard, the analysis; the log)."""
    from tune_fusion.console import format_value
    from tune_fusion.names import dashboard_command, find_study
    from tune_fusion.search import best_checkpoint_path
    from tune_fusion.units import with_unit

    trials = read_trials(Path(outcome.experiment_dir), stale_after_s=0)
    print(f"\n{len(trials)} trials: {status_counts(trials)} (data preparation {_minutes(outcome.prepare_s)}, "
          f"search {_minutes(outcome.search_s)})")
    if outcome.best is None:
        print("no trial reported a validation MAE; read the trials' error.txt in " + outcome.experiment_dir)
        return
    target = outcome.target
    print(f"best validation MAE: {with_unit(outcome.best_val_mae, target)} (trial {outcome.best.path.rsplit('_', 1)[-1]}"
          f"); predicting the training mean scores {with_unit(outcome.mean_predictor_mae, target)}")
    print("best parameters: " + " ".join(f"{k}={format_value(v)}" for k, v in outcome.best.config.items()))
    print(f"checkpoint (best weights under 'best_model'): {best_checkpoint_path(outcome.best)}")
    print(f"next:  tensorboard --logdir {outcome.experiment_dir}")
    study = find_study(outcome.experiment_dir)
    if study is not None:
        print(f"       {dashboard_command(study)}")
    print(f"       python analyze_trials.py {outcome.experiment_dir}")
    if outcome.log_file:
        print(f"log:   {outcome.log_file}")


if __name__ == "__main__":
    run(main)
