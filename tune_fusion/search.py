"""Build and run a search: Optuna (TPE) proposes, ASHA stops weak trials, Ray runs them locally or on a cluster.

Example:
    >>> from tune_fusion.space import load_spec
    >>> from tune_fusion.search import run_search
    >>> results = run_search(load_spec("search_spaces/quickstart.yaml"))
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter

from tune_fusion.cluster import check_resources, check_shared, connect, parallel_map
from tune_fusion.console import TrialLines, log_to_file, quiet_console, say
from tune_fusion.data import prepare
from tune_fusion.data.publish import publish, published_root
from tune_fusion.errors import ConfigError, DataError, DiskFull, disk_full, disk_full_cause, first_line, is_disk_full
from tune_fusion.experiment import open_study
from tune_fusion.interrupt import StopWhenAsked, stop_signals
from tune_fusion.lease import hold, refuse_if_held
from tune_fusion.names import (
    DEFAULT_STOP_WITHIN_S,
    DEFAULT_STORAGE,
    DRIVER_LOG,
    LEASE_FILE,
    METRIC,
    MODE,
    SPACE_FILE,
    experiment_dir,
    find_study,
    is_uri,
    study_path,
)
from tune_fusion.searcher import FusionOptunaSearch, journal, make_sampler, name_objective
from tune_fusion.space import DefineByRun, SearchSpec, space_summary
from tune_fusion.storage import whole_files
from tune_fusion.trainable import train_trial
from tune_fusion.warm_start import feed_earlier_trials

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINTS_KEPT", "DEFAULT_STORAGE", "SearchRun", "best_checkpoint_path", "build_tuner", "check_experiment",
           "make_run_config", "make_trainable", "mean_predictor_mae", "publish_on_cluster", "run_search", "trial_name"]

CHECKPOINTS_KEPT = 2  # per trial: the latest (resume) and the one before (in case the latest write was cut)
# how often Ray writes its snapshot of the search (its own default is 10 s or more): a search stopped hard resumes from
# it, and a trial begun after it is lost (searcher.FusionOptunaSearch.restore)
SNAPSHOT_EVERY_S = "1"


@dataclass(frozen=True)
class SearchRun:
    """Where a search lives and what it found; ``mean_predictor_mae``: the validation MAE of always predicting the
    training mean, the floor any model should beat (same crystals, same units)."""

    experiment_dir: str
    results: tune.ResultGrid
    best: tune.Result | None
    target: str
    mean_predictor_mae: float
    stopped_by: str | None = None  # the signal that stopped the search before its end (it is saved: --resume)
    prepare_s: float = 0.0  # the data preparation (or opening the prepared cache), before the search
    search_s: float = 0.0  # the search itself, from its start to its end (the console's [m:ss] stamps)
    log_file: str | None = None  # a quiet search's log (``names.DRIVER_LOG``)
    disk_full: str | None = None  # why a full disk stopped the search (where, and the fix: free space, --resume)

    @property
    def best_val_mae(self) -> float | None:
        if self.best is None:
            return None
        return float(self.best.metrics_dataframe[METRIC].min())


def mean_predictor_mae(data: Any) -> float:
    """Validation MAE of predicting the training split's mean for every crystal (target units)."""
    train, val = data.targets[data.split("train")], data.targets[data.split("val")]
    return float((val - train.mean()).abs().mean())


def trial_name(trial: Any) -> str:
    """Short, stable trial names and folders (``trial_<id>``); the searched values are in each trial's params."""
    return f"trial_{trial.trial_id}"


def check_experiment(exp_dir: str, resume: bool | str) -> bool:
    """``--resume`` needs an experiment to continue; a new search must not write into an old one. ``resume="auto"``
    (a requeued job's next run) continues the experiment when there is one to continue and starts it otherwise,
    over what a run stopped before its first trial left. Returns whether the search resumes."""
    if resume == "auto":
        if tune.Tuner.can_restore(exp_dir):
            return True
        leftovers = not is_uri(exp_dir) and any(Path(exp_dir).glob("trial_*"))
        if not leftovers:
            return False
        resume = True  # trials but no state to restore them from: the error below says so
    if resume and not tune.Tuner.can_restore(exp_dir):
        raise ConfigError(f"no search to continue at {exp_dir}; check the storage and name, or start a new search "
                          "instead of resuming")
    exists = find_study(exp_dir) is not None or (not is_uri(exp_dir) and Path(exp_dir).exists()
                                              and any(p.name not in (LEASE_FILE, DRIVER_LOG)
                                                      for p in Path(exp_dir).iterdir()))
    if not resume and exists:
        raise ConfigError(f"experiment {exp_dir} already exists: continue it with --resume, or give the new search "
                          "another name with --name NAME")
    return bool(resume)


