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
import uuid
import warnings
from collections.abc import Callable
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
from tune_fusion.names import (
    DEFAULT_STORAGE,
    FINISHED,
    METRIC,
    MODE,
    REPEAT_OF,
    SPACE_FILE,
    WARM_START_FROM,
    StopReason,
    experiment_dir,
    is_copy,
    is_uri,
    study_path,
)
from tune_fusion.space import DefineByRun, SearchSpec, space_summary
from tune_fusion.trainable import train_trial
from tune_fusion.units import with_unit

log = logging.getLogger(__name__)

CHECKPOINTS_KEPT = 2  # per trial: the latest (resume) and the one before (in case the latest write was cut)
__all__ = ["DEFAULT_STORAGE", "SearchRun", "best_checkpoint_path", "run_search"]


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
    trial's best validation MAE (not its last epoch's), and records scheduler-stopped trials as PRUNED and
    NaN-stopped or misconfigured ones as FAIL."""

    def suggest(self, trial_id: str) -> dict | None:
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
        if not result.get(FINISHED):
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
        elif StopReason.of(reason) in (StopReason.NAN_LOSS, StopReason.CONFIG_ERROR):
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
        else:  # the trial's value is its best validation MAE, as in every other selection
            return super().on_trial_complete(trial_id, {**result, METRIC: result["best_val_mae"]}, error)
        self._completed_trials.add(trial_id)


@dataclass(frozen=True)
class SearchRun:
    """Where a search lives and what it found; ``mean_predictor_mae``: the validation MAE of always predicting the
    training mean, the floor any model should beat (same crystals, same units)."""

    experiment_dir: str
    results: tune.ResultGrid
    best: tune.Result | None
    target: str
    mean_predictor_mae: float

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


class TrialLines(tune.Callback):
    """The console of a quiet search: one line when a trial starts (its searched values) and one when it ends (how,
    after how many epochs, its best validation MAE with the unit)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.start = time.monotonic()

    def _line(self, text: str) -> None:
        minutes, seconds = divmod(int(time.monotonic() - self.start), 60)
        print(f"[{minutes:3d}:{seconds:02d}] {text}", flush=True)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        job = trial.config.get("job")
        values = (f"retrains trial {job['confirms']} with random_seed={job['config']['random_seed']}" if job else
                  " ".join(f"{k}={format_value(v)}" for k, v in trial.config.items()))
        self._line(f"trial {trial.trial_id} started   {values}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        epochs = result.get("epoch", 0)
        best = with_unit(result.get("best_val_mae"), self.target)
        if not result.get(FINISHED):
            how = f"stopped early by the scheduler after {epochs} epoch(s)"
        elif StopReason.of(result.get("stop_reason")) in (StopReason.NAN_LOSS, StopReason.TEXT_SCALE_EXPLODED):
            how = f"diverged at epoch {epochs} ({str(result['stop_reason']).split(':', 1)[0]})"
        elif StopReason.of(result.get("stop_reason")) is StopReason.CONFIG_ERROR:
            self._line(f"trial {trial.trial_id} could not train: {result['stop_reason']}")
            return
        else:
            how = f"completed {epochs} epoch(s)"
        self._line(f"trial {trial.trial_id} {how}; best validation MAE {best}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(f"trial {trial.trial_id} errored (Ray retries it from its checkpoint; see its error.txt)")


def format_value(value: Any) -> str:
    """Searched values as the YAML writes them: true/false, 4 significant digits."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def mean_predictor_mae(data: Any) -> float:
    """Validation MAE of predicting the training split's mean for every crystal (target units)."""
    train, val = data.targets[data.split("train")], data.targets[data.split("val")]
    return float((val - train.mean()).abs().mean())


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


def quiet_console(verbose: bool) -> None:
    """Without ``verbose``: Ray Tune's old console (its new one prints a configuration box and hints even when
    silent) and no Optuna notices; the trial lines of ``TrialLines`` are the console."""
    if not verbose:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        optuna.logging.set_verbosity(optuna.logging.WARNING)


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


def feed_earlier_trials(experiment: str | Path, spec: SearchSpec, storage: optuna.storages.BaseStorage,
                        name: str) -> int:
    """Warm start: copy the finished trials (completed, and stopped early with their per-epoch values) of an earlier
    search's study into the new study ``name``, checked against the new space; returns how many were copied."""
    earlier = Path(experiment).expanduser().resolve()
    path = study_path(str(earlier))
    if not path.is_file():
        raise ConfigError(f"warm start from {earlier}: no Optuna study ({path.name}) there; give the folder of an "
                          "earlier search that run_search.py printed as 'experiment:'")
    source = f"sqlite:///{path}"
    studies = optuna.get_all_study_names(source)
    if not studies:
        raise ConfigError(f"warm start from {earlier}: {path} holds no study")
    old = optuna.load_study(study_name=earlier.name if earlier.name in studies else studies[0], storage=source)
    wanted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    finished = [t for t in old.get_trials(deepcopy=False, states=wanted) if REPEAT_OF not in t.user_attrs]
    params = {p.name: p for p in spec.params}
    outside = sorted({k for t in finished for k in t.params if k not in params})
    if outside:
        raise ConfigError(f"warm start from {earlier}: parameter(s) {', '.join(outside)} are not searched by "
                          f"{spec.source}; search them too, or warm-start from a search of a compatible space")
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize", load_if_exists=True)
    for trial in finished:
        distributions = {k: optuna_distribution(params[k]) for k in trial.params}
        try:
            study.add_trial(optuna.trial.create_trial(
                params=trial.params, distributions=distributions, values=trial.values, state=trial.state,
                intermediate_values=trial.intermediate_values,
                user_attrs={**trial.user_attrs, WARM_START_FROM: str(earlier)}))
        except ValueError as err:
            raise ConfigError(f"warm start from {earlier}: trial {trial.number} does not fit {spec.source} ({err}); "
                              "widen the new space or warm-start from a compatible search") from None
    log.info("warm start: %d earlier trials from %s", len(finished), earlier)
    return len(finished)


def optuna_distribution(param: Any) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution ``Param.suggest`` draws from."""
    if param.type == "choice":
        return optuna.distributions.CategoricalDistribution(list(param.values))
    if param.type == "int":
        return optuna.distributions.IntDistribution(int(param.low), int(param.high), step=int(param.step or 1))
    return optuna.distributions.FloatDistribution(param.low, param.high, log=param.type == "loguniform",
                                                  step=param.step if param.type == "uniform" else None)


def publish_on_cluster(data: Any, storage: str, address: str | None) -> str | None:
    """On a cluster (``address`` given), publish the prepared cache under ``storage`` so that nodes that lack it (now
    or when they join) fetch it; returns where, or None for a local Ray."""
    if address is None:
        return None
    published = published_root(storage)
    publish(data.path, published)
    return published


def make_trainable(cache_name: str, published: str | None, base: dict[str, Any], resources: dict[str, float]) -> Any:
    """``train_trial`` with the cache it reads and the resources each trial asks for."""
    return tune.with_resources(
        tune.with_parameters(train_trial, cache_name=cache_name, published=published, base=base), resources)


def make_run_config(name: str, storage: str, verbose: bool, target: str) -> tune.RunConfig:
    """Where trials write, the checkpoints kept, retries of failed trials, and the console (Ray's or the quiet
    ``TrialLines``)."""
    return tune.RunConfig(
        name=name, storage_path=storage,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
        failure_config=tune.FailureConfig(max_failures=2),
        verbose=1 if verbose else 0,
        callbacks=None if verbose else [TrialLines(target)],
    )


def build_tuner(spec: SearchSpec, cache_name: str, published: str | None, storage: str, name: str, resume: bool,
                verbose: bool = True, warm_start: tuple[str, ...] = ()) -> tune.Tuner:
    trainable = make_trainable(cache_name, published, spec.base.to_dict(),
                               {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    exp_dir = experiment_dir(storage, name)
    quiet_console(verbose)
    if resume:
        return tune.Tuner.restore(exp_dir, trainable, resume_unfinished=True, resume_errored=True)
    study = study_path(exp_dir)
    study.parent.mkdir(parents=True, exist_ok=True)
    study_storage = optuna.storages.RDBStorage(f"sqlite:///{study}")
    for source in warm_start:
        feed_earlier_trials(source, spec, study_storage, name)
    searcher = FusionOptunaSearch(
        space=DefineByRun(spec.params, spec.base), metric=METRIC, mode=MODE, sampler=make_sampler(spec),
        points_to_evaluate=list(spec.searcher.points_to_evaluate) or None, storage=study_storage, study_name=name,
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
        run_config=make_run_config(name, storage, verbose, spec.base.data.target),
    )


def run_search(spec: SearchSpec, address: str | None = None, storage: str = DEFAULT_STORAGE, name: str | None = None,
               resume: bool = False, verbose: bool = True, warm_start: tuple[str, ...] = ()) -> SearchRun:
    """Prepare the data once, then run (or ``resume``) the search; returns the results and the best trial.

    ``address`` None starts a fresh local Ray; ``"auto"`` or ``HOST:PORT`` joins a running cluster, where
    ``storage`` must be shared storage (checked) and the prepared cache is published there for every node.
    ``verbose`` False prints one line per trial event instead of Ray's status tables and warnings.
    ``warm_start``: folders of earlier searches whose finished trials the new study starts from.
    """
    name = name or spec.name
    storage = storage if is_uri(storage) else str(Path(storage).expanduser().resolve())
    exp_dir = experiment_dir(storage, name)
    check_experiment(exp_dir, resume)
    for source in warm_start:  # a bad source is an error before Ray starts
        feed_earlier_trials(source, spec, optuna.storages.InMemoryStorage(), name)
    started = connect(address, verbose=verbose)
    try:
        check_resources(spec, local=address is None)
        check_shared(storage, "storage")
        data, built = prepare(spec.base.data)
        log.info("prepared data %s (%s)", data.path, "built now" if built else "already prepared")
        published = publish_on_cluster(data, storage, address)
        if not is_uri(exp_dir):  # what the analysis needs to know of the space (log-scale axes, units)
            Path(exp_dir).mkdir(parents=True, exist_ok=True)
            (Path(exp_dir) / SPACE_FILE).write_text(json.dumps(space_summary(spec), indent=1))
        tuner = build_tuner(spec, data.path.name, published, storage, name, resume, verbose, warm_start)
        results = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    finished = [r for r in results if r.metrics and METRIC in (r.metrics_dataframe if r.metrics_dataframe is not None
                                                               else {})]
    best = min(finished, key=lambda r: float(r.metrics_dataframe[METRIC].min()), default=None)
    return SearchRun(exp_dir, results, best, spec.base.data.target, mean_predictor_mae(data))


def confirm(experiment: str | Path, top_k: int = 3, seeds: int = 3, address: str | None = None,
            verbose: bool = True) -> str:
    """Retrain the ``top_k`` best configurations of a finished search (and its best graph-only one, where it ran
    both kinds) with ``seeds`` training seeds each, as Ray trials on the same cluster, into ``<experiment>-confirm``
    beside it; returns that folder. ``tune_fusion.analysis.read_confirmation`` summarises it."""
    from tune_fusion.analysis import CONFIRM_SUFFIX, read_space, read_trials, to_confirm, usable_trials
    from tune_fusion.export import load_checkpoint

    folder = Path(experiment).expanduser().resolve()
    usable = usable_trials(read_trials(folder, stale_after_s=0))
    if not usable:
        raise ConfigError(f"{folder} has no trial with a checkpoint to confirm; let the search finish first")
    configs = {t.trial_id: load_checkpoint(t.checkpoint)["config"] for t in usable}
    chosen = to_confirm(usable, top_k, default_graph_only=bool(configs[usable[0].trial_id]["graph_only"]))
    jobs = [{"config": {**configs[t.trial_id], "random_seed": seed}, "confirms": t.trial_id}
            for t in chosen for seed in range(seeds)]
    space = read_space(folder)
    resources = space.get("resources", {"cpu": 1, "gpu": 0})
    name = f"{folder.name}{CONFIRM_SUFFIX}"
    check_experiment(str(folder.parent / name), resume=False)
    started = connect(address, verbose=verbose)
    quiet_console(verbose)
    try:
        from tune_fusion.config import Config

        data, _ = prepare(Config.from_dict(jobs[0]["config"]).data)
        published = publish_on_cluster(data, str(folder.parent), address)
        tuner = tune.Tuner(
            make_trainable(data.path.name, published, {}, resources), param_space={"job": tune.grid_search(jobs)},
            tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, max_concurrent_trials=space.get("max_concurrent", 2),
                                        trial_name_creator=trial_name, trial_dirname_creator=trial_name,
                                        reuse_actors=True),
            run_config=make_run_config(name, str(folder.parent), verbose, data.meta["settings"]["target"]))
        tuner.fit()
    finally:
        if started:
            ray.shutdown()
    return str(folder.parent / name)


def best_checkpoint_path(result: tune.Result) -> str | None:
    """The trial's latest checkpoint (it holds the trial's best-by-validation weights under ``best_model``)."""
    return result.checkpoint.path if result.checkpoint else None
