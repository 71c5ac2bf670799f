#!/usr/bin/env python
"""Analyse a search: trial table, best trial (by validation MAE) tested once, parameter importance, plots, fusion
diagnostics, export and a Markdown report (``report.md`` in the output folder).

    python analyze_trials.py ~/ray_results/quickstart                       # table, best trial, plots, report
    python analyze_trials.py ~/ray_results/quickstart --diagnose 3 --export export/
    python analyze_trials.py s3://bucket/ray_results/full --output full-analysis  # works on a running search too
    python analyze_trials.py --compare A/checkpoint.pt B/best_model.pt --crystals 200 --output cmp/
    python analyze_trials.py --scale-text 12 --checkpoint best_model.pt --output scaled/
"""

from __future__ import annotations

import argparse

from tune_fusion.cli import run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("experiment", nargs="?", metavar="EXPERIMENT_DIR",
                        help="the search's folder (or its s3://, gs:// URI) as run_search.py printed it")
    parser.add_argument("--output", help="where tables, plots and report.md go (default: <experiment>-analysis "
                                         "beside the experiment)")
    parser.add_argument("--top-k", type=int, default=5, help="trials drawn in the text_scale plot")
    parser.add_argument("--diagnose", type=int, default=0, metavar="K",
                        help="fusion diagnostics of the K best checkpoints on the validation split")
    parser.add_argument("--crystals", type=int, default=0, metavar="N",
                        help="validation crystals for --diagnose, --compare and --scale-text (0 = all)")
    parser.add_argument("--export", metavar="DIR", help="export the best checkpoint (best_model.pt, config, metrics)")
    parser.add_argument("--compare", nargs=2, metavar=("CKPT_A", "CKPT_B"),
                        help="two checkpoints side by side on the same validation crystals")
    parser.add_argument("--scale-text", type=float, metavar="FACTOR",
                        help="copy a checkpoint with its last text_transform layer times FACTOR, and measure it")
    parser.add_argument("--checkpoint", help="the checkpoint for --scale-text (default: the best trial's)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--cache-dir", help="where the prepared caches are, when not where the search put them")
    args = parser.parse_args(argv)

    from tune_fusion.analysis import analyze

    summary = analyze(args.experiment, args.output, top_k=args.top_k, diagnose=args.diagnose,
                      crystals=args.crystals, export=args.export, compare=args.compare, scale_text=args.scale_text,
                      checkpoint=args.checkpoint, device=args.device, cache_dir=args.cache_dir)
    if "table_text" in summary:
        print(summary["table_text"])
    best = summary.get("best")
    if best:
        print(f"\nbest trial: {best['trial']} (validation MAE {best['val_mae']:.4f})")
        if "test_mae" in best:
            print(f"test, evaluated once: MAE {best['test_mae']:.4f}, RMSE {best['test_rmse']:.4f} "
                  f"on {best['test_crystals']} crystals")
    print(f"report: {summary['report']}")


if __name__ == "__main__":
    run(main)
