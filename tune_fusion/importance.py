"""Parameter importance of a search: fANOVA (seeded) over the trials its persisted Optuna study holds that the
search itself trained (not skipped repeats, not warm-start copies). Optuna is imported only when asked.

Example:
    >>> from tune_fusion.importance import parameter_importance
    >>> values, note = parameter_importance(Path("~/ray_results/quickstart").expanduser())
"""

from __future__ import annotations

from pathlib import Path

from tune_fusion.errors import DataError
from tune_fusion.experiment import open_study
from tune_fusion.names import STUDY_FILE, is_copy

__all__ = ["parameter_importance"]


def parameter_importance(folder: Path, experiment: str | None = None) -> tuple[dict[str, float], str]:
    """Optuna (fANOVA, seeded) importances of the persisted study, or ({}, why not). For an ``s3://``/``gs://``
    ``experiment`` the study is where the search kept it (``tune_fusion.names.study_path``)."""
    import optuna

    try:
        stored, found = open_study(folder, experiment)
    except DataError as err:  # a corrupt study: the rest of the analysis goes on
        return {}, f"{err}; parameter importance not computed"
    if found is None:
        return {}, f"no Optuna study ({STUDY_FILE}) found for {folder.name}: parameter importance not computed"
    if stored is None:
        return {}, f"{found} holds no Optuna study: parameter importance not computed"
    complete = [t for t in stored.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if not is_copy(t.user_attrs)]  # the trials this search trained, not repeats or warm-start copies
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    study = optuna.create_study(direction="minimize")
    optuna.logging.set_verbosity(verbosity)
    study.add_trials(complete)
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

