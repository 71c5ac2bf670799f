"""The console of a quiet search: one line when a trial starts and one when it ends, instead of Ray's status tables.

Example:
    >>> from tune_fusion.console import TrialLines
    >>> tune.RunConfig(callbacks=[TrialLines("formation_energy_peratom")], verbose=0)
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import optuna
from ray import tune

from tune_fusion.names import CONSOLE_WORDS, trial_outcome
from tune_fusion.units import with_unit

__all__ = ["TrialLines", "format_value", "log_to_file", "quiet_console", "say"]

_started = time.monotonic()  # when this process's search started; the console's times count from it


def say(text: str) -> None:
    """One console line, stamped with the time since the search started (``[  m:ss]``)."""
    minutes, seconds = divmod(int(time.monotonic() - _started), 60)
    print(f"[{minutes:3d}:{seconds:02d}] {text}", flush=True)


class TrialLines(tune.Callback):
    """The console of a quiet search: one line when a trial starts (its searched values) and one when it ends (how,
    after how many epochs, its best validation MAE with the unit: ``names.CONSOLE_WORDS``)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def setup(self, **info: Any) -> None:
        # the clock starts with the search in this process: a resumed search gets this object back from the
        # experiment, so nothing of the earlier process's clock may live on it
        global _started
        _started = time.monotonic()

    def _line(self, text: str) -> None:
        say(text)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        job = trial.config.get("job")
        values = (f"retrains trial {job['confirms']} with random_seed={job['config']['random_seed']}" if job else
                  " ".join(f"{k}={format_value(v)}" for k, v in trial.config.items()))
        self._line(f"trial {trial.trial_id} started   {values}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        reason = str(result.get("stop_reason") or "")
        how = CONSOLE_WORDS[trial_outcome(result)].format(
            epochs=result.get("epoch", 0), best=with_unit(result.get("best_val_mae"), self.target), reason=reason,
            why=reason.split(":", 1)[0])
        self._line(f"trial {trial.trial_id} {how}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(f"trial {trial.trial_id} errored (Ray retries it from its checkpoint; see its error.txt)")


def format_value(value: Any) -> str:
    """Searched values as the YAML writes them: true/false, 4 significant digits."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def quiet_console(verbose: bool) -> None:
    """Without ``verbose``: Ray Tune's old console (its new one prints a configuration box and hints even when
    silent) and no Optuna notices; the trial lines of ``TrialLines`` are the console."""
    if not verbose:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        optuna.logging.set_verbosity(optuna.logging.WARNING)


_LOG_FILE_TAG = "_tune_fusion_log_file"


def log_to_file(path: Path) -> Path:
    """Log lines from INFO up (the library's, and other libraries' such as sentence-transformers' or matplotlib's)
    appended to ``path``, so a quiet console keeps only warnings (``cli.console_warnings_only``); replaces the file
    an earlier search of this process logged to."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _LOG_FILE_TAG, False)]:
        root.removeHandler(handler)
        handler.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    setattr(handler, _LOG_FILE_TAG, True)
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return path
