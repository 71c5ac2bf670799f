#!/usr/bin/env python
"""Analyse a search, a standalone training run or one checkpoint: trial table, best trial (by validation MAE) tested
once, parameter importance, plots with units, fusion diagnostics with the original guide's checks, what the text is
worth (text ablation), export and a Markdown report (``report.md`` in the output folder).

    python analyze_trials.py ~/ray_results/quickstart                       # table, best trial, plots, report
    python analyze_trials.py ~/ray_results/quickstart --diagnose 3 --export
    python analyze_trials.py ~/ray_results/text_vs_graph --confirm 2 --seeds 3   # retrain the best, several seeds
    python analyze_trials.py output/formation_energy_peratom                 # a standalone run's folder
    python analyze_trials.py --checkpoint best_model.pt --output diag/       # any checkpoint, no experiment needed
    python analyze_trials.py --compare A/checkpoint.pt B/best_model.pt --crystals 200 --output cmp/
    python analyze_trials.py --scale-text 12 --checkpoint best_model.pt --output scaled/
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tune_fusion.cli import Parser, run

if TYPE_CHECKING:
    from tune_fusion.results import Analysis


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__)
    parser.add_argument("experiment", nargs="?", metavar="EXPERIMENT_DIR",
                        help="the search's folder (or its s3://, gs:// URI) as run_search.py printed it, or a "
                             "standalone training run's output folder")
    parser.add_argument("--output", help="where tables, plots and report.md go (default: <experiment>-analysis "
                                         "beside the experiment)")
    parser.add_argument("--top-k", "--top_k", type=int, default=5, help="trials drawn in the text_scale plot")
    parser.add_argument("--diagnose", type=int, default=0, metavar="K",
                        help="fusion diagnostics of the K best checkpoints on the validation split")
    parser.add_argument("--crystals", "--n_samples", "--n-samples", type=int, default=0, metavar="N",
                        help="validation crystals for --diagnose, --compare, --checkpoint and --scale-text (0 = all; "
                             "--n_samples is the original scripts' name)")
    parser.add_argument("--export", nargs="?", const="", metavar="DIR",
                        help="export the best checkpoint (best_model.pt, config, metrics); default DIR: "
                             "<output>/export")
    parser.add_argument("--permutations", type=int, default=5, help="shuffles of the descriptions in the ablation")
    parser.add_argument("--confirm", type=int, metavar="K",
                        help="first retrain the K best configurations (and the best graph-only one) with --seeds "
                             "training seeds each, as Ray trials, into <experiment>-confirm")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per configuration for --confirm")
    parser.add_argument("--address", help="with --confirm: the Ray cluster to run on (default: a local Ray)")
    parser.add_argument("--compare", nargs=2, metavar=("CKPT_A", "CKPT_B"),
                        help="two checkpoints side by side on the same validation crystals")
    parser.add_argument("--scale-text", "--scale_text", type=float, metavar="FACTOR",
                        help="copy a checkpoint with its last text_transform layer times FACTOR, and measure it")
    parser.add_argument("--checkpoint", help="a checkpoint to diagnose (or the one for --scale-text; default: the "
                                             "best trial's)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--cache-dir", "--cache_dir", help="where the prepared caches are, when not where the search "
                                                           "put them")
    parser.add_argument("--verbose", action="store_true", help="with --confirm: Ray's own output")
    parser.add_argument("--root_dir", "--root-dir", metavar="DIR",
                        help="the original scripts' dataset folder: not needed here (refused with what to do instead)")
    args = parser.parse_args(argv)
    if args.root_dir:
        from tune_fusion.errors import ConfigError

        raise ConfigError(f"--root_dir {args.root_dir}: not needed, a checkpoint names its dataset and prepared cache "
                          "and they are read from there; drop --root_dir (and give --cache-dir DIR if the prepared "
                          "caches moved)")

    if args.confirm:
        from tune_fusion.confirm import confirm
        from tune_fusion.errors import ConfigError

        if args.experiment is None or args.confirm < 1 or args.seeds < 2:
            raise ConfigError("--confirm K needs an experiment folder, K >= 1 and --seeds N >= 2")
        print(f"retraining the {args.confirm} best configurations with {args.seeds} seeds each")
        confirm(args.experiment, args.confirm, args.seeds, args.address, args.verbose)

    from tune_fusion.analysis import Request, analyze

    found = analyze(Request(args.experiment, args.output, top_k=args.top_k, diagnose=args.diagnose,
                            crystals=args.crystals, export=args.export, compare=args.compare,
                            scale_text=args.scale_text, checkpoint=args.checkpoint, device=args.device,
                            cache_dir=args.cache_dir, permutations=args.permutations))
    print_summary(found)


def print_summary(found: Analysis) -> None:
    """The table and how the trials ended, the best trial with its one test result, each checkpoint's diagnosis in a
    few lines (validation MAE, text_scale, node/text ratio, cosines, alpha, the guide's checks), the comparison, the
    text scaling, what the text is worth, the confirmation runs, and where every file went."""
    from tune_fusion.report import diagnosis_lines
    from tune_fusion.units import with_unit

    target, search = found.target or _target(found), found.search
    if search:
        print(search.table_text)
        print(f"\n{search.status_counts}")
        best = search.best
        print(f"best trial: {best.trial} (validation MAE {with_unit(best.val_mae, target)})")
        if best.test_mae is not None:
            print(f"test, evaluated once: MAE {with_unit(best.test_mae, target)}, RMSE "
                  f"{with_unit(best.test_rmse, target)} on {best.test_crystals} crystals")
    checkpoint = found.run or found.checkpoint
    if checkpoint:
        print("\n".join(diagnosis_lines(f"checkpoint {checkpoint.checkpoint.path}", checkpoint.checkpoint.diagnosis,
                                         target)))
    if found.compare:
        c = found.compare
        print(f"compared on the same {c.crystals} validation crystals: MAE of B minus A "
              f"{with_unit(c.val_mae_difference_b_minus_a, target)}")
        for label, summary in (("A", c.a), ("B", c.b)):
            print("\n".join(diagnosis_lines(f"{label} {summary['checkpoint']}", summary, target)))
    if found.scale_text:
        s = found.scale_text
        print(f"text_transform x{s.scale_factor:g}: validation MAE {with_unit(s.val_mae_before, target)} before, "
              f"{with_unit(s.val_mae_after, target)} after, on {s.val_crystals} crystals")
        for label, summary in (("before", s.before), (f"x{s.scale_factor:g}", s.after)):
            print("\n".join(line.replace("  ", f"  {label} ", 1) for line in diagnosis_lines("", summary, target)[1:]))
        print(f"scaled checkpoint: {s.scaled_checkpoint}")
    for label, ablation in (found.main.ablation.models if found.main else {}).items():
        print(f"{label}: {ablation['verdict']}")
    if search and search.confirmation:
        for row in search.confirmation.rows:
            print(f"confirmed {row['configuration']}: validation MAE {row['mean_val_mae']:.4f} ± "
                  f"{row['std_val_mae']:.4f} over {row['seeds']} seeds")
    if search and search.export:
        print(f"exported checkpoint: {search.export}")
    print(f"files (tables, figures, diagnostics): {found.output}")
    print(f"report: {found.report}")


def _target(found: Analysis) -> str:
    """The target of a comparison or a text scaling, which have no main part."""
    part = found.compare.a if found.compare else found.scale_text.before if found.scale_text else {}
    return part.get("target", "")


if __name__ == "__main__":
    run(main)
