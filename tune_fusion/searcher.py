"""The searcher: Optuna's sampler (TPE or random) behind Ray Tune, skipping proposals that repeat a finished trial.

Example:
    >>> from tune_fusion.searcher import FusionOptunaSearch, make_sampler
    >>> searcher = FusionOptunaSearch(space=..., metric="val_mae", mode="min", sampler=make_sampler(spec))
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from ray.tune.search.optuna import OptunaSearch

from tune_fusion.interrupt import stopping
from tune_fusion.names import LOST, METRIC, OPTUNA_STATE, REPEAT_OF, is_copy, trial_outcome
from tune_fusion.space import SearchSpec
from tune_fusion.units import unit

__all__ = ["REPEAT_TRIES", "FusionOptunaSearch", "WholeAppendsJournal", "ask_new", "journal", "make_sampler",
           "metric_name", "name_objective", "tell_if_repeat"]


def metric_name(target: str) -> str:
    """The study's objective as optuna-dashboard shows it: ``val_mae (eV/atom)``."""
    return f"{METRIC} ({unit(target)})"


def name_objective(study: optuna.Study, target: str) -> None:
    """Name ``study``'s objective ``metric_name(target)`` (Optuna calls the setter experimental: no warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([metric_name(target)])

REPEAT_TRIES = 8  # proposals that repeat a finished configuration, skipped before one is run anyway


def tell_if_repeat(study: optuna.Study, trial: optuna.Trial) -> bool:
    """If a trial this search ran to its end or stopped had exactly ``trial``'s parameters, give ``trial`` that
    trial's result (per-epoch values, value, state) and return True: training the same configuration again with the
    same seed would spend epochs to learn nothing. Optuna's TPE repeats configurations freely in discrete spaces (and
    a warm-started one keeps proposing the earlier search's favourite), so the search asks again instead. Trials
    copied in by a warm start are evidence from another search, not results of this one: a configuration they hold
    is trained here once. Points the user listed (``points_to_evaluate``) always run."""
    trials = study.get_trials(deepcopy=False)
    if "fixed_params" in trials[trial.number].system_attrs:
        return False
    complete, pruned = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED
    earlier = next((t for t in reversed(trials) if t.state in (complete, pruned) and t.params == trial.params
                    and not is_copy(t.user_attrs)), None)
    if earlier is None:
        return False
    for step, value in earlier.intermediate_values.items():
        trial.report(value, step)
    trial.set_user_attr(REPEAT_OF, earlier.number)
    study.tell(trial, earlier.value if earlier.state == complete else None, state=earlier.state)
    return True


def ask_new(study: optuna.Study, ask: Callable[[], optuna.Trial]) -> optuna.Trial:
    """``ask()`` (a new trial of ``study`` with its parameters drawn) until it gives a configuration no finished
    trial had, at most REPEAT_TRIES + 1 times; the last one runs even if it repeats (the space may be exhausted)."""
    for _ in range(REPEAT_TRIES):
        trial = ask()
        if not tell_if_repeat(study, trial):
            return trial
    return ask()


class FusionOptunaSearch(OptunaSearch):
    """OptunaSearch that skips proposals repeating a finished configuration (``ask_new``), tells the study each
    trial's best validation MAE (not its last epoch's), and records each trial in the state its outcome names
    (``names.OPTUNA_STATE``: scheduler-stopped trials PRUNED, NaN-stopped or misconfigured ones FAIL)."""

    def name_metric(self, target: str) -> None:
        """Name the study's objective with its unit (``metric_name``), for optuna-dashboard and Optuna's plots."""
        name_objective(self._ot_study, target)

    def suggest(self, trial_id: str) -> dict | None:
        if stopping():  # the driver is stopping: no new trial (Tune asks again after the resume)
            return None
        configs: list[dict | None] = []

        def ask() -> optuna.Trial:
            if configs:  # the trial asked before was a repeat, told and done: ask a new one for this Ray trial
                del self._ot_trials[trial_id]
            configs.append(super(FusionOptunaSearch, self).suggest(trial_id))
            return self._ot_trials[trial_id]

        ask_new(self._ot_study, ask)
        return configs[-1]

    # A resumed search gets this searcher back from Ray's snapshot, a few seconds older than the study (saved at each
    # tell): a trial the snapshot holds open may be finished in the study already, with its result. Optuna refuses
    # to update it (UpdateFinishedTrialError), and there is nothing to add.
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._completed_trials.add(trial_id)

    # A search stopped hard (scancel, preemption, a killed driver) resumes from Ray's last snapshot of its trials and
    # of this searcher: a trial begun after that snapshot is open in the study (saved at each ask) but known to no
    # one, and would stay "running" there for ever. It is closed as FAIL, marked LOST. What it trained since is lost
    # with it (Ray snapshots every second, tune_fusion.search, but a tiny model's trial can start and tell an epoch
    # to the study inside that second: its intermediate values stay in the study, its result files never reached
    # storage).
    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        known = {trial.number for trial in self._ot_trials.values()}
        running = self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for lost in (t for t in running if t.number not in known):
            self._ot_study._storage.set_trial_user_attr(lost._trial_id, LOST, "begun after Ray's last snapshot of "
                                                        "the search, which was stopped hard; not continued")
            self._ot_study.tell(lost.number, state=optuna.trial.TrialState.FAIL)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        try:
            self._complete(trial_id, result, error)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._completed_trials.add(trial_id)

    def _complete(self, trial_id: str, result: dict | None, error: bool) -> None:
        if error or not result or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        ot_trial = self._ot_trials[trial_id]
        with warnings.catch_warnings():  # Tune hands a trial's last result only to on_trial_complete: report it too
            warnings.simplefilter("ignore")  # (Optuna ignores, with a warning, a step reported twice)
            ot_trial.report(result[METRIC], result["training_iteration"])
        reason = str(result.get("stop_reason") or "")
        ot_trial.set_user_attr("ray_trial_id", trial_id)
        if reason:
            ot_trial.set_user_attr("stop_reason", reason)
        state = optuna.trial.TrialState[OPTUNA_STATE[trial_outcome(result)]]
        if state == optuna.trial.TrialState.COMPLETE:  # its value is its best validation MAE, as in every selection
            return super().on_trial_complete(trial_id, {**result, METRIC: result["best_val_mae"]}, error)
        self._ot_study.tell(ot_trial, state=state)
        self._completed_trials.add(trial_id)


class WholeAppendsJournal(optuna.storages.journal.JournalFileBackend):
    """Optuna's journal file, whose appends are whole or not at all: an append the disk refuses half way (full) is
    cut back off, since a line cut short would make every later read of the study fail. (The experiment's lease
    keeps one driver, the only writer, per study.)"""

    def append_logs(self, logs: list[dict]) -> None:
        size = os.path.getsize(self._file_path)
        try:
            super().append_logs(logs)
        except OSError as err:
            try:
                os.truncate(self._file_path, size)
            except OSError:
                pass
            raise OSError(err.errno, err.strerror, self._file_path) from err  # naming the file


def journal(path: Path) -> optuna.storages.JournalStorage:
    """The study journal a search writes (``WholeAppendsJournal``)."""
    return optuna.storages.JournalStorage(WholeAppendsJournal(str(path)))


def make_sampler(spec: SearchSpec) -> optuna.samplers.BaseSampler:
    """Optuna's sampler for the search: TPE with the start-up trials scaled to the budget, multivariate and grouped
    over the conditional parameters, constant liar for concurrent trials (``searcher:`` settings); or random."""
    settings = spec.searcher
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=settings.seed)
    with warnings.catch_warnings():  # multivariate, group and constant_liar are marked experimental by Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=settings.startup_trials(spec.num_samples),
                                          multivariate=settings.multivariate, group=settings.multivariate and settings.group,
                                          constant_liar=settings.constant_liar)
