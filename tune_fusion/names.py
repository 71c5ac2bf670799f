"""What a search and a standalone run write and how their files are named, and how a trial ended: shared by the Ray
side (trainable, searcher, console) and the Ray-free side (the experiment reader, the analysis). ``trial_outcome``
is the one decision of how a trial ended; ``OPTUNA_STATE`` and ``CONSOLE_WORDS`` say what the study and the console
make of each outcome, ``Outcome.status`` what the analysis does. Importing this module imports neither Ray nor
Optuna."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = ["BEST_VAL_MODEL", "CHECKPOINT_FILE", "CONSOLE_WORDS", "DEFAULT_STOP_WITHIN_S", "DEFAULT_STORAGE", "DRIVER_LOG",
           "FINISHED", "HISTORY_TRAIN", "LEASE_FILE", "LOST",
           "HISTORY_VAL", "LAST_CHECKPOINT", "METRIC", "MODE", "OLD_PREDICTIONS_FILE", "OPTUNA_STATE",
           "PREDICTIONS_FILE", "REPEAT_OF", "RUN_CONFIG", "RUN_FILES", "RUN_METRICS", "SPACE_FILE", "OLD_STUDY_FILE", "STUDY_FILE",
           "WARM_START_FROM", "Outcome", "Status", "StopReason", "dashboard_command", "experiment_dir", "find_study", "is_copy", "is_uri", "study_path",
           "trial_outcome"]

METRIC, MODE = "val_mae", "min"  # what every search optimises: validation MAE only
FINISHED = "trial_finished"  # 1 on a trial's last report when it ended by itself (epochs, early stop, NaN, ...)
CHECKPOINT_FILE = "checkpoint.pt"  # inside each of a trial's checkpoint_* folders
# the persisted Optuna study, in the experiment folder: Optuna's journal (an append-only log; its lock works on NFS,
# Lustre and GPFS, where SQLite's does not), and the SQLite file searches before it kept (still opened)
STUDY_FILE, OLD_STUDY_FILE = "optuna_journal.log", "optuna_study.db"
LEASE_FILE = "driver_lease.json"  # the running driver's lease on its experiment (tune_fusion.lease)
DRIVER_LOG = "driver.log"  # a quiet search's INFO lines (the library's and other libraries'), beside its study
SPACE_FILE = "search_space.json"  # the searched parameters' distributions and the target, for the analysis
DEFAULT_STORAGE = "~/ray_results"
# a standalone run's output folder, <output_dir>/<target>/ (python -m tune_fusion.train)
RUN_CONFIG = "config.json"  # the run's whole config
BEST_VAL_MODEL = "best_val_model.pt"  # the best-by-validation weights under "model"
LAST_CHECKPOINT = "last_checkpoint.pt"  # the latest state, to --resume
HISTORY_TRAIN, HISTORY_VAL = "history_train.json", "history_val.json"  # per epoch
RUN_METRICS = "metrics.json"  # best validation MAE and the one test evaluation
PREDICTIONS_FILE = "test_predictions.csv"  # jid,target,prediction of the test split, in the target's units
OLD_PREDICTIONS_FILE = "predictions_test.csv"  # the name standalone runs used before; still read
RUN_FILES = (HISTORY_TRAIN, BEST_VAL_MODEL)  # what tells a standalone run's folder from a search's
DEFAULT_STOP_WITHIN_S = 120.0  # on a stop signal: how long running trials may take to end the epoch they are in
# user attributes of study rows that ran nothing in their search: a skipped repeat (the number of the trial whose
# result it carries) and a trial copied in by a warm start (the earlier experiment)
REPEAT_OF, WARM_START_FROM = "repeat_of", "warm_start_from"
LOST = "lost"  # user attribute of a study row begun just before a hard stop that Ray never recorded (never run)


def is_copy(user_attrs: dict) -> bool:
    """Whether a study row with these user attributes ran nothing in its own search (a repeat or a warm-start copy)."""
    return REPEAT_OF in user_attrs or WARM_START_FROM in user_attrs


class StopReason(StrEnum):
    """Why a run ended before its last epoch; a run's ``stop_reason`` reads ``"<value>: <explanation>"``."""

    NAN_LOSS = "nan_loss"
    TEXT_SCALE_EXPLODED = "text_scale_exploded"
    EARLY_STOPPING = "early_stopping"
    CONFIG_ERROR = "config_error"

    def says(self, explanation: str) -> str:
        """The stop-reason text stored with a run."""
        return f"{self.value}: {explanation}"

    @classmethod
    def of(cls, text: str | None) -> StopReason | None:
        """The reason a stored ``stop_reason`` text names, or None (the run was not stopped early)."""
        head = str(text or "").split(":", 1)[0].strip()
        return next((reason for reason in cls if reason.value == head), None)


