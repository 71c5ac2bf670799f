"""Warm start: a new search's study begins with the finished trials of earlier searches (``--warm-start``).

Example:
    >>> from tune_fusion.warm_start import feed_earlier_trials
    >>> feed_earlier_trials("~/ray_results/middle_fusion", spec, optuna.storages.InMemoryStorage(), "new")
"""

from __future__ import annotations

import logging
from pathlib import Path

import optuna

from tune_fusion.errors import ConfigError
from tune_fusion.experiment import open_study
from tune_fusion.names import REPEAT_OF, STUDY_FILE, WARM_START_FROM
from tune_fusion.space import SearchSpec

__all__ = ["feed_earlier_trials"]

log = logging.getLogger(__name__)


def feed_earlier_trials(experiment: str | Path, spec: SearchSpec, storage: optuna.storages.BaseStorage,
                        name: str) -> int:
    """Warm start: copy the finished trials (completed, and stopped early with their per-epoch values) of an earlier
    search's study into the new study ``name``, checked against the new space; returns how many were copied."""
    earlier = Path(experiment).expanduser().resolve()
    old, path = open_study(earlier)
    if path is None:
        raise ConfigError(f"warm start from {earlier}: no Optuna study ({STUDY_FILE}) there; give the folder of an "
                          "earlier search that run_search.py printed as 'experiment:'")
    if old is None:
        raise ConfigError(f"warm start from {earlier}: {path} holds no study")
    wanted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    finished = [t for t in old.get_trials(deepcopy=False, states=wanted) if REPEAT_OF not in t.user_attrs]
    params = {p.name: p for p in spec.params}
    outside = sorted({k for t in finished for k in t.params if k not in params})
    if outside:
        raise ConfigError(f"warm start from {earlier}: parameter(s) {', '.join(outside)} are not searched by "
                          f"{spec.source}; search them too, or warm-start from a search of a compatible space")
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize", load_if_exists=True)
    for trial in finished:
        distributions = {k: params[k].distribution() for k in trial.params}
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

