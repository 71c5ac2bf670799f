"""Build and run a search: Optuna (TPE) proposes, ASHA stops weak trials, Ray runs them locally or on a cluster.

Example:
    >>> from tune_fusion.space import load_spec
    >>> from tune_fusion.search import run_search
    >>> results = run_search(load_spec("search_spaces/quickstart.yaml"))
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from tune_fusion.cluster import connect
from tune_fusion.data import prepare
from tune_fusion.data.publish import publish, published_root
from tune_fusion.errors import ConfigError
from tune_fusion.names import DEFAULT_STORAGE, FINISHED, METRIC, MODE, StopReason, experiment_dir, is_uri, study_path
from tune_fusion.space import DefineByRun, SearchSpec
from tune_fusion.trainable import train_trial

log = logging.getLogger(__name__)

CHECKPOINTS_KEPT = 2  # per trial: the latest (resume) and the one before (in case the latest write was cut)
__all__ = ["DEFAULT_STORAGE", "SearchRun", "best_checkpoint_path", "run_search"]


class FusionOptunaSearch(OptunaSearch):
    """OptunaSearch that tells the study each trial's best validation MAE (not its last epoch's), and records
    scheduler-stopped trials as PRUNED and NaN-stopped or misconfigured ones as FAIL."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if error or not result or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        ot_trial = self._ot_trials[trial_id]
        reason = str(result.get("stop_reason") or "")
        ot_trial.set_user_attr("ray_trial_id", trial_id)
        if reason:
            ot_trial.set_user_attr("stop_reason", reason)
        if not result.get(FINISHED):
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
        elif StopReason.of(reason) in (StopReason.NAN_LOSS, StopReason.CONFIG_ERROR):
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
        else:  # the trial's value is its best validation MAE, as in every other selection
            return super().on_trial_complete(trial_id, {**result, METRIC: result["best_val_mae"]}, error)
        self._completed_trials.add(trial_id)


@dataclass(frozen=True)
class SearchRun:
    """Where a search lives and what it found."""

    experiment_dir: str
    results: tune.ResultGrid
    best: tune.Result | None

    @property
    def best_val_mae(self) -> float | None:
        if self.best is None:
            return None
        return float(self.best.metrics_dataframe[METRIC].min())


def check_shared(path: str, what: str) -> None:
    """On a multi-node cluster a local ``path`` must be shared storage: every node must see the same folder."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1 or is_uri(path):
        return
    folder = Path(path).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f".shared-check-{uuid.uuid4().hex}"
    marker.write_text("tune-fusion")
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe = ray.remote(num_cpus=0)(os.path.exists)
        seen = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                        .remote(str(marker)) for n in nodes])
    finally:
        marker.unlink(missing_ok=True)
    blind = [n["NodeManagerAddress"] for n, ok in zip(nodes, seen) if not ok]
    if blind:
        raise ConfigError(f"{what} {folder} is not visible from node(s) {', '.join(blind)}: on a multi-node cluster "
                          "put it on shared storage (NFS) or use an s3:// or gs:// URI")


def trial_name(trial: Any) -> str:
    """Short, stable trial names and folders (``trial_<id>``); the searched values are in each trial's params."""
    return f"trial_{trial.trial_id}"


def check_resources(spec: SearchSpec, local: bool) -> None:
    """A trial must fit on some node: on a local Ray that is an error (Ray would wait forever), on a cluster a
    warning (an autoscaler may still add such nodes)."""
    need = {"CPU": spec.resources.cpu, "GPU": spec.resources.gpu}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(all(node.get(k, 0) >= v for k, v in need.items()) for node in nodes):
        return
    have = ", ".join(f"{n.get('CPU', 0):g} CPU / {n.get('GPU', 0):g} GPU" for n in nodes)
    message = (f"each trial asks for {need['CPU']:g} CPU and {need['GPU']:g} GPU (resources in {spec.source}) but "
               f"no node has that ({have}); ask for fewer per trial, e.g. resources cpu 1, gpu 0")
    if local:
        raise ConfigError(message)
    log.warning("%s; waiting for the autoscaler to add such a node", message)


def check_experiment(exp_dir: str, resume: bool) -> None:
    """``--resume`` needs an experiment to continue; a new search must not write into an old one."""
    if resume and not tune.Tuner.can_restore(exp_dir):
        raise ConfigError(f"no search to continue at {exp_dir}; check the storage and name, or start a new search "
                          "instead of resuming")
    exists = study_path(exp_dir).exists() or (not is_uri(exp_dir) and Path(exp_dir).exists()
                                              and any(Path(exp_dir).iterdir()))
    if not resume and exists:
        raise ConfigError(f"experiment {exp_dir} already exists: resume it to continue, or give the new search "
                          "another name")


def build_tuner(spec: SearchSpec, cache_name: str, published: str | None, storage: str, name: str, resume: bool,
                ) -> tune.Tuner:
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, cache_name=cache_name, published=published, base=spec.base.to_dict()),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    exp_dir = experiment_dir(storage, name)
    if resume:
        return tune.Tuner.restore(exp_dir, trainable, resume_unfinished=True, resume_errored=True)
    study = study_path(exp_dir)
    study.parent.mkdir(parents=True, exist_ok=True)
    if spec.searcher.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=spec.searcher.seed)
    else:
        sampler = optuna.samplers.RandomSampler(seed=spec.searcher.seed)
    searcher = FusionOptunaSearch(
        space=DefineByRun(spec.params, spec.base), metric=METRIC, mode=MODE, sampler=sampler,
        points_to_evaluate=list(spec.searcher.points_to_evaluate) or None,
        storage=optuna.storages.RDBStorage(f"sqlite:///{study}"), study_name=name,
    )
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
        run_config=tune.RunConfig(
            name=name, storage_path=storage,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            failure_config=tune.FailureConfig(max_failures=2),
            verbose=1,
        ),
    )


def run_search(spec: SearchSpec, address: str | None = None, storage: str = DEFAULT_STORAGE, name: str | None = None,
               resume: bool = False) -> SearchRun:
    """Prepare the data once, then run (or ``resume``) the search; returns the results and the best trial.

    ``address`` None starts a fresh local Ray; ``"auto"`` or ``HOST:PORT`` joins a running cluster, where
    ``storage`` must be shared storage (checked) and the prepared cache is published there for every node.
    """
    name = name or spec.name
    storage = storage if is_uri(storage) else str(Path(storage).expanduser().resolve())
    check_experiment(experiment_dir(storage, name), resume)
    started = connect(address)
    try:
        check_resources(spec, local=address is None)
        check_shared(storage, "storage")
        data, built = prepare(spec.base.data)
        log.info("prepared data %s (%s)", data.path, "built now" if built else "already prepared")
        published = None
        if address is not None:  # on a cluster: nodes that lack the cache (now or when they join) fetch it from here
            published = published_root(storage)
            publish(data.path, published)
        tuner = build_tuner(spec, data.path.name, published, storage, name, resume)
        results = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    finished = [r for r in results if r.metrics and METRIC in (r.metrics_dataframe if r.metrics_dataframe is not None
                                                               else {})]
    best = min(finished, key=lambda r: float(r.metrics_dataframe[METRIC].min()), default=None)
    return SearchRun(experiment_dir(storage, name), results, best)


def best_checkpoint_path(result: tune.Result) -> str | None:
    """The trial's latest checkpoint (it holds the trial's best-by-validation weights under ``best_model``)."""
    return result.checkpoint.path if result.checkpoint else None
