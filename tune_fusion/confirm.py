"""Confirmation runs: the best configurations of a finished search retrained with several seeds, as Ray trials.

Example:
    >>> from tune_fusion.confirm import confirm
    >>> folder = confirm("~/ray_results/text_vs_graph", top_k=2, seeds=3)   # ~/ray_results/text_vs_graph-confirm
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray
from ray import tune

from tune_fusion.checkpoint import load_checkpoint
from tune_fusion.cluster import connect, parallel_map
from tune_fusion.config import Config
from tune_fusion.console import quiet_console
from tune_fusion.data import prepare
from tune_fusion.errors import ConfigError
from tune_fusion.experiment import CONFIRM_SUFFIX, read_space, read_trials, to_confirm, usable_trials
from tune_fusion.names import METRIC, MODE
from tune_fusion.search import check_experiment, make_run_config, make_trainable, publish_on_cluster, trial_name

__all__ = ["confirm", "run_configurations"]


def confirm(experiment: str | Path, top_k: int = 3, seeds: int = 3, address: str | None = None,
            verbose: bool = True) -> str:
    """Retrain the ``top_k`` best configurations of a finished search (and its best graph-only one, where it ran
    both kinds) with ``seeds`` training seeds each, as Ray trials on the same cluster, into ``<experiment>-confirm``
    beside it; returns that folder. ``tune_fusion.experiment.read_confirmation`` summarises it."""
    folder = Path(experiment).expanduser().resolve()
    usable = usable_trials(read_trials(folder, stale_after_s=0))
    if not usable:
        raise ConfigError(f"{folder} has no trial with a checkpoint to confirm; let the search finish first")
    configs = {t.trial_id: load_checkpoint(t.checkpoint)["config"] for t in usable}
    chosen = to_confirm(usable, top_k, default_graph_only=bool(configs[usable[0].trial_id]["graph_only"]))
    jobs = [{"config": {**configs[t.trial_id], "random_seed": seed}, "confirms": t.trial_id}
            for t in chosen for seed in range(seeds)]
    space = read_space(folder)
    name = f"{folder.name}{CONFIRM_SUFFIX}"
    check_experiment(str(folder.parent / name), resume=False)
    started = connect(address, verbose=verbose)
    quiet_console(verbose)
    try:
        data, _ = prepare(Config.from_dict(jobs[0]["config"]).data, parallel_map)
        published = publish_on_cluster(data, str(folder.parent), address)
        run_configurations(jobs, data.path.name, published, space.get("resources", {"cpu": 1, "gpu": 0}),
                           space.get("max_concurrent", 2), name, str(folder.parent), verbose,
                           data.meta["settings"]["target"])
    finally:
        if started:
            ray.shutdown()
    return str(folder.parent / name)


def run_configurations(jobs: list[dict[str, Any]], cache_name: str, published: str | None,
                       resources: dict[str, float], max_concurrent: int, name: str, storage: str, verbose: bool,
                       target: str) -> tune.ResultGrid:
    """Train each of ``jobs`` (``{"config": a whole configuration, "confirms": a label}``) once, as Ray trials of the
    experiment ``name`` under ``storage``, on the prepared cache ``cache_name``, ``max_concurrent`` at once."""
    tuner = tune.Tuner(
        make_trainable(cache_name, published, {}, resources), param_space={"job": tune.grid_search(jobs)},
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, max_concurrent_trials=max_concurrent,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name,
                                    reuse_actors=True),
        run_config=make_run_config(name, storage, verbose, target))
    return tuner.fit()
