"""Analysis of a search from its files: trial table, best trial (by validation MAE) tested once, importance, plots,
diagnostics, export and a Markdown report. Reads ``trial_*/result.json``, ``params.json`` and the checkpoints, so it
needs no Ray session and works while the search is still running.

Example:
    >>> from tune_fusion.analysis import analyze
    >>> summary = analyze("~/ray_results/quickstart", diagnose=2, export="export/")
    >>> summary["best"]["test_mae"]
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tune_fusion import diagnostics, plots
from tune_fusion.errors import ConfigError, DataError
from tune_fusion.export import export_best, load_checkpoint, open_model
from tune_fusion.names import CHECKPOINT_FILE, FINISHED, METRIC, STUDY_FILE, Status, StopReason, is_uri, study_path
from tune_fusion.report import format_table, write_report
from tune_fusion.train import test_once

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
        return int(self.history[-1].get("training_iteration", len(self.history))) if self.history else 0

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
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # the line a running trial is writing
                continue
    return rows


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


def searched_params(trials: list[TrialInfo]) -> list[str]:
    """Names of the searched parameters, in order of first appearance."""
    return list(dict.fromkeys(name for t in trials for name in t.params))


def table_rows(trials: list[TrialInfo]) -> list[dict[str, Any]]:
    """One row per trial (sorted by best validation MAE): id, status, epochs, best/last val MAE, params, reason."""
    names = searched_params(trials)
    return [{"trial": t.trial_id, "status": t.status.value, "epochs": t.epochs, "best_val_mae": t.best_val_mae,
             "last_val_mae": t.last_val_mae, **{n: t.params.get(n, "") for n in names}, "reason": t.reason}
            for t in trials]


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["trial"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def best_trial(trials: list[TrialInfo], folder: Path) -> TrialInfo:
    """The trial with the lowest validation MAE that has a checkpoint (validation only: test plays no part)."""
    usable = [t for t in trials if t.best_val_mae is not None and t.checkpoint is not None]
    if not usable:
        counts = ", ".join(f"{sum(t.status == s for t in trials)} {s.value}" for s in Status
                           if any(t.status == s for t in trials))
        raise DataError(f"experiment {folder} has no trial with a validation MAE and a checkpoint yet "
                        f"({len(trials)} trials: {counts or 'none'}); wait for a first epoch, or read trial_*/error.txt")
    return min(usable, key=lambda t: t.best_val_mae)


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
    study = optuna.load_study(study_name=name if name in names else names[0], storage=storage)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
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
            checkpoint: str | Path | None = None, device: str = "auto", cache_dir: str | None = None) -> dict[str, Any]:
    """Everything ``analyze_trials.py`` does; returns a summary (also in ``<output>/summary.json``)."""
    for name, value, low in (("top_k", top_k, 1), ("diagnose", diagnose, 0), ("crystals", crystals, 0)):
        if value < low:
            raise ConfigError(f"{name}={value} must be >= {low}")
    if scale_text is not None and not (math.isfinite(scale_text) and scale_text > 0):
        raise ConfigError(f"scale_text={scale_text}: the factor must be a finite number > 0, e.g. 12")
    if experiment is None and not compare and not (scale_text and checkpoint):
        raise ConfigError("give an experiment folder, or two checkpoints to compare, or a text scale factor with a "
                          "checkpoint")
    if output is None and experiment is None:
        raise ConfigError("an output folder is needed when no experiment folder is given")
    folder = locate_experiment(experiment) if experiment is not None else None
    if output is None:
        output = (Path(f"{folder.name}-analysis") if is_uri(str(experiment)) else
                  folder.parent / f"{folder.name}-analysis")
    out = Path(output).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"output": str(out), "experiment": str(experiment) if experiment else None}
    if folder is not None:
        summary.update(_analyze_experiment(folder, str(experiment), out, top_k, diagnose, crystals, export, device,
                                           cache_dir))
    if compare:
        summary["compare"] = diagnostics.compare(compare[0], compare[1], out, crystals, device, cache_dir)
    if scale_text is not None:
        source = checkpoint or (summary.get("best") or {}).get("checkpoint")
        summary["scale_text"] = diagnostics.scale_text(source, scale_text, out, crystals, device, cache_dir)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    summary["report"] = str(write_report(out, summary))
    return summary


def _analyze_experiment(folder: Path, experiment: str, out: Path, top_k: int, diagnose: int, crystals: int,
                        export: str | Path | None, device: str, cache_dir: str | None) -> dict[str, Any]:
    trials = read_trials(folder)
    rows = table_rows(trials)
    write_csv(rows, out / "trials.csv")
    params = searched_params(trials)
    figures = {"learning_curves": plots.learning_curves(trials, out / "learning_curves.png").name}
    if params:
        figures["params"] = plots.params_vs_metric(trials, params, out / "params_vs_val_mae.png").name
    ranked = [t for t in trials if t.best_val_mae is not None]
    text_scale = plots.text_scale_curves(ranked[:top_k], out / "text_scale.png")
    if text_scale:
        figures["text_scale"] = text_scale.name
    result: dict[str, Any] = {"table": rows, "table_text": format_table(rows), "figures": figures}
    best = best_trial(trials, folder)
    ckpt = load_checkpoint(best.checkpoint)
    trained = open_model(ckpt, best.checkpoint, device, cache_dir)
    metrics = {"val_mae": float(ckpt["val_mae"]), "best_epoch": ckpt.get("best_epoch")}
    test = test_once(trained, out)  # the one test evaluation of the search
    if test:
        figures["parity"] = plots.parity(test["target"], test["prediction"], out / "parity_test.png",
                                         f"Best trial {best.trial_id}: test split (evaluated once)").name
        metrics.update({k: v for k, v in test.items() if k.startswith("test_")}, test_note=TEST_NOTE)
    result["best"] = {"trial": best.trial_id, "status": best.status.value, "params": best.params,
                      "checkpoint": str(best.checkpoint), **metrics}
    (out / "best_trial.json").write_text(json.dumps(result["best"], indent=1))
    importances, note = parameter_importance(folder, experiment)
    result["importance"] = {"values": importances, "note": note}
    if importances:
        write_csv([{"parameter": k, "importance": v} for k, v in importances.items()], out / "importance.csv")
        figures["importance"] = plots.importance_bar(importances, out / "importance.png").name
    if diagnose:
        chosen = [t for t in ranked if t.checkpoint is not None][:diagnose]
        found = {t.trial_id: diagnostics.diagnose_checkpoint(t.checkpoint, out / "diagnostics", t.trial_id, crystals,
                                                             device, cache_dir, trained.data) for t in chosen}
        figure = plots.fusion_summary(found, out / "diagnostics" / "fusion_summary.png")
        result["diagnostics"] = {"trials": found, "figure": f"diagnostics/{figure.name}" if figure else None}
    if export:
        result["export"] = str(export_best(best.checkpoint, export, metrics))
    return result
