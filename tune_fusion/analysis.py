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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tune_fusion import diagnostics, plots
from tune_fusion.ablation import text_ablation
from tune_fusion.errors import ConfigError, DataError
from tune_fusion.export import checkpoint_config, export_best, load_checkpoint, open_model
from tune_fusion.names import (
    CHECKPOINT_FILE,
    FINISHED,
    METRIC,
    SPACE_FILE,
    STUDY_FILE,
    Status,
    StopReason,
    is_copy,
    is_uri,
    study_path,
)
from tune_fusion.report import format_table, write_csv, write_report
from tune_fusion.train import TrainedModel, read_predictions, test_once
from tune_fusion.units import unit

log = logging.getLogger(__name__)

STALE_AFTER_S = 900.0  # a search whose files have not changed for this long is over (or its driver died)
TEST_NOTE = "test split evaluated once, for the best trial only (chosen by validation MAE)"


@dataclass
class TrialInfo:
    """One trial as read from its folder; ``history`` holds its reported rows, one per epoch."""

    trial_id: str
    path: Path
    params: dict[str, Any]
    history: list[dict[str, Any]]
    status: Status
    reason: str
    checkpoint: Path | None

    @property
    def epochs(self) -> int:
        return int(self.history[-1].get("epoch", 0)) if self.history else 0

    @property
    def best_val_mae(self) -> float | None:
        values = [float(r[METRIC]) for r in self.history if _finite(r.get(METRIC))]
        return min(values) if values else None

    @property
    def last_val_mae(self) -> float | None:
        value = self.history[-1].get(METRIC) if self.history else None
        return float(value) if _finite(value) else None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def locate_experiment(experiment: str | Path, copy_to: Path | None = None) -> Path:
    """A local experiment folder; an ``s3://``/``gs://``/``file://`` URI is first copied with pyarrow to
    ``copy_to`` (default ``~/.cache/tune-fusion/experiments/<name>``). DataError for a missing or foreign folder."""
    text = str(experiment)
    if is_uri(text):
        from pyarrow import fs

        local = copy_to or Path("~/.cache/tune-fusion/experiments").expanduser() / text.rstrip("/").rsplit("/", 1)[-1]
        try:
            source, path = fs.FileSystem.from_uri(text)
            local.mkdir(parents=True, exist_ok=True)
            fs.copy_files(path, str(local), source_filesystem=source, destination_filesystem=fs.LocalFileSystem())
        except (OSError, ValueError) as err:
            raise DataError(f"experiment {text} cannot be copied ({str(err).splitlines()[0]}); check the URI and "
                            "the credentials of its storage") from None
        folder = local
    else:
        folder = Path(text).expanduser().resolve()
    if not folder.is_dir():
        raise DataError(f"experiment {text} does not exist; give the folder run_search.py printed as 'experiment:'")
    if not _trial_dirs(folder) and not list(folder.glob("experiment_state-*.json")):
        raise DataError(f"{text} is not a tune-fusion experiment (no trial folders with params.json or result.json, "
                        "no experiment_state-*.json); give the folder run_search.py printed as 'experiment:'")
    return folder


