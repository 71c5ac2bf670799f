"""Analysis of a search from its files: trial table, best trial (by validation MAE) tested once, importance, plots,
diagnostics, export and a Markdown report. Reads ``trial_*/result.json``, ``params.json`` and the checkpoints, so it
needs no Ray session and works while the search is still running.

Example:
    >>> from tune_fusion.analysis import analyze
    >>> summary = analyze("~/ray_results/quickstart", diagnose=2, export="export/")
    >>> summary["best"]["test_mae"]
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from tune_fusion import diagnostics, plots
from tune_fusion.ablation import text_ablation
from tune_fusion.errors import ConfigError
from tune_fusion.experiment import (
    TrialInfo,
    best_of_each_kind,
    best_trial,
    locate_experiment,
    read_confirmation,
    read_space,
    read_trials,
    run_folder,
    searched_params,
    status_counts,
    table_rows,
    usable_trials,
)
from tune_fusion.export import checkpoint_config, export_best, load_checkpoint, open_model
from tune_fusion.importance import parameter_importance
from tune_fusion.names import Status, is_uri
from tune_fusion.report import format_table, write_csv, write_report
from tune_fusion.train import TrainedModel, read_predictions, test_once
from tune_fusion.units import unit

log = logging.getLogger(__name__)

TEST_NOTE = "test split evaluated once, for the best trial only (chosen by validation MAE)"


def analyze(experiment: str | Path | None = None, output: str | Path | None = None, *, top_k: int = 5,
            diagnose: int = 0, crystals: int = 0, export: str | Path | None = None,
            compare: tuple[str, str] | None = None, scale_text: float | None = None,
            checkpoint: str | Path | None = None, device: str = "auto", cache_dir: str | None = None,
            permutations: int = 5) -> dict[str, Any]:
    """Everything ``analyze_trials.py`` does; returns a summary (also in ``<output>/summary.json``).

    ``experiment``: a search's folder (or URI), or a standalone training run's output folder. ``checkpoint`` alone
    diagnoses that checkpoint (with ``scale_text``, rescales it). ``export`` "" means ``<output>/export``.
    """
    for name, value, low in (("top_k", top_k, 1), ("diagnose", diagnose, 0), ("crystals", crystals, 0),
                             ("permutations", permutations, 1)):
        if value < low:
            raise ConfigError(f"{name}={value} must be >= {low}")
    if scale_text is not None and not (math.isfinite(scale_text) and scale_text > 0):
        raise ConfigError(f"scale_text={scale_text}: the factor must be a finite number > 0, e.g. 12")
    if experiment is None and not compare and not checkpoint:
        raise ConfigError("give an experiment or run folder, a checkpoint, or two checkpoints to compare")
    if output is None and experiment is None:
        raise ConfigError("an output folder is needed when no experiment folder is given")
    folder = None
    if experiment is not None:
        folder = run_folder(experiment) or locate_experiment(experiment)
    if output is None:
        output = (Path(f"{folder.name}-analysis") if is_uri(str(experiment)) else
                  folder.parent / f"{folder.name}-analysis")
    out = Path(output).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    if export == "":
        export = out / "export"
    summary: dict[str, Any] = {"output": str(out), "experiment": str(experiment) if experiment else None}
    if folder is not None and run_folder(folder):
        summary.update(_analyze_run_dir(folder, out, crystals, device, cache_dir, permutations))
    elif folder is not None:
        summary.update(_analyze_experiment(folder, str(experiment), out, top_k, diagnose, crystals, export, device,
                                           cache_dir, permutations))
    if compare:
        summary["compare"] = diagnostics.compare(compare[0], compare[1], out, crystals, device, cache_dir)
    if scale_text is not None:
        source = checkpoint or (summary.get("best") or {}).get("checkpoint") or (summary.get("checkpoint") or {}).get(
            "path")
        if source is None:
            raise ConfigError("a text scale factor needs a checkpoint: give one, or an experiment or run folder")
        summary["scale_text"] = diagnostics.scale_text(source, scale_text, out, crystals, device, cache_dir)
    elif checkpoint is not None and folder is None:
        summary.update(analyze_checkpoint(checkpoint, out, crystals, device, cache_dir, permutations))
    elif checkpoint is not None:  # beside an experiment: its own folder, so nothing of the experiment is replaced
        summary["checkpoint_analysis"] = analyze_checkpoint(checkpoint, out / "checkpoint", crystals, device,
                                                            cache_dir, permutations)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    summary["report"] = str(write_report(out, summary))
    return summary


def analyze_checkpoint(path: str | Path, out: Path, crystals: int = 0, device: str = "auto",
                       cache_dir: str | None = None, permutations: int = 5, tag: str = "checkpoint",
                       ) -> dict[str, Any]:
    """One checkpoint, no experiment needed (a trial's ``checkpoint.pt``, a standalone ``best_val_model.pt``, an
    exported ``best_model.pt``): validation MAE, fusion diagnostics with the guide's checks, alpha arrays, figures
    and per-element table, and the text ablation."""
    trained = open_model(load_checkpoint(path), path, device, cache_dir)
    target = trained.cfg.data.target
    out.mkdir(parents=True, exist_ok=True)
    found = diagnostics.diagnose(trained, diagnostics.first_of_split(trained.data, "val", crystals))
    diagnosis = diagnostics.write_diagnosis(found, out / "diagnostics", tag, str(path))
    ablation = write_ablation({tag: text_ablation(trained, "val", permutations)}, out, target)
    return {"target": target, "checkpoint": {"path": str(path), "target": target, "unit": unit(target),
                                             "val_mae": diagnosis["val_mae"],
                           "graph_only": trained.cfg.model.graph_only, "diagnosis": diagnosis}, "ablation": ablation}


def write_ablation(found: dict[str, dict[str, Any]], out: Path, target: str) -> dict[str, Any]:
    """``text_ablation.csv`` and its bar chart for the labelled ablations (one per model); ``rows`` is that table."""
    rows = [{"model": label, **row} for label, ablation in found.items() for row in ablation["rows"]]
    write_csv(rows, out / "text_ablation.csv")
    figure = plots.text_ablation_bars(rows, target, "What the text is worth (validation crystals)")
    name = plots.save(figure, out / "text_ablation.png", vector=True).name
    return {"models": found, "rows": rows, "csv": "text_ablation.csv", "figure": name}


def _analyze_run_dir(folder: Path, out: Path, crystals: int, device: str, cache_dir: str | None,
                     permutations: int) -> dict[str, Any]:
    """A standalone run: its learning curves and text_scale per layer over epochs (the original
    ``monitor_text_scale.py``), its test result, and the diagnosis of its best checkpoint."""
    history = json.loads((folder / "history_train.json").read_text())
    validation = {row["epoch"]: row for row in json.loads((folder / "history_val.json").read_text())}
    rows = [{**row, **validation.get(row["epoch"], {})} for row in history]
    config = json.loads((folder / "config.json").read_text())
    target = config.get("target", "")
    run = TrialInfo(folder.name, folder, {}, rows, Status.COMPLETED, "", folder / "best_val_model.pt")
    figures = {"learning_curves": plots.save(plots.learning_curves([run], target), out / "learning_curves.png").name}
    scales = plots.text_scale_curves([run])
    if scales:
        figures["text_scale"] = plots.save(scales, out / "text_scale.png").name
    metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").is_file() else {}
    predictions = read_predictions(folder)  # test_predictions.csv, or the older predictions_test.csv
    if predictions is not None:
        figure = plots.parity(predictions["target"], predictions["prediction"], target,
                              f"{folder.name}: test split (evaluated once, at the end of the run)")
        figures["parity"] = plots.save(figure, out / "parity_test.png", vector=True).name
    result = {"run": {"folder": str(folder), "epochs": len(rows), "metrics": metrics}, "figures": figures,
              "target": target, "unit": unit(target)}
    result.update(analyze_checkpoint(folder / "best_val_model.pt", out, crystals, device, cache_dir, permutations,
                                     tag=folder.name))
    return result


def _analyze_experiment(folder: Path, experiment: str, out: Path, top_k: int, diagnose: int, crystals: int,
                        export: str | Path | None, device: str, cache_dir: str | None, permutations: int = 5,
                        ) -> dict[str, Any]:
    trials = read_trials(folder)
    rows = table_rows(trials)
    write_csv(rows, out / "trials.csv")
    best = best_trial(trials, folder)
    ckpt = load_checkpoint(best.checkpoint)
    space = read_space(folder)
    target = checkpoint_config(ckpt, best.checkpoint).data.target
    params = searched_params(trials)
    figures = {"learning_curves": plots.save(plots.learning_curves(trials, target), out / "learning_curves.png").name}
    if params:
        figure = plots.params_vs_metric(trials, params, target, space.get("params"))
        figures["params"] = plots.save(figure, out / "params_vs_val_mae.png").name
    ranked = [t for t in trials if t.best_val_mae is not None]
    text_scale = plots.text_scale_curves(ranked[:top_k])
    if text_scale:
        figures["text_scale"] = plots.save(text_scale, out / "text_scale.png").name
    result: dict[str, Any] = {"table": rows, "table_text": format_table(rows), "figures": figures, "target": target,
                              "unit": unit(target), "status_counts": status_counts(trials)}
    trained = open_model(ckpt, best.checkpoint, device, cache_dir)
    metrics = {"val_mae": float(ckpt["val_mae"]), "best_epoch": ckpt.get("best_epoch"), "target": target,
               "unit": unit(target)}
    test = test_once(trained, out)  # the one test evaluation of the search
    if test:
        figure = plots.parity(test["target"], test["prediction"], target,
                              f"Best trial {best.trial_id}: test split (evaluated once)")
        figures["parity"] = plots.save(figure, out / "parity_test.png", vector=True).name
        metrics.update({k: v for k, v in test.items() if k.startswith("test_")}, test_note=TEST_NOTE)
    result["best"] = {"trial": best.trial_id, "status": best.status.value, "params": best.params,
                      "checkpoint": str(best.checkpoint), **metrics}
    (out / "best_trial.json").write_text(json.dumps(result["best"], indent=1))
    importances, note = parameter_importance(folder, experiment)
    result["importance"] = {"values": importances, "note": note}
    if importances:
        write_csv([{"parameter": k, "importance": v} for k, v in importances.items()], out / "importance.csv")
        figures["importance"] = plots.save(plots.importance_bar(importances), out / "importance.png").name
    if diagnose:
        chosen = [t for t in ranked if t.checkpoint is not None][:diagnose]
        found = {t.trial_id: diagnostics.diagnose_checkpoint(t.checkpoint, out / "diagnostics", t.trial_id, crystals,
                                                             device, cache_dir, trained.data) for t in chosen}
        figure = plots.fusion_summary(found)
        name = plots.save(figure, out / "diagnostics" / "fusion_summary.png", vector=True).name if figure else None
        result["diagnostics"] = {"trials": found, "figure": f"diagnostics/{name}" if name else None}
    result["ablation"] = _ablations(trials, trained, checkpoint_config(ckpt, best.checkpoint).model.graph_only, out,
                                    target, device, cache_dir, permutations)
    confirmation = read_confirmation(folder)
    if confirmation:
        result["confirmation"] = confirmation
        write_csv(confirmation["rows"], out / "confirmation.csv")
    if export:
        result["export"] = str(export_best(best.checkpoint, export, metrics))
    return result


def _ablations(trials: list[TrialInfo], trained: TrainedModel, base_graph_only: bool, out: Path, target: str,
               device: str, cache_dir: str | None, permutations: int) -> dict[str, Any]:
    """The text ablation of the best trial, and, where the search ran both kinds, of the best fused and the best
    graph-only trial side by side."""
    best = best_of_each_kind(usable_trials(trials), base_graph_only)
    chosen = {f"{label} ({best[kind].trial_id})": best[kind] for kind, label in ((False, "best fused"),
                                                                                  (True, "best graph-only"))
              if kind in best}
    models = {}
    for label, trial in chosen.items():
        model = open_model(load_checkpoint(trial.checkpoint), trial.checkpoint, device, cache_dir, trained.data)
        models[label] = text_ablation(model, "val", permutations)
    return write_ablation(models, out, target)


