"""Reading a search's experiment folder: its trials (``trial_*/result.json``, ``params.json``, Ray's state file) with
how each ended, the best one by validation MAE, the searched space (``search_space.json``) and the confirmation runs
beside it. Imports neither Ray, torch nor matplotlib: the search's console, confirmation runs and the analysis all
read experiments through it, also while a search is still running.

Example:
    >>> from tune_fusion.experiment import best_trial, read_trials, status_counts
    >>> trials = read_trials(Path("~/ray_results/quickstart").expanduser())
    >>> status_counts(trials), best_trial(trials, folder).checkpoint
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tune_fusion.errors import DataError, first_line, reading
from tune_fusion.names import (
    CHECKPOINT_FILE,
    FINISHED,
    METRIC,
    OLD_STUDY_FILE,
    RUN_FILES,
    SPACE_FILE,
    Status,
    find_study,
    is_uri,
    trial_outcome,
)
from tune_fusion.results import Confirmation, FusedVsGraph

__all__ = ["CONFIRM_SUFFIX", "STALE_AFTER_S", "TrialInfo", "best_of_each_kind", "best_trial",
           "is_graph_only", "locate_experiment", "open_study", "read_confirmation", "read_space", "read_trials", "run_folder",
           "searched_params", "status_counts", "study_storage", "table_rows", "to_confirm", "usable_trials"]

STALE_AFTER_S = 900.0  # a search whose files have not changed for this long is over (or its driver died)


@dataclass
class TrialInfo:
    """One trial as read from its folder; ``history`` holds its reported rows, one per epoch."""

    trial_id: str
    path: Path
    params: dict[str, Any]
    history: list[dict[str, Any]]
    status: Status
    reason: str
    found_checkpoint: Path | None  # the newest checkpoint when the trial was read

    @property
    def checkpoint(self) -> Path | None:
        """The trial's newest checkpoint: the one found when it was read, or, where a running trial has since
        replaced it (a trial keeps its last two), the newest one there now."""
        if self.found_checkpoint is None or self.found_checkpoint.is_file():
            return self.found_checkpoint
        newer = sorted(self.path.glob(f"checkpoint_*/{CHECKPOINT_FILE}"))
        return newer[-1] if newer else self.found_checkpoint  # none there now: loading it says so

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
    if path.is_file():  # bytes that are not UTF-8 or not JSON (a corrupt file) are skipped like a half-written line
        for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # the line a running trial is writing
                continue
            if isinstance(row, dict):
                rows[row.get("epoch")] = row
    return list(rows.values())


def _read_params(path: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        params = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or being written
        params = None
    if isinstance(params, dict):
        return params
    config = rows[-1].get("config") if rows else None
    return dict(config) if isinstance(config, dict) else {}


def _ray_states(folder: Path) -> dict[str, str]:
    """Ray's own trial statuses from the newest experiment_state file ({} when absent or unreadable)."""
    files = sorted(folder.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    try:
        entries = json.loads(files[-1].read_text()).get("trial_data", []) if files else []
    except (OSError, ValueError, AttributeError):
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
        return trial_outcome(last).status, reason
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


def run_folder(location: str | Path) -> Path | None:
    """The folder, when it is a standalone training run's output (``python -m tune_fusion.train``), else None."""
    if is_uri(str(location)):
        return None
    folder = Path(location).expanduser().resolve()
    return folder if all((folder / name).is_file() for name in RUN_FILES) else None


def study_storage(path: Path) -> Any:
    """Optuna's storage of the study file ``path``: the journal (``names.STUDY_FILE``, what searches write), or the
    SQLite file of a search made before (``names.OLD_STUDY_FILE``). Optuna is imported only here."""
    import optuna

    if path.name == OLD_STUDY_FILE:
        return optuna.storages.RDBStorage(f"sqlite:///{path}")
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def open_study(folder: Path, uri: str | None = None) -> tuple[Any, Path | None]:
    """The experiment's persisted Optuna study (the study named after the folder, else the file's first) and its
    file: in ``folder``, or, for an experiment given as the ``s3://``/``gs://`` ``uri``, where the search kept it
    (``names.study_path``). (None, None) when there is no study file, (None, file) when it holds no study. Optuna
    is imported only here, when asked."""
    path = find_study(str(folder)) or (find_study(uri.rstrip("/")) if uri and is_uri(uri) else None)
    if path is None:
        return None, None
    import optuna

    try:
        storage = study_storage(path)
        names = [s.study_name for s in storage.get_all_studies()]
        if not names:
            return None, path
        return optuna.load_study(study_name=folder.name if folder.name in names else names[0], storage=storage), path
    except Exception as err:  # Optuna raises many types on a cut or corrupt journal or database
        raise DataError(f"Optuna study {path} cannot be read ({type(err).__name__}: {first_line(err)}); it is "
                        "corrupt: restore it from a backup (the trials' own results are intact: the analysis still "
                        "reads them)") from None


def read_space(folder: Path) -> dict[str, Any]:
    """The search's ``search_space.json`` (target and distributions), or {} for searches that did not write one;
    a DataError when the file is there but is not one."""
    path = folder / SPACE_FILE
    if not path.is_file():
        return {}
    with reading(path, "search summary", "delete it (it only sets the plots' axes) or copy it from a backup"):
        space = json.loads(path.read_bytes().decode("utf-8"))
        if not isinstance(space, dict) or not isinstance(space.get("params", {}), dict):
            raise ValueError("not a mapping with a 'params' mapping")
    return space


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


CONFIRM_SUFFIX = "-confirm"  # the confirmation experiment of search X is X-confirm beside it


def read_confirmation(folder: Path) -> Confirmation | None:
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
    fused = next((r for r in rows if not r["graph_only"]), None)
    graph = next((r for r in rows if r["graph_only"]), None)
    compared = None
    if fused and graph:
        difference = graph["mean_val_mae"] - fused["mean_val_mae"]
        spread = max(fused["std_val_mae"], graph["std_val_mae"])
        compared = FusedVsGraph(fused["configuration"], graph["configuration"], difference, spread,
                                abs(difference) > spread)
    return Confirmation(folder=str(confirm), rows=rows, best=rows[0]["configuration"], fused_vs_graph=compared)
