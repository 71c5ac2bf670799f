"""The Markdown report of an analysis (``report.md``) and the plain-text tables it and the CLI print."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from tune_fusion.units import unit, with_unit


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


def _ablation_section(ablation: dict[str, Any], confirmation: dict[str, Any] | None, target: str) -> list[str]:
    """What the text is worth: the verdicts, the ablation table, and the confirmation over seeds where it exists."""
    lines = ["## What the text is worth", ""]
    if confirmation:
        lines += ["Retrained over several seeds (`analyze_trials.py --confirm`; validation MAE, mean ± standard "
                  "deviation):", "", format_table(confirmation["rows"]), ""]
        compared = confirmation.get("fused_vs_graph")
        if compared:
            how = "exceeds" if compared["exceeds_spread"] else "is within"
            lines += [f"**Confirmed:** graph-only {compared['graph_only']} minus fused {compared['fused']} = "
                      f"{with_unit(compared['difference'], target)}, which {how} the spread over seeds "
                      f"({with_unit(compared['spread'], target)}).", ""]
    for label, found in ablation["models"].items():
        lines += [f"- **{label}**: {found['verdict']} ({found['crystals']} validation crystals, "
                  f"{found['permutations']} shuffles)"]
    lines += ["", "own = each crystal's description; shuffled = another validation crystal's (mean ± std over the "
              "shuffles); none = the training crystals' mean text vector; delta_vs_own ± ci95 in "
              f"{unit(target) or 'target units'}. Table: `{ablation['csv']}`.", "", format_table(ablation["rows"]), "",
              f"![text ablation]({ablation['figure']})", ""]
    return lines


def write_report(out: Path, summary: dict[str, Any]) -> Path:
    """``report.md``: the table, the best trial and its test result, importance, plots and diagnostics."""
    lines = [f"# Analysis: {summary.get('experiment') or 'checkpoints'}", ""]
    figures = summary.get("figures", {})

    def image(key: str, title: str) -> None:
        if figures.get(key):
            lines.extend([f"![{title}]({figures[key]})", ""])

    target = summary.get("target", "")
    if "table" in summary:
        lines += ["## Trials", "", f"{len(summary['table'])} trials: {summary['status_counts']}. Sorted by best "
                  f"validation MAE ({unit(target) or 'no unit'}); full table in `trials.csv`.", "",
                  summary["table_text"], ""]
    if "best" in summary:
        best = summary["best"]
        lines += ["## Best trial (chosen by validation MAE only)", "", f"- trial `{best['trial']}` ({best['status']}),"
                  f" best validation MAE {with_unit(best['val_mae'], target)} at epoch {best.get('best_epoch')}",
                  f"- parameters: `{json.dumps(best['params'])}`", f"- checkpoint: `{best['checkpoint']}`"]
        if "test_mae" in best:
            lines += [f"- **test, evaluated once**: MAE {with_unit(best['test_mae'], target)}, RMSE "
                      f"{with_unit(best['test_rmse'], target)} on {best['test_crystals']} crystals (predictions in "
                      "`test_predictions.csv`)"]
        lines.append("")
        image("parity", "parity plot, test split")
    if "importance" in summary:
        values, note = summary["importance"]["values"], summary["importance"]["note"]
        lines += ["## Parameter importance", "", note, ""]
        if values:
            lines += [format_table([{"parameter": k, "importance": v} for k, v in values.items()]), ""]
        image("importance", "parameter importance")
    if figures:
        lines += ["## Plots", ""]
        for key, title in (("learning_curves", "learning curves"), ("params", "parameters vs validation MAE"),
                           ("text_scale", "text_scale over epochs")):
            image(key, title)
    if summary.get("run"):
        run = summary["run"]
        metrics = run["metrics"]
        lines += ["## Standalone run", "", f"`{run['folder']}`: {run['epochs']} epochs; best validation MAE "
                  f"{with_unit(metrics.get('val_mae'), target)} at epoch {metrics.get('best_epoch')}"
                  + (f"; test MAE (evaluated once) {with_unit(metrics['test_mae'], target)}" if "test_mae" in metrics
                     else ""), ""]
        image("learning_curves", "learning curves")
        image("text_scale", "text_scale over epochs")
        image("parity", "parity plot, test split")
    if summary.get("checkpoint"):
        found = summary["checkpoint"]
        lines += ["## Checkpoint", "", f"`{found['path']}`: validation MAE {with_unit(found['val_mae'], target)}"
                  + (" (graph-only: no text)" if found["graph_only"] else ""), ""]
        lines += _fusion_section({"checkpoint": found["diagnosis"]}, "diagnostics")
    if summary.get("diagnostics"):
        found = summary["diagnostics"]["trials"]
        lines += ["## Fusion diagnostics (validation crystals)", ""] + _fusion_section(found, "diagnostics")
        if summary["diagnostics"]["figure"]:
            lines += [f"![fusion diagnostics]({summary['diagnostics']['figure']})", ""]
    if summary.get("ablation"):
        lines += _ablation_section(summary["ablation"], summary.get("confirmation"), target)
    if summary.get("export"):
        lines += ["## Export", "", f"Best model exported to `{summary['export']}`; reload it with "
                  "`tune_fusion.export.load_model(path).predict(structures)`.", ""]
    if summary.get("compare"):
        c = summary["compare"]
        lines += ["## Comparison", "", f"A = `{c['a']['checkpoint']}`, B = `{c['b']['checkpoint']}`, on the same "
                  f"{c['crystals']} validation crystals.", ""] + _fusion_table({"A": c["a"], "B": c["b"]})
        lines += [f"![comparison]({c['figure']})", ""] if c["figure"] else []
    if summary.get("scale_text"):
        s = summary["scale_text"]
        lines += ["## Text scaling", "", f"`{s['checkpoint']}` with its last text_transform layer times "
                  f"{s['scale_factor']:g}, written to `{s['scaled_checkpoint']}`.", ""]
        lines += _fusion_table({"before": s["before"], f"x{s['scale_factor']:g}": s["after"]})
        lines += [f"![alpha]({f})" for f in s["before"]["figures"] + s["after"]["figures"]] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
