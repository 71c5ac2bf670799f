#!/usr/bin/env python
"""Run a hyperparameter search: ``python run_search.py`` runs the quickstart search on the bundled sample data.

    python run_search.py --space search_spaces/middle_fusion.yaml --num-samples 32 --max-concurrent 4
    python run_search.py --address auto --storage /shared/ray_results     # on a Ray cluster
    python run_search.py --space search_spaces/full.yaml --resume          # continue an interrupted search
"""

from __future__ import annotations

import argparse

from tune_fusion.cli import run
from tune_fusion.search import DEFAULT_STORAGE, best_checkpoint_path, run_search
from tune_fusion.space import load_spec


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--space", default="search_spaces/quickstart.yaml", help="search-space YAML file")
    parser.add_argument("--address", help="join a running Ray cluster: auto or HOST:PORT (default: a local Ray)")
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help="experiment storage: a path or s3://, gs://")
    parser.add_argument("--name", help="experiment name (default: the space file's name)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted search of the same name")
    parser.add_argument("--num-samples", type=int, help="trials to run (overrides the YAML)")
    parser.add_argument("--max-concurrent", type=int, help="trials at once (overrides the YAML)")
    parser.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (overrides the YAML)")
    parser.add_argument("--gpus-per-trial", type=float, help="GPUs per trial, fractions allowed (overrides the YAML)")
    args = parser.parse_args(argv)

    resources = {k: v for k, v in (("cpu", args.cpus_per_trial), ("gpu", args.gpus_per_trial)) if v is not None}
    spec = load_spec(args.space, {"num_samples": args.num_samples, "max_concurrent": args.max_concurrent,
                                  "resources": resources or None})
    outcome = run_search(spec, address=args.address, storage=args.storage, name=args.name, resume=args.resume)
    print(f"\nexperiment: {outcome.experiment_dir}")
    print(f"trials: {len(outcome.results)} ({outcome.results.num_errors} errored)")
    if outcome.best is None:
        print("no trial reported a validation MAE")
        return
    print(f"best trial: {outcome.best.path}")
    print(f"best validation MAE: {outcome.best_val_mae:.4f}")
    print(f"searched parameters: {outcome.best.config}")
    print(f"checkpoint (best weights under 'best_model'): {best_checkpoint_path(outcome.best)}")
    print(f"inspect: tensorboard --logdir {outcome.experiment_dir}")


if __name__ == "__main__":
    run(main)