def _trial_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and ((p / "result.json").is_file()
                                                                  or (p / "params.json").is_file()))


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """A trial's reported rows, one per epoch: a resumed trial reports again, from its checkpoint, the epochs Ray's
    snapshot lacked (``tune_fusion.trainable``); the last row of an epoch holds."""
    rows: dict[Any, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # the line a running trial is writing
                continue
            rows[row.get("epoch")] = row
    return list(rows.values())


def _read_params(path: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or being written
        return dict(rows[-1].get("config", {})) if rows else {}


def _ray_states(folder: Path) -> dict[str, str]:
    """Ray's own trial statuses from the newest experiment_state file ({} when absent or unreadable)."""
    files = sorted(folder.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    try:
        entries = json.loads(files[-1].read_text()).get("trial_data", []) if files else []
    except (OSError, ValueError):
        return {}
    states = {}
    for entry in entries:
        try:
            state = json.loads(entry[0]) if isinstance(entry[0], str) else entry[0]
            states[state["trial_id"]] = state["status"]
        except (TypeError, ValueError, KeyError, IndexError):
            continue
    return states


def _error_line(folder: Path) -> str:
    """The exception line of Ray's error.txt (its last unindented line), or ''."""
    path = folder / "error.txt"
    if not path.is_file() and not (folder / "error.pkl").is_file():
        return ""
    lines = [ln for ln in (path.read_text(errors="replace").splitlines() if path.is_file() else []) if ln.strip()]
    message = [ln for ln in lines if not ln[0].isspace() and not ln.startswith(("Traceback", "Failure #"))]
    return (message[-1] if message else lines[0] if lines else "error.pkl written by Ray").strip()[:200]


def _status(rows: list[dict[str, Any]], error: str, ray_state: str, live: bool) -> tuple[Status, str]:
    last = rows[-1] if rows else {}
    reason = str(last.get("stop_reason") or "")
    if last.get(FINISHED):
        stop = StopReason.of(reason)
        if stop is not None and stop.diverged:
            return Status.DIVERGED, reason
        return (Status.CONFIG_ERROR if stop is StopReason.CONFIG_ERROR else Status.COMPLETED), reason
    if error or ray_state == "ERROR":
        return Status.ERRORED, error or "Ray marked the trial ERROR"
    if last.get("done") or ray_state == "TERMINATED":
        return (Status.STOPPED_BY_SCHEDULER,
                f"stopped early by the scheduler (ASHA or the time budget) after {len(rows)} epoch(s)")
    if live:
        return Status.RUNNING, ""
    return Status.INTERRUPTED, "the search stopped before this trial ended; continue it with run_search.py --resume"


def read_trials(folder: Path, stale_after_s: float = STALE_AFTER_S) -> list[TrialInfo]:
    """Every trial of the experiment with its status: ASHA-stopped trials are told apart from finished ones by
    ``trial_finished``, from running ones by Ray's ``done`` flag and state, and by how recently files changed."""
    states, trials = _ray_states(folder), []
    dirs = _trial_dirs(folder)
    stamps = [p.stat().st_mtime for p in [*folder.glob("experiment_state-*.json"), *(d / "result.json" for d in dirs)]
              if p.is_file()]
    live = bool(stamps) and time.time() - max(stamps) < stale_after_s
    for trial_dir in dirs:
        rows = _read_rows(trial_dir / "result.json")
        params = _read_params(trial_dir / "params.json", rows)
        trial_id = str(rows[-1].get("trial_id")) if rows else trial_dir.name.removeprefix("trial_")
        status, reason = _status(rows, _error_line(trial_dir), states.get(trial_id, ""), live)
        checkpoints = sorted(trial_dir.glob(f"checkpoint_*/{CHECKPOINT_FILE}"))
        trials.append(TrialInfo(trial_id, trial_dir, params, rows, status, reason, checkpoints[-1] if checkpoints
                                else None))
    return sorted(trials, key=lambda t: (t.best_val_mae is None, t.best_val_mae or 0.0, t.trial_id))


def status_counts(trials: list[TrialInfo]) -> str:
    """``5 completed, 3 stopped early by the scheduler, 0 diverged, 0 errored`` (+ any other status present)."""
    always = (Status.COMPLETED, Status.STOPPED_BY_SCHEDULER, Status.DIVERGED, Status.ERRORED)
    shown = [s for s in Status if s in always or any(t.status == s for t in trials)]
    labels = {Status.STOPPED_BY_SCHEDULER: "stopped early by the scheduler"}
    return ", ".join(f"{sum(t.status == s for t in trials)} {labels.get(s, s.label)}" for s in shown)


def searched_params(trials: list[TrialInfo]) -> list[str]:
    """Names of the searched parameters, in order of first appearance."""
    return list(dict.fromkeys(name for t in trials for name in t.params))


def table_rows(trials: list[TrialInfo]) -> list[dict[str, Any]]:
    """One row per trial (sorted by best validation MAE): id, status, epochs, best/last val MAE, params, reason."""
    names = searched_params(trials)
    return [{"trial": t.trial_id, "status": t.status.value, "epochs": t.epochs, "best_val_mae": t.best_val_mae,
             "last_val_mae": t.last_val_mae, **{n: t.params.get(n, "") for n in names}, "reason": t.reason}
            for t in trials]


def usable_trials(trials: list[TrialInfo]) -> list[TrialInfo]:
    """The trials with a validation MAE and a checkpoint, best (lowest validation MAE) first."""
    return sorted((t for t in trials if t.best_val_mae is not None and t.checkpoint is not None),
                  key=lambda t: t.best_val_mae)


def best_trial(trials: list[TrialInfo], folder: Path) -> TrialInfo:
    """The trial with the lowest validation MAE that has a checkpoint (validation only: test plays no part)."""
    usable = usable_trials(trials)
    if not usable:
        raise DataError(f"experiment {folder} has no trial with a validation MAE and a checkpoint yet "
                        f"({len(trials)} trials: {status_counts(trials)}); wait for a first epoch, or read "
                        "trial_*/error.txt")
    return usable[0]


def parameter_importance(folder: Path, experiment: str | None = None) -> tuple[dict[str, float], str]:
    """Optuna (fANOVA, seeded) importances of the persisted study, or ({}, why not). For an ``s3://``/``gs://``
    ``experiment`` the study is where the search kept it (``tune_fusion.search.study_path``)."""
    import optuna

    name = folder.name
    candidates = [folder / STUDY_FILE] + ([study_path(experiment.rstrip("/"))] if experiment and is_uri(experiment)
                                          else [])
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        return {}, f"no Optuna study ({STUDY_FILE}) found for {name}: parameter importance not computed"
    storage = f"sqlite:///{found}"
    names = optuna.get_all_study_names(storage)
    if not names:
        return {}, f"{found} holds no Optuna study: parameter importance not computed"
    stored = optuna.load_study(study_name=name if name in names else names[0], storage=storage)
    complete = [t for t in stored.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if not is_copy(t.user_attrs)]  # the trials this search trained, not repeats or warm-start copies
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    study = optuna.create_study(direction="minimize")
    optuna.logging.set_verbosity(verbosity)
    study.add_trials(complete)
    if len(complete) < 2:
        return {}, f"parameter importance needs at least 2 completed trials; the study has {len(complete)}"
    # Every completed trial has these, with more than one value (conditional or constant ones cannot be ranked).
    varying = [p for p in dict.fromkeys(p for t in complete for p in t.params)
               if all(p in t.params for t in complete) and len({repr(t.params[p]) for t in complete}) > 1]
    importances, error = {}, ""
    for params in (None, varying):  # Optuna's own choice of parameters first, then the varying common ones
        try:
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            found_values = optuna.importance.get_param_importances(study, evaluator=evaluator, params=params)
            importances = {k: float(v) for k, v in found_values.items()}
            break
        except (RuntimeError, ValueError) as err:
            error = str(err)
    if not importances:
        return {}, f"parameter importance could not be computed over {len(complete)} completed trials ({error})"
    left_out = sorted({p for t in complete for p in t.params} - set(importances))
    note = f"fANOVA over the {len(complete)} completed trials (ASHA-stopped ones excluded)"
    return importances, note + (f"; left out (absent from some completed trials): {', '.join(left_out)}"
                                if left_out else "")


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
        folder = _run_dir(experiment) or locate_experiment(experiment)
    if output is None:
        output = (Path(f"{folder.name}-analysis") if is_uri(str(experiment)) else
                  folder.parent / f"{folder.name}-analysis")
    out = Path(output).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    if export == "":
        export = out / "export"
    summary: dict[str, Any] = {"output": str(out), "experiment": str(experiment) if experiment else None}
    if folder is not None and _run_dir(folder):
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


RUN_FILES = ("history_train.json", "best_val_model.pt")  # a standalone run's output folder holds these


def _run_dir(location: str | Path) -> Path | None:
    """The folder, when it is a standalone training run's output (``python -m tune_fusion.train``), else None."""
    if is_uri(str(location)):
        return None
    folder = Path(location).expanduser().resolve()
    return folder if all((folder / name).is_file() for name in RUN_FILES) else None


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


def read_space(folder: Path) -> dict[str, Any]:
    """The search's ``search_space.json`` (target and distributions), or {} for searches that did not write one."""
    try:
        return json.loads((folder / SPACE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def is_graph_only(trial: TrialInfo, default: bool) -> bool:
    """Whether the trial trained the graph-only baseline (searched, or the search's fixed setting ``default``)."""
    return bool(trial.params.get("graph_only", default))


def best_of_each_kind(usable: list[TrialInfo], default_graph_only: bool) -> dict[bool, TrialInfo]:
    """The best fused (key False) and the best graph-only (key True) trial of ``usable`` (best first), where each
    kind ran."""
    best: dict[bool, TrialInfo] = {}
    for trial in usable:
        best.setdefault(is_graph_only(trial, default_graph_only), trial)
    return best


def to_confirm(usable: list[TrialInfo], top_k: int, default_graph_only: bool) -> list[TrialInfo]:
    """What ``analyze_trials.py --confirm K`` retrains: the ``top_k`` best of ``usable`` (best first), and the best
    graph-only trial beside them when they are fused and the search ran both kinds (the baseline to compare with)."""
    chosen = usable[:top_k]
    graph = best_of_each_kind(usable, default_graph_only).get(True)
    if graph is not None and graph not in chosen and any(not is_graph_only(t, default_graph_only) for t in chosen):
        chosen.append(graph)
    return chosen


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


CONFIRM_SUFFIX = "-confirm"  # the confirmation experiment of search X is X-confirm beside it


def read_confirmation(folder: Path) -> dict[str, Any] | None:
    """The retrained configurations of ``<experiment>-confirm`` (``analyze_trials.py --confirm``): per
    configuration the best validation MAE of each seed, their mean and standard deviation; None when absent."""
    confirm = folder.parent / f"{folder.name}{CONFIRM_SUFFIX}"
    if not confirm.is_dir():
        return None
    groups: dict[str, dict[str, Any]] = {}
    for trial in read_trials(confirm, stale_after_s=0):
        job = trial.params.get("job", {})
        label = str(job.get("confirms", trial.trial_id))
        group = groups.setdefault(label, {"configuration": label,
                                          "graph_only": bool(job.get("config", {}).get("graph_only")), "maes": []})
        if trial.best_val_mae is not None and trial.status == Status.COMPLETED:
            group["maes"].append(trial.best_val_mae)
    rows = []
    for group in groups.values():
        maes = group.pop("maes")
        if maes:
            rows.append({**group, "seeds": len(maes), "mean_val_mae": float(np.mean(maes)),
                         "std_val_mae": float(np.std(maes, ddof=1)) if len(maes) > 1 else 0.0,
                         "val_maes": " ".join(f"{m:.4f}" for m in maes)})
    rows.sort(key=lambda r: r["mean_val_mae"])
    if not rows:
        return None
    result: dict[str, Any] = {"folder": str(confirm), "rows": rows, "best": rows[0]["configuration"]}
    fused = next((r for r in rows if not r["graph_only"]), None)
    graph = next((r for r in rows if r["graph_only"]), None)
    if fused and graph:
        difference = graph["mean_val_mae"] - fused["mean_val_mae"]
        spread = max(fused["std_val_mae"], graph["std_val_mae"])
        result["fused_vs_graph"] = {"fused": fused["configuration"], "graph_only": graph["configuration"],
                                    "difference": difference, "spread": spread,
                                    "exceeds_spread": abs(difference) > spread}
    return result
