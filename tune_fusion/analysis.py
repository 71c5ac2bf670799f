"""The analysis, one entry point per kind of input, each writing its tables and figures into an output folder and
returning a frozen result (``tune_fusion.results``): a search (``analyze_experiment``: trial table, best trial by
validation MAE tested once, importance, plots, diagnostics, ablation, export), a standalone run (``analyze_run``),
one checkpoint (``analyze_checkpoint``); comparisons and text rescaling are in ``tune_fusion.diagnostics``.
``analyze(Request(...))`` does what ``analyze_trials.py`` is asked for, in one folder with one report. Reads the
experiment's files (``tune_fusion.experiment``), so it needs no Ray session and works while the search still runs.

Example:
    >>> from tune_fusion.analysis import analyze_experiment
    >>> found = analyze_experiment("~/ray_results/quickstart", diagnose=2, export="export/")
    >>> found.best.test_mae
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tune_fusion import diagnostics, plots
from tune_fusion.ablation import text_ablation
from tune_fusion.checkpoint import checkpoint_config, load_checkpoint
from tune_fusion.errors import ConfigError, DataError, reading
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
from tune_fusion.export import check_scale_factor, export_best, open_model
from tune_fusion.importance import parameter_importance
from tune_fusion.names import (
    BEST_VAL_MODEL,
    HISTORY_TRAIN,
    HISTORY_VAL,
    RUN_CONFIG,
    RUN_FILES,
    RUN_METRICS,
    Status,
    is_uri,
)
from tune_fusion.report import format_table, write_csv, write_report
from tune_fusion.results import (
    Ablation,
    Analysis,
    BestTrial,
    CheckpointAnalysis,
    CheckpointSummary,
    ExperimentAnalysis,
    FusionDiagnostics,
    Importance,
    RunAnalysis,
    RunInfo,
    as_dict,
)
from tune_fusion.train import TrainedModel, read_predictions, test_once
from tune_fusion.units import unit

__all__ = ["MINIMUM", "TEST_NOTE", "Request", "analyze", "analyze_checkpoint", "analyze_experiment", "analyze_run",
           "check_counts", "default_output", "write_ablation"]

log = logging.getLogger(__name__)

TEST_NOTE = "test split evaluated once, for the best trial only (chosen by validation MAE)"




MINIMUM = {"top_k": 1, "diagnose": 0, "crystals": 0, "permutations": 1}  # the least each count may be


def check_counts(**counts: int) -> None:
    """Each count (``top_k``, ``diagnose``, ``crystals``, ``permutations``) at least its ``MINIMUM``: ConfigError
    naming the first that is not."""
    for name, value in counts.items():
        if value < MINIMUM[name]:
            raise ConfigError(f"{name}={value} must be >= {MINIMUM[name]}")


def default_output(experiment: str | Path) -> Path:
    """Where the analysis of ``experiment`` goes by default: ``<experiment>-analysis`` beside it (for a URI, in the
    working folder)."""
    text = str(experiment)
    if is_uri(text):
        return Path(f"{text.rstrip('/').rsplit('/', 1)[-1]}-analysis")
    folder = Path(text).expanduser().resolve()
    return folder.parent / f"{folder.name}-analysis"


def _output(output: str | Path | None, experiment: str | Path) -> Path:
    out = Path(output or default_output(experiment)).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    return out


def analyze_experiment(experiment: str | Path, output: str | Path | None = None, *, top_k: int = 5, diagnose: int = 0,
                       crystals: int = 0, export: str | Path | None = None, device: str = "auto",
                       cache_dir: str | None = None, permutations: int = 5) -> ExperimentAnalysis:
    """A search (its folder, or its ``s3://``/``gs://`` URI): ``trials.csv``, the best trial tested once
    (``best_trial.json``, ``test_predictions.csv``), importance, figures, the text ablation of the best fused and
    graph-only trials, the fusion diagnostics of the ``diagnose`` best, the confirmation runs where they exist, and
    the export of the best checkpoint to ``export`` ("" = ``<output>/export``). ``top_k`` trials are drawn in the
    text_scale plot. ``output`` defaults to ``<experiment>-analysis``."""
    check_counts(top_k=top_k, diagnose=diagnose, crystals=crystals, permutations=permutations)
    folder = locate_experiment(experiment)
    out = _output(output, experiment)
    export = out / "export" if export == "" else export
    trials = read_trials(folder)
    rows = table_rows(trials)
    write_csv(rows, out / "trials.csv")
    chosen = best_trial(trials, folder)
    ckpt = load_checkpoint(chosen.checkpoint)
    cfg = checkpoint_config(ckpt, chosen.checkpoint)
    target = cfg.data.target
    figures = _search_figures(trials, target, read_space(folder), top_k, out)
    trained = open_model(ckpt, chosen.checkpoint, device, cache_dir)
    test = test_once(trained, out)  # the one test evaluation of the search
    if test:
        figure = plots.parity(test["target"], test["prediction"], target,
                              f"Best trial {chosen.trial_id}: test split (evaluated once)")
        figures["parity"] = plots.save(figure, out / "parity_test.png", vector=True).name
    tested = {**{k: v for k, v in test.items() if k.startswith("test_")}, "test_note": TEST_NOTE} if test else {}
    best = BestTrial(trial=chosen.trial_id, status=chosen.status.value, params=chosen.params,
                     checkpoint=str(chosen.checkpoint), val_mae=float(ckpt["val_mae"]),
                     best_epoch=ckpt.get("best_epoch"), target=target, unit=unit(target), **tested)
    (out / "best_trial.json").write_text(json.dumps(as_dict(best), indent=1))
    importance = Importance(*parameter_importance(folder, str(experiment)))
    if importance.values:
        write_csv([{"parameter": k, "importance": v} for k, v in importance.values.items()], out / "importance.csv")
        figures["importance"] = plots.save(plots.importance_bar(importance.values), out / "importance.png").name
    confirmation = read_confirmation(folder)
    if confirmation:
        write_csv(confirmation.rows, out / "confirmation.csv")
    return ExperimentAnalysis(
        table=rows, table_text=format_table(rows), figures=figures, target=target, unit=unit(target),
        status_counts=status_counts(trials), best=best, importance=importance,
        diagnostics=_diagnose_top(trials, diagnose, out, crystals, device, cache_dir, trained) if diagnose else None,
        ablation=_ablations(trials, trained, cfg.model.graph_only, out, target, device, cache_dir, permutations),
        confirmation=confirmation, export=str(export_best(chosen.checkpoint, export, best.metrics)) if export else None)


def _search_figures(trials: list[TrialInfo], target: str, space: dict[str, Any], top_k: int, out: Path,
                    ) -> dict[str, str]:
    """Learning curves, the searched parameters against validation MAE, and text_scale of the ``top_k`` best."""
    figures = {"learning_curves": plots.save(plots.learning_curves(trials, target), out / "learning_curves.png").name}
    params = searched_params(trials)
    if params:
        figure = plots.params_vs_metric(trials, params, target, space.get("params"))
        figures["params"] = plots.save(figure, out / "params_vs_val_mae.png").name
    text_scale = plots.text_scale_curves([t for t in trials if t.best_val_mae is not None][:top_k])
    if text_scale:
        figures["text_scale"] = plots.save(text_scale, out / "text_scale.png").name
    return figures


def _diagnose_top(trials: list[TrialInfo], diagnose: int, out: Path, crystals: int, device: str,
                  cache_dir: str | None, trained: TrainedModel) -> FusionDiagnostics:
    """Fusion diagnostics of the ``diagnose`` best trials with a checkpoint, side by side."""
    chosen = [t for t in trials if t.best_val_mae is not None and t.checkpoint is not None][:diagnose]
    found = {t.trial_id: diagnostics.diagnose_checkpoint(t.checkpoint, out / "diagnostics", t.trial_id, crystals,
                                                         device, cache_dir, trained.data) for t in chosen}
    figure = plots.fusion_summary(found)
    name = plots.save(figure, out / "diagnostics" / "fusion_summary.png", vector=True).name if figure else None
    return FusionDiagnostics(found, f"diagnostics/{name}" if name else None)


def _ablations(trials: list[TrialInfo], trained: TrainedModel, base_graph_only: bool, out: Path, target: str,
               device: str, cache_dir: str | None, permutations: int) -> Ablation:
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


def write_ablation(found: dict[str, dict[str, Any]], out: Path, target: str) -> Ablation:
    """``text_ablation.csv`` and its bar chart for the labelled ablations (one per model); ``rows`` is that table."""
    rows = [{"model": label, **row} for label, ablation in found.items() for row in ablation["rows"]]
    write_csv(rows, out / "text_ablation.csv")
    figure = plots.text_ablation_bars(rows, target, "What the text is worth (validation crystals)")
    name = plots.save(figure, out / "text_ablation.png", vector=True).name
    return Ablation(found, rows, "text_ablation.csv", name)


def analyze_checkpoint(path: str | Path, out: Path, crystals: int = 0, device: str = "auto",
                       cache_dir: str | None = None, permutations: int = 5, tag: str = "checkpoint",
                       ) -> CheckpointAnalysis:
    """One checkpoint, no experiment needed (a trial's ``checkpoint.pt``, a standalone ``best_val_model.pt``, an
    exported ``best_model.pt``): validation MAE, fusion diagnostics with the guide's checks, alpha arrays, figures
    and per-element table, and the text ablation."""
    check_counts(crystals=crystals, permutations=permutations)
    trained = open_model(load_checkpoint(path), path, device, cache_dir)
    target = trained.cfg.data.target
    out.mkdir(parents=True, exist_ok=True)
    found = diagnostics.diagnose(trained, diagnostics.first_of_split(trained.data, "val", crystals))
    diagnosis = diagnostics.write_diagnosis(found, out / "diagnostics", tag, str(path))
    ablation = write_ablation({tag: text_ablation(trained, "val", permutations)}, out, target)
    summary = CheckpointSummary(str(path), target, unit(target), diagnosis["val_mae"], trained.cfg.model.graph_only,
                                diagnosis)
    return CheckpointAnalysis(target, summary, ablation)


def analyze_run(folder: str | Path, output: str | Path | None = None, *, crystals: int = 0, device: str = "auto",
                cache_dir: str | None = None, permutations: int = 5) -> RunAnalysis:
    """A standalone run's folder (``python -m tune_fusion.train``): its learning curves and text_scale per layer over
    epochs (the original ``monitor_text_scale.py``), its test result, and the analysis of its best checkpoint.
    ``output`` defaults to ``<folder>-analysis``."""
    check_counts(crystals=crystals, permutations=permutations)
    found = run_folder(folder)
    if found is None:
        raise DataError(f"{folder} is not a standalone run's folder (it lacks {' or '.join(RUN_FILES)}); give the "
                        "<output_dir>/<target> folder that python -m tune_fusion.train wrote")
    out = _output(output, found)
    fix = "the run was cut or the file damaged: train it again, or analyse its checkpoint with --checkpoint"
    with reading(found / HISTORY_TRAIN, "run history", fix):
        history = json.loads((found / HISTORY_TRAIN).read_bytes().decode("utf-8"))
        validation = {row["epoch"]: row for row in json.loads((found / HISTORY_VAL).read_bytes().decode("utf-8"))}
        rows = [{**row, **validation.get(row["epoch"], {})} for row in history]
    with reading(found / RUN_CONFIG, "run configuration", fix):
        target = json.loads((found / RUN_CONFIG).read_bytes().decode("utf-8")).get("target", "")
    run = TrialInfo(found.name, found, {}, rows, Status.COMPLETED, "", found / BEST_VAL_MODEL)
    name = f"{found.parent.name}/{found.name}"  # <output_dir>/<target>: no trial id
    figures = {"learning_curves": plots.save(plots.learning_curves([run], target, run=name),
                                             out / "learning_curves.png").name}
    scales = plots.text_scale_curves([run], run=name)
    if scales:
        figures["text_scale"] = plots.save(scales, out / "text_scale.png").name
    with reading(found / RUN_METRICS, "run metrics", fix):
        metrics = json.loads((found / RUN_METRICS).read_bytes().decode()) if (found / RUN_METRICS).is_file() else {}
    predictions = read_predictions(found)  # test_predictions.csv, or the older predictions_test.csv
    if predictions is not None:
        figure = plots.parity(predictions["target"], predictions["prediction"], target,
                              f"{found.name}: test split (evaluated once, at the end of the run)")
        figures["parity"] = plots.save(figure, out / "parity_test.png", vector=True).name
    best = analyze_checkpoint(found / BEST_VAL_MODEL, out, crystals, device, cache_dir, permutations, tag=found.name)
    return RunAnalysis(RunInfo(str(found), len(rows), metrics), figures, best.target, unit(target), best.checkpoint,
                       best.ablation)


@dataclass(frozen=True)
class Request:
    """What ``analyze_trials.py`` is asked for (its flags), checked when made, before any work: ``experiment`` a
    search's folder or URI, or a standalone run's folder; ``checkpoint`` alone diagnoses that checkpoint (beside an
    experiment, into ``<output>/checkpoint``; with ``scale_text``, it is the one rescaled); ``export`` "" means
    ``<output>/export``. See each part's entry point for the rest."""

    experiment: str | Path | None = None
    output: str | Path | None = None
    top_k: int = 5
    diagnose: int = 0
    crystals: int = 0
    export: str | Path | None = None
    compare: tuple[str | Path, str | Path] | None = None
    scale_text: float | None = None
    checkpoint: str | Path | None = None
    device: str = "auto"
    cache_dir: str | None = None
    permutations: int = 5

    def __post_init__(self) -> None:
        check_counts(top_k=self.top_k, diagnose=self.diagnose, crystals=self.crystals, permutations=self.permutations)
        if self.scale_text is not None:
            check_scale_factor(self.scale_text)
        if self.experiment is None and not self.compare and not self.checkpoint:
            raise ConfigError("give an experiment or run folder, a checkpoint, or two checkpoints to compare")
        if self.output is None and self.experiment is None:
            raise ConfigError("an output folder is needed when no experiment folder is given")


def analyze(request: Request) -> Analysis:
    """Every part ``request`` names, in one output folder, with ``summary.json`` and one ``report.md``: what
    ``analyze_trials.py`` does. Each part has its own entry point (``analyze_experiment``, ``analyze_run``,
    ``analyze_checkpoint``, ``diagnostics.compare``, ``diagnostics.scale_text``)."""
    r = request
    out = Path(r.output or default_output(r.experiment)).expanduser().resolve()
    common: dict[str, Any] = {"crystals": r.crystals, "device": r.device, "cache_dir": r.cache_dir}
    search = run = None
    if r.experiment is not None and run_folder(r.experiment):
        run = analyze_run(r.experiment, out, permutations=r.permutations, **common)
    elif r.experiment is not None:
        search = analyze_experiment(r.experiment, out, top_k=r.top_k, diagnose=r.diagnose, export=r.export,
                                    permutations=r.permutations, **common)
    compared = diagnostics.compare(r.compare[0], r.compare[1], out, **common) if r.compare else None
    scaled = checkpoint = None
    if r.scale_text is not None:
        source = r.checkpoint or (search.best.checkpoint if search else run.checkpoint.path if run else None)
        if source is None:
            raise ConfigError("a text scale factor needs a checkpoint: give one, or an experiment or run folder")
        scaled = diagnostics.scale_text(source, r.scale_text, out, **common)
    elif r.checkpoint is not None:  # beside an experiment: its own folder, so nothing of the experiment is replaced
        checkpoint = analyze_checkpoint(r.checkpoint, out / "checkpoint" if search or run else out,
                                        permutations=r.permutations, **common)
    out.mkdir(parents=True, exist_ok=True)
    found = Analysis(output=str(out), experiment=str(r.experiment) if r.experiment else None, search=search, run=run,
                     checkpoint=checkpoint if not (search or run) else None, compare=compared, scale_text=scaled,
                     checkpoint_analysis=checkpoint if search or run else None)
    (out / "summary.json").write_text(json.dumps(found.summary(), indent=1, default=str))
    return dataclasses.replace(found, report=str(write_report(out, found)))