def publish_on_cluster(data: Any, storage: str, address: str | None) -> str | None:
    """On a cluster (``address`` given), publish the prepared cache under ``storage`` so that nodes that lack it (now
    or when they join) fetch it; returns where, or None for a local Ray."""
    if address is None:
        return None
    published = published_root(storage)
    publish(data.path, published)
    return published


def make_trainable(cache_name: str, published: str | None, base: dict[str, Any], resources: dict[str, float],
                   run_id: str | None = None) -> Any:
    """``train_trial`` with the cache it reads, the resources each trial asks for, and the driver run whose stop
    request it obeys."""
    return tune.with_resources(tune.with_parameters(train_trial, cache_name=cache_name, published=published,
                                                    base=base, run_id=run_id), resources)


class _OneLineWhenFull(logging.Filter):
    """Ray Tune's failed copy of the experiment's state to a full disk: one line, not a traceback each time (the
    search goes on, or stops for the full disk, and copies the state again at the next snapshot)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and is_disk_full(record.exc_info[1]):
            record.msg, record.args = f"{record.getMessage().rstrip(': ')}: {record.exc_info[1]}", ()
            record.exc_info = record.exc_text = None
        return True


_ONE_LINE_WHEN_FULL = _OneLineWhenFull()  # one object: added once however many searches a process runs


class _NoSilentRestart(logging.Filter):
    """Ray Tune, when it cannot read the saved state of the search it resumes, logs it and starts the experiment
    again with no trials; the resumed searcher, which counts the earlier trials, then proposes none, and the driver
    would wait for ever. The resume stops instead, in one line, with the experiment left as it was."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() == "Failed to restore the run state." and record.exc_info:
            raise DataError(f"cannot resume: Ray could not read its saved state of the search "
                            f"({type(record.exc_info[1]).__name__}: {first_line(record.exc_info[1])}); the trials, "
                            "their checkpoints and the study are as they were: start a new search with --name, "
                            "and --warm-start from this one to reuse its trials")
        return True


_NO_SILENT_RESTART = _NoSilentRestart()


def make_run_config(name: str, storage: str, verbose: bool, target: str) -> tune.RunConfig:
    """Where trials write (each file whole or not at all: ``tune_fusion.storage``), the checkpoints kept, retries of
    failed trials, and the console (Ray's or the quiet ``TrialLines``)."""
    return tune.RunConfig(
        name=name, storage_path=storage, storage_filesystem=whole_files(storage),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
        failure_config=tune.FailureConfig(max_failures=2),
        verbose=1 if verbose else 0,
        callbacks=[StopWhenAsked()] + ([] if verbose else [TrialLines(target)]),
    )


def build_tuner(spec: SearchSpec, cache_name: str, published: str | None, storage: str, name: str, resume: bool,
                verbose: bool = True, warm_start: tuple[str, ...] = (), run_id: str | None = None) -> tune.Tuner:
    """The Tuner of search ``name`` under ``storage``: the repeat-skipping searcher on the persisted study (warm-started
    from ``warm_start``), ASHA or FIFO, the trainable on the prepared cache ``cache_name``; or, with ``resume``, the
    interrupted search restored from storage."""
    trainable = make_trainable(cache_name, published, spec.base.to_dict(),
                               {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}, run_id)
    exp_dir = experiment_dir(storage, name)
    quiet_console(verbose)
    logging.getLogger("ray.tune.execution.experiment_state").addFilter(_ONE_LINE_WHEN_FULL)
    logging.getLogger("ray.tune.execution.tune_controller").addFilter(_NO_SILENT_RESTART)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", SNAPSHOT_EVERY_S)  # read by Ray Tune when the search starts
    if resume:
        study, _ = open_study(Path(exp_dir), exp_dir)
        if study is not None:  # a study made before its objective was named gets the name now
            name_objective(study, spec.base.data.target)
        return tune.Tuner.restore(exp_dir, trainable, resume_unfinished=True, resume_errored=True,
                                  storage_filesystem=whole_files(storage))
    study = study_path(exp_dir)
    study.parent.mkdir(parents=True, exist_ok=True)
    storage_of_study = journal(study)
    for source in warm_start:
        feed_earlier_trials(source, spec, storage_of_study, name)
    searcher = FusionOptunaSearch(
        space=DefineByRun(spec.params, spec.base), metric=METRIC, mode=MODE, sampler=make_sampler(spec),
        points_to_evaluate=list(spec.searcher.points_to_evaluate) or None, storage=storage_of_study, study_name=name,
    )
    searcher.name_metric(spec.base.data.target)
    if spec.scheduler.type == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=spec.scheduler.max_t,
                                  grace_period=spec.scheduler.grace_period,
                                  reduction_factor=spec.scheduler.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=ConcurrencyLimiter(
            searcher, max_concurrent=spec.max_concurrent), scheduler=scheduler, num_samples=spec.num_samples,
            time_budget_s=spec.time_budget_s, trial_name_creator=trial_name, trial_dirname_creator=trial_name,
            reuse_actors=True),  # a trial starts in a warm process: no re-import of torch, DGL and the library
        run_config=make_run_config(name, storage, verbose, spec.base.data.target),
    )