class Status(StrEnum):
    """How a trial of a search ended (or that it has not ended), as the analysis reports it."""

    COMPLETED = "completed"
    STOPPED_BY_SCHEDULER = "stopped_by_scheduler"
    DIVERGED = "diverged"
    CONFIG_ERROR = "config_error"
    ERRORED = "errored"
    RUNNING = "running"
    INTERRUPTED = "interrupted"

    @property
    def label(self) -> str:
        return self.value.replace("_", " ")


class Outcome(StrEnum):
    """How a trial ended, as its last report tells it (``trial_outcome``): the one decision the study, the console
    and the analysis all read."""

    COMPLETED = "completed"  # its epochs, or early stopping
    STOPPED_BY_SCHEDULER = "stopped_by_scheduler"  # it did not end by itself (ASHA, the time budget)
    NAN_LOSS = "nan_loss"
    TEXT_SCALE_EXPLODED = "text_scale_exploded"
    CONFIG_ERROR = "config_error"  # a combination the model cannot have: it trained nothing

    @property
    def status(self) -> Status:
        """The analysis' status: both ways of diverging read "diverged"."""
        return Status.DIVERGED if self in (Outcome.NAN_LOSS, Outcome.TEXT_SCALE_EXPLODED) else Status(self.value)


def trial_outcome(last: Mapping[str, Any]) -> Outcome:
    """How the trial whose last report is ``last`` ended: stopped by the scheduler unless the report says it ended by
    itself (``trial_finished``), then by its ``stop_reason``."""
    if not last.get(FINISHED):
        return Outcome.STOPPED_BY_SCHEDULER
    stop = StopReason.of(last.get("stop_reason"))
    return Outcome.COMPLETED if stop in (None, StopReason.EARLY_STOPPING) else Outcome(stop.value)


# Outcome -> the state the Optuna study records. Differs from the analysis on purpose: a trial whose text_scale
# exploded trained and has a best validation MAE, so the sampler learns from its value; a NaN loss has none.
OPTUNA_STATE = {Outcome.COMPLETED: "COMPLETE", Outcome.STOPPED_BY_SCHEDULER: "PRUNED", Outcome.NAN_LOSS: "FAIL",
                Outcome.TEXT_SCALE_EXPLODED: "COMPLETE", Outcome.CONFIG_ERROR: "FAIL"}
# Outcome -> the console's words for it (``tune_fusion.console``), with the trial's epochs, best validation MAE,
# its stop reason and that reason's name
CONSOLE_WORDS = {
    Outcome.COMPLETED: "completed {epochs} epoch(s); best validation MAE {best}",
    Outcome.STOPPED_BY_SCHEDULER: "stopped early by the scheduler after {epochs} epoch(s); best validation MAE {best}",
    Outcome.NAN_LOSS: "diverged at epoch {epochs} ({why}); best validation MAE {best}",
    Outcome.TEXT_SCALE_EXPLODED: "diverged at epoch {epochs} ({why}); best validation MAE {best}",
    Outcome.CONFIG_ERROR: "could not train: {reason}",
}


def is_uri(path: str) -> bool:
    return "://" in path


def experiment_dir(storage: str, name: str) -> str:
    """The experiment folder (or URI) of search ``name`` under ``storage``."""
    return f"{storage.rstrip('/')}/{name}" if is_uri(storage) else str(Path(storage).expanduser().resolve() / name)


def study_path(exp_dir: str, file: str = STUDY_FILE) -> Path:
    """The persisted Optuna study: in the experiment directory, or, for s3:// or gs:// storage, in a local folder
    named by a hash of the experiment's URI (the journal needs a file system)."""
    if not is_uri(exp_dir):
        return Path(exp_dir) / file
    key = hashlib.sha256(exp_dir.rstrip("/").encode()).hexdigest()[:16]
    return Path("~/.cache/tune-fusion/studies").expanduser() / key / file


def dashboard_command(study: Path) -> str:
    """The command that opens a study file in optuna-dashboard (the journal by path, an older SQLite file by URL)."""
    return f"optuna-dashboard sqlite:///{study}" if study.name == OLD_STUDY_FILE else f"optuna-dashboard {study}"


def find_study(exp_dir: str) -> Path | None:
    """The study file an experiment has (the journal, or an older search's SQLite file), or None."""
    return next((p for p in (study_path(exp_dir, f) for f in (STUDY_FILE, OLD_STUDY_FILE)) if p.is_file()), None)
