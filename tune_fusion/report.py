"""The Markdown report of an analysis (``report.md``) and the plain-text tables it and the CLI print."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tune_fusion.units import unit, with_unit

if TYPE_CHECKING:
    from tune_fusion.results import Ablation, Analysis, Confirmation, ExperimentAnalysis, RunAnalysis

__all__ = ["diagnosis_lines", "format_table", "write_csv", "write_report"]


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """A CSV of dict rows, the columns of every row in order of appearance (a header only when there are none)."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for r in rows for k in r)) or ["trial"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table (readable as plain text too)."""
    if not rows:
        return "(no trials)"
    cells = [[_fmt(v) for v in r.values()] for r in rows]
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])


def _fusion_table(summaries: dict[str, dict[str, Any]]) -> list[str]:
    rows = [{"model": label, "layer": layer, "text_scale": v["text_scale"], "node/text norm": v["norm_ratio"],
             "cos before": v["cos_before"], "cos after": v["cos_after"], "alpha mean": v["alpha"]["mean"],
             "alpha std": v["alpha"]["std"], "alpha range": v["alpha"]["range"], "rel. change": v["relative_change"],
             "val MAE": s["val_mae"]} for label, s in summaries.items() for layer, v in s["layers"].items()]
    rows += [{"model": label, "layer": "(no fused layer)", "val MAE": s["val_mae"]}
             for label, s in summaries.items() if not s["layers"]]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return [format_table([{k: r.get(k) for k in keys} for r in rows]), ""]


def diagnosis_lines(label: str, summary: dict[str, Any], target: str) -> list[str]:
    """A diagnosis in a few console lines: validation MAE with its unit and crystals, then per fused layer the
    text_scale, node/text norm ratio, cosines, gate (alpha) mean ± std over atoms, and the guide's checks."""
    lines = [f"{label}: validation MAE {with_unit(summary['val_mae'], target)} on {summary['crystals']} validation "
             "crystals" + ("" if summary["layers"] else " (no fused layer)")]
    for layer, v in summary["layers"].items():
        lines.append(f"  {layer}: text_scale {v['text_scale']:.4g}, node/text norm ratio {v['norm_ratio']:.3g}, "
                     f"cos(h, text) {v['cos_before']:.3f} before / {v['cos_after']:.3f} after fusion, alpha "
                     f"{v['alpha']['mean']:.3f} ± {v['alpha']['std']:.3f} (mean ± std over atoms, gate 0-1)")
        lines += [f"  {layer} check: {w}" for w in v["warnings"]]
    if summary["layers"] and not any(v["warnings"] for v in summary["layers"].values()):
        lines.append("  checks of the original guide: all pass (text_scale, node/text norm ratio, cosine)")
    return lines


def _fusion_section(found: dict[str, dict[str, Any]], folder: str) -> list[str]:
    """The fusion table, the guide's checks as warnings with numbers, and the alpha figures."""
    lines = _fusion_table(found)
    warnings = [f"- {label} {layer}: {w}" for label, s in found.items() for layer, v in s["layers"].items()
                for w in v["warnings"]]
    if any(s["layers"] for s in found.values()):
        lines += (["**Checks of the original guide** (README, \"Fusion checks\"):", ""] + warnings
                  if warnings else ["Checks of the original guide: all pass (text_scale, node/text norm ratio, "
                                    "cosine)."]) + [""]
    tables = [f"`{folder}/{s['alpha_by_element']}`" for s in found.values() if s.get("alpha_by_element")]
    if tables:
        lines += [f"Gate (alpha) per element: {', '.join(tables)}.", ""]
    lines += [f"![alpha]({folder}/{f})" for s in found.values() for f in s["figures"]] + [""]
    return lines


def _ablation_section(ablation: Ablation, confirmation: Confirmation | None, target: str) -> list[str]:
    """What the text is worth: the verdicts, the ablation table, and the confirmation over seeds where it exists."""
    lines = ["## What the text is worth", ""]
    if confirmation:
        lines += ["Retrained over several seeds (`analyze_trials.py --confirm`; validation MAE, mean ± standard "
                  "deviation):", "", format_table(confirmation.rows), ""]
        compared = confirmation.fused_vs_graph
        if compared:
            how = "exceeds" if compared.exceeds_spread else "is within"
            lines += [f"**Confirmed:** graph-only {compared.graph_only} minus fused {compared.fused} = "
                      f"{with_unit(compared.difference, target)}, which {how} the spread over seeds "
                      f"({with_unit(compared.spread, target)}).", ""]
    for label, found in ablation.models.items():
        lines += [f"- **{label}**: {found['verdict']} ({found['crystals']} validation crystals, "
                  f"{found['permutations']} shuffles)"]
    lines += ["", "own = each crystal's description; shuffled = another validation crystal's (mean ± std over the "
              "shuffles); none = the training crystals' mean text vector; delta_vs_own ± ci95 in "
              f"{unit(target) or 'target units'}. Table: `{ablation.csv}`.", "", format_table(ablation.rows), "",
              f"![text ablation]({ablation.figure})", ""]
    return lines