def run_search(spec: SearchSpec, address: str | None = None, storage: str = DEFAULT_STORAGE, name: str | None = None,
               resume: bool | str = False, verbose: bool = True, warm_start: tuple[str, ...] = (),
               stop_within_s: float = DEFAULT_STOP_WITHIN_S) -> SearchRun:
    """Prepare the data once, then run (or ``resume``) the search; returns the results and the best trial.

    ``address`` None starts a fresh local Ray; ``"auto"`` or ``HOST:PORT`` joins a running cluster, where
    ``storage`` must be shared storage (checked) and the prepared cache is published there for every node.
    ``verbose`` False prints one line per trial event instead of Ray's status tables and warnings.
    ``warm_start``: folders of earlier searches whose finished trials the new study starts from.
    ``resume="auto"``: continue the experiment if there is one, else start it. SIGUSR1 or SIGTERM stop the search
    cleanly (``tune_fusion.interrupt``; running trials get ``stop_within_s`` to end their epoch): the result says
    ``stopped_by``, and a resume continues it; so does a storage that fills up (``disk_full`` says where). While it
    runs the driver holds the experiment's lease: a second driver of the same experiment is refused
    (``tune_fusion.lease``).
    """
    name = name or spec.name
    storage = storage if is_uri(storage) else str(Path(storage).expanduser().resolve())
    exp_dir = experiment_dir(storage, name)
    gone = refuse_if_held(exp_dir)  # one driver per experiment (tune_fusion.lease)
    resume = check_experiment(exp_dir, resume)
    if gone is not None:
        say(f"the driver that ran this experiment is gone ({gone.describe()}): this one takes it over")
    for source in warm_start:  # a bad source is an error before Ray starts
        feed_earlier_trials(source, spec, optuna.storages.InMemoryStorage(), name)
    with hold(exp_dir), stop_signals(stop_within_s) as stop:
        started = connect(address, verbose=verbose)
        try:
            data, results, times = _search(spec, address, storage, name, resume, verbose, warm_start, stop.run_id)
        except Exception as err:  # the driver's own write to storage (the study, the space) found the disk full
            if (full := disk_full_cause(err)) is None or isinstance(err, DiskFull):
                raise
            raise DiskFull(disk_full(full, full.filename or exp_dir, "while the driver wrote to")) from None
        finally:
            if started:
                ray.shutdown()
    finished = [r for r in results if r.metrics and METRIC in (r.metrics_dataframe if r.metrics_dataframe is not None
                                                               else {})]
    best = min(finished, key=lambda r: float(r.metrics_dataframe[METRIC].min()), default=None)
    return SearchRun(exp_dir, results, best, spec.base.data.target, mean_predictor_mae(data), stop.signal,
                     disk_full=stop.disk_full, **times)


def _search(spec: SearchSpec, address: str | None, storage: str, name: str, resume: bool, verbose: bool,
            warm_start: tuple[str, ...], run_id: str) -> tuple[Any, tune.ResultGrid, dict[str, Any]]:
    """On a connected Ray: the checks, the data, the Tuner, its run; the times of preparation and search, and the
    log file of a quiet search (started once the checks pass, so refused input writes nothing)."""
    exp_dir = experiment_dir(storage, name)
    check_resources(spec, local=address is None)
    check_shared(storage, "storage")
    log_file = None if verbose else str(log_to_file(study_path(exp_dir).with_name(DRIVER_LOG)))
    start = time.monotonic()
    data, built = prepare(spec.base.data, parallel_map)  # Ray tasks: every node of a cluster helps
    log.info("prepared data %s (%s)", data.path, "built now" if built else "already prepared")
    published = publish_on_cluster(data, storage, address)
    prepared = time.monotonic()
    if not is_uri(exp_dir):  # what the analysis needs to know of the space (log-scale axes, units)
        Path(exp_dir).mkdir(parents=True, exist_ok=True)
        (Path(exp_dir) / SPACE_FILE).write_text(json.dumps(space_summary(spec), indent=1))
    tuner = build_tuner(spec, data.path.name, published, storage, name, resume, verbose, warm_start, run_id)
    results = tuner.fit()
    return data, results, {"prepare_s": prepared - start, "search_s": time.monotonic() - prepared,
                           "log_file": log_file}


def best_checkpoint_path(result: tune.Result) -> str | None:
    """The trial's latest checkpoint (it holds the trial's best-by-validation weights under ``best_model``)."""
    return result.checkpoint.path if result.checkpoint else None
