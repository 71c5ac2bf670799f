"""The Markdown report of an analysis (``report.md``) and the plain-text tables it and the CLI print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)


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


def write_report(out: Path, summary: dict[str, Any]) -> Path:
    """``report.md``: the table, the best trial and its test result, importance, plots and diagnostics."""
    lines = [f"# Search analysis: {summary.get('experiment') or 'checkpoints'}", ""]
    figures = summary.get("figures", {})

    def image(key: str, title: str) -> None:
        if figures.get(key):
            lines.extend([f"![{title}]({figures[key]})", ""])

    if "table" in summary:
        statuses = dict.fromkeys(r["status"] for r in summary["table"])
        counts = ", ".join(f"{sum(r['status'] == s for r in summary['table'])} {s.replace('_', ' ')}"
                           for s in statuses)
        lines += ["## Trials", "", f"{len(summary['table'])} trials: {counts}. Sorted by best validation MAE; "
                  "full table in `trials.csv`.", "", summary["table_text"], ""]
    if "best" in summary:
        best = summary["best"]
        lines += ["## Best trial (chosen by validation MAE only)", "", f"- trial `{best['trial']}` ({best['status']}),"
                  f" best validation MAE {_fmt(best['val_mae'])} at epoch {best.get('best_epoch')}",
                  f"- parameters: `{json.dumps(best['params'])}`", f"- checkpoint: `{best['checkpoint']}`"]
        if "test_mae" in best:
            lines += [f"- **test, evaluated once**: MAE {_fmt(best['test_mae'])}, RMSE {_fmt(best['test_rmse'])} on "
                      f"{best['test_crystals']} crystals (predictions in `test_predictions.csv`)"]
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
    if summary.get("diagnostics"):
        found = summary["diagnostics"]["trials"]
        lines += ["## Fusion diagnostics (validation crystals)", ""] + _fusion_table(found)
        if summary["diagnostics"]["figure"]:
            lines += [f"![fusion diagnostics]({summary['diagnostics']['figure']})", ""]
        lines += [f"![alpha](diagnostics/{f})" for s in found.values() for f in s["figures"]] + [""]
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