def _search_sections(search: ExperimentAnalysis, image: Callable[[str, str], None], lines: list[str]) -> None:
    """The trial table, the best trial and its test result, and parameter importance."""
    target = search.target
    lines += ["## Trials", "", f"{len(search.table)} trials: {search.status_counts}. Sorted by best validation MAE "
              f"({unit(target) or 'no unit'}); full table in `trials.csv`.", "", search.table_text, ""]
    best = search.best
    lines += ["## Best trial (chosen by validation MAE only)", "", f"- trial `{best.trial}` ({best.status}),"
              f" best validation MAE {with_unit(best.val_mae, target)} at epoch {best.best_epoch}",
              f"- parameters: `{json.dumps(best.params)}`", f"- checkpoint: `{best.checkpoint}`"]
    if best.test_mae is not None:
        lines += [f"- **test, evaluated once**: MAE {with_unit(best.test_mae, target)}, RMSE "
                  f"{with_unit(best.test_rmse, target)} on {best.test_crystals} crystals (predictions in "
                  "`test_predictions.csv`)"]
    lines.append("")
    image("parity", "parity plot, test split")
    lines += ["## Parameter importance", "", search.importance.note, ""]
    if search.importance.values:
        lines += [format_table([{"parameter": k, "importance": v} for k, v in search.importance.values.items()]), ""]
    image("importance", "parameter importance")


def _run_section(run: RunAnalysis, image: Callable[[str, str], None], lines: list[str]) -> None:
    metrics = run.run.metrics
    lines += ["## Standalone run", "", f"`{run.run.folder}`: {run.run.epochs} epochs; best validation MAE "
              f"{with_unit(metrics.get('val_mae'), run.target)} at epoch {metrics.get('best_epoch')}"
              + (f"; test MAE (evaluated once) {with_unit(metrics['test_mae'], run.target)}" if "test_mae" in metrics
                 else ""), ""]
    image("learning_curves", "learning curves")
    image("text_scale", "text_scale over epochs")
    image("parity", "parity plot, test split")


def write_report(out: Path, found: Analysis) -> Path:
    """``report.md``: the table, the best trial and its test result, importance, plots and diagnostics."""
    lines = [f"# Analysis: {found.experiment or 'checkpoints'}", ""]
    part = found.search or found.run
    figures = part.figures if part else {}

    def image(key: str, title: str) -> None:
        if figures.get(key):
            lines.extend([f"![{title}]({figures[key]})", ""])

    target, search = found.target, found.search
    if search:
        _search_sections(search, image, lines)
    if figures:
        lines += ["## Plots", ""]
        for key, title in (("learning_curves", "learning curves"), ("params", "parameters vs validation MAE"),
                           ("text_scale", "text_scale over epochs")):
            image(key, title)
    if found.run:
        _run_section(found.run, image, lines)
    checkpoint = found.run or found.checkpoint
    if checkpoint:
        summary = checkpoint.checkpoint
        lines += ["## Checkpoint", "", f"`{summary.path}`: validation MAE {with_unit(summary.val_mae, target)}"
                  + (" (graph-only: no text)" if summary.graph_only else ""), ""]
        lines += _fusion_section({"checkpoint": summary.diagnosis}, "diagnostics")
    if search and search.diagnostics:
        lines += ["## Fusion diagnostics (validation crystals)", ""] + _fusion_section(search.diagnostics.trials,
                                                                                       "diagnostics")
        if search.diagnostics.figure:
            lines += [f"![fusion diagnostics]({search.diagnostics.figure})", ""]
    if found.main:
        lines += _ablation_section(found.main.ablation, search.confirmation if search else None, target)
    if search and search.export:
        lines += ["## Export", "", f"Best model exported to `{search.export}`; reload it with "
                  "`tune_fusion.export.load_model(path).predict(structures)`.", ""]
    if found.compare:
        c = found.compare
        lines += ["## Comparison", "", f"A = `{c.a['checkpoint']}`, B = `{c.b['checkpoint']}`, on the same "
                  f"{c.crystals} validation crystals.", ""] + _fusion_table({"A": c.a, "B": c.b})
        lines += [f"![comparison]({c.figure})", ""] if c.figure else []
    if found.scale_text:
        s = found.scale_text
        lines += ["## Text scaling", "", f"`{s.checkpoint}` with its last text_transform layer times "
                  f"{s.scale_factor:g}, written to `{s.scaled_checkpoint}`.", ""]
        lines += _fusion_table({"before": s.before, f"x{s.scale_factor:g}": s.after})
        lines += [f"![alpha]({f})" for f in s.before["figures"] + s.after["figures"]] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
