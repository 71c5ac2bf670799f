"""A YAML search space -> a validated ``SearchSpec`` -> an Optuna define-by-run function.

Shape of a file (every key is checked before Ray starts; see search_spaces/*.yaml)::

    dataset: {path: data/jarvis_dft3d_800.json.gz, target: formation_energy_peratom}   # + any data option
    fixed: {epochs: 30, batch_size: 64, use_middle_fusion: true}                         # any option
    search:
      middle_fusion_initial_scale: {type: loguniform, low: 1.0, high: 20.0}
      middle_fusion_layers: {type: choice, values: ["2", "3", "2,3"]}
      use_cross_modal: {type: choice, values: [true, false]}
      cross_modal_num_heads: {type: choice, values: [1, 2, 4, 8], when: {use_cross_modal: true}}
    scheduler: {type: asha, max_t: 30, grace_period: 12, reduction_factor: 3}            # or {type: fifo}
    searcher: {type: optuna, sampler: tpe, seed: 0, points_to_evaluate: [...]}          # sampler: tpe | random
    resources: {cpu: 1, gpu: 0}
    num_samples: 32
    max_concurrent: 2
    time_budget_s: 3600                                                                  # optional
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from tune_fusion.config import (
    FIELDS,
    NOT_SEARCHED,
    PACKAGE_ROOT,
    Config,
    cache_fields,
    coerce,
    option_type,
    parse_layers,
    suggest,
)
from tune_fusion.errors import ConfigError, first_line, prefixed, reading

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
TOP_LEVEL = ("dataset", "fixed", "search", "scheduler", "searcher", "resources", "num_samples", "max_concurrent",
             "time_budget_s")
PARAM_KEYS = ("type", "low", "high", "values", "step", "when")

__all__ = ["DISTRIBUTIONS", "OVERRIDE_FLAGS", "PARAM_KEYS", "TOP_LEVEL", "DefineByRun", "Param", "Resources",
           "SchedulerSettings", "SearchSpec", "SearcherSettings", "load_spec", "parse_spec", "space_summary"]


@dataclass(frozen=True)
class SchedulerSettings:
    """``scheduler:``: ASHA stops weak trials at rungs grace_period, x reduction_factor, ...; fifo runs them all."""

    type: str = "asha"
    max_t: int = 0  # 0 = the trials' epochs (the only value ASHA accepts: it counts epochs)
    grace_period: int = 3
    reduction_factor: float = 3.0


@dataclass(frozen=True)
class SearcherSettings:
    """``searcher:``: Optuna's sampler (tpe or random), its seed, configurations to evaluate first, and TPE's
    settings for the budgets users run (8-64 trials, 2-16 at once)."""

    type: str = "optuna"
    sampler: str = "tpe"
    seed: int = 0
    points_to_evaluate: tuple[dict[str, Any], ...] = ()
    n_startup_trials: int = 0  # random trials before TPE models; 0 = a quarter of num_samples, between 2 and 16
    multivariate: bool = True  # model the parameters jointly, not one by one
    group: bool = True  # with multivariate: model each conditional (when:) sub-space on the trials that drew it
    constant_liar: bool = True  # count running trials as bad so concurrent proposals spread out

    def startup_trials(self, num_samples: int) -> int:
        """The random start-up trials for a search of ``num_samples`` trials."""
        return self.n_startup_trials or max(2, min(16, num_samples // 4))


@dataclass(frozen=True)
class Resources:
    """``resources:`` of one trial; gpu may be a fraction (several trials share a GPU)."""

    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class Param:
    """One searched option: its distribution and the condition under which it is sampled."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    values: tuple[Any, ...] = ()
    step: float | None = None
    when: tuple[tuple[str, Any], ...] = ()

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """The Optuna distribution this parameter is drawn from (by ``suggest``, and in warm-started studies)."""
        if self.type == "choice":
            return optuna.distributions.CategoricalDistribution(list(self.values))
        if self.type == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), step=int(self.step or 1))
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.type == "loguniform",
                                                      step=self.step if self.type == "uniform" else None)

    def suggest(self, trial: optuna.Trial) -> Any:
        """Draw a value of ``distribution()`` from an Optuna trial."""
        found = self.distribution()
        if isinstance(found, optuna.distributions.CategoricalDistribution):
            return trial.suggest_categorical(self.name, list(found.choices))
        if isinstance(found, optuna.distributions.IntDistribution):
            return trial.suggest_int(self.name, found.low, found.high, step=found.step)
        return trial.suggest_float(self.name, found.low, found.high, log=found.log, step=found.step)

    def drawn_with(self, chosen: Mapping[str, Any], base: Mapping[str, Any]) -> bool:
        """Whether this parameter is drawn when the parameters drawn before it took the values ``chosen`` and the
        other options are ``base``: every condition of its ``when`` holds."""
        return all(chosen.get(key, base.get(key)) == value for key, value in self.when)


@dataclass(frozen=True)
class SearchSpec:
    """A validated search: the base config (dataset + fixed), the searched params and how to run them."""

    source: str
    base: Config
    params: tuple[Param, ...]
    scheduler: SchedulerSettings = SchedulerSettings()
    searcher: SearcherSettings = SearcherSettings()
    resources: Resources = Resources()
    num_samples: int = 8
    max_concurrent: int = 2
    time_budget_s: float | None = None
    from_flags: frozenset[str] = frozenset()  # values the command line set (``OVERRIDE_FLAGS`` keys), not the file

    @property
    def name(self) -> str:
        return Path(self.source).stem

    def origin(self, key: str) -> str:
        """Where the value of ``key`` (``num_samples``, ``resources.gpu``, ...) came from, for messages: its flag, or
        the key in the space file."""
        return OVERRIDE_FLAGS[key] if key in self.from_flags else f"{key} in {self.source}"


# The flags of run_search.py that override a space's top-level values, by the key they set.
OVERRIDE_FLAGS = {"num_samples": "--num-samples", "max_concurrent": "--max-concurrent",
                  "resources.cpu": "--cpus-per-trial", "resources.gpu": "--gpus-per-trial"}


class DefineByRun:
    """The Optuna define-by-run space: a conditional param is drawn only when its ``when`` holds.

    A plain class (not a closure) so Ray can pickle it with the searcher's state.
    """

    def __init__(self, params: tuple[Param, ...], base: Config) -> None:
        self.params = params
        self.base = base.to_dict()

    def __call__(self, trial: optuna.Trial) -> None:
        chosen: dict[str, Any] = {}
        for param in self.params:
            if param.drawn_with(chosen, self.base):
                chosen[param.name] = param.suggest(trial)


def load_spec(path: str | Path, overrides: Mapping[str, Any] | None = None) -> SearchSpec:
    """Read and validate a search-space YAML; ``overrides`` are top-level values from the command line."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        shipped = PACKAGE_ROOT / "search_spaces" / path.name
        if not shipped.is_file():
            known = [p.name for p in (PACKAGE_ROOT / "search_spaces").glob("*.yaml")]
            known += [p.name for p in path.parent.glob("*.yaml")] if path.parent.is_dir() else []
            raise ConfigError(f"search space {path} not found.{suggest(path.name, known)} Pass a YAML file such as "
                              "search_spaces/quickstart.yaml")
        path, source = shipped, str(shipped)
    try:
        with reading(source, "search space", "save it as UTF-8 YAML", ConfigError):
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{source}:{line} is not valid YAML ({first_line(getattr(err, 'problem', None) or err)}); fix the syntax") from None
    return parse_spec(raw or {}, source, overrides or {})


def parse_spec(raw: Mapping[str, Any], source: str, overrides: Mapping[str, Any] | None = None) -> SearchSpec:
    """Validate a search space given as a mapping (the parsed YAML)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a mapping with keys {', '.join(TOP_LEVEL)}")
    for key, value in (overrides or {}).items():
        if value is not None:  # a mapping (resources) is merged into the file's, a number replaces it
            raw = {**raw, key: {**_mapping(raw, key, source), **value} if isinstance(value, Mapping) else value}
    for key in raw:
        if key not in TOP_LEVEL:
            raise ConfigError(f"{source}: unknown key '{key}'.{suggest(key, TOP_LEVEL)} Valid keys: {', '.join(TOP_LEVEL)}")
    dataset = _mapping(raw, "dataset", source)
    fixed = _mapping(raw, "fixed", source)
    base_values = {("dataset" if k == "path" else k): v for k, v in dataset.items()}
    if "dataset" in base_values:
        base_values["dataset"] = _dataset_path(str(base_values["dataset"]), source)
    for key, reason in NOT_SEARCHED.items():
        if key in fixed or key in _mapping(raw, "search", source):
            raise ConfigError(f"{source}: '{key}' has no meaning in a search ({reason}); remove it")
    base = Config.from_dict({**base_values, **fixed}, source=f"{source}: dataset/fixed")
    params = _params(_mapping(raw, "search", source), base, fixed, source)
    scheduler = _typed(_mapping(raw, "scheduler", source), SchedulerSettings, f"{source}: scheduler")
    if scheduler.max_t == 0:
        scheduler = dataclasses.replace(scheduler, max_t=base.train.epochs)
    defaults = SearchSpec.__dataclass_fields__
    spec = SearchSpec(
        source=source, base=base, params=params, scheduler=scheduler,
        searcher=_typed(_mapping(raw, "searcher", source), SearcherSettings, f"{source}: searcher"),
        resources=_typed(_mapping(raw, "resources", source), Resources, f"{source}: resources"),
        num_samples=_number(raw, "num_samples", int, defaults["num_samples"].default, source, minimum=1),
        max_concurrent=_number(raw, "max_concurrent", int, defaults["max_concurrent"].default, source, minimum=1),
        time_budget_s=_number(raw, "time_budget_s", float, None, source, minimum=1),
        from_flags=frozenset(f"{key}.{sub}" if isinstance(value, Mapping) else key
                             for key, value in (overrides or {}).items() if value is not None
                             for sub in (value if isinstance(value, Mapping) else [None])),
    )
    _check_run_settings(spec)
    return spec


def _dataset_path(dataset: str, source: str) -> str:
    """A relative dataset path of a space file, looked for beside the file, in the project and in the current
    folder (in that order); a path found in none of them is an error naming the three. A bare name (``dft_3d``, no
    folder or suffix) is left to the data layer, which looks for a jarvis dataset of that name."""
    path = Path(dataset).expanduser()
    if path.is_absolute() or not (path.suffix or len(path.parts) > 1):
        return str(path)
    folders = [Path(source).resolve().parent, PACKAGE_ROOT, Path.cwd()]
    found = next((folder / path for folder in folders if (folder / path).exists()), None)
    if found is None:
        raise ConfigError(f"{source}: dataset '{dataset}' not found; looked in {', '.join(map(str, folders))} (the "
                          "space file's folder, the project, the current folder): give an absolute path or one "
                          "relative to the space file")
    return str(found)


def _mapping(raw: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: '{key}' must be a mapping (key: value), got {type(value).__name__}")
    return dict(value)


def _typed(values: dict[str, Any], cls: type, where: str) -> Any:
    """``cls(**values)`` for a settings dataclass, each key and value checked against its fields' types."""
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"{where}: unknown key '{key}'.{suggest(key, hints)} Valid keys: {', '.join(hints)}")
        kind = typing.get_origin(hints[key]) or hints[key]
        if kind is tuple:
            kind = list  # a YAML list
        ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
        if not ok or (isinstance(value, bool) and kind is not bool):
            raise ConfigError(f"{where}.{key}={value!r} must be a {kind.__name__}")
        out[key] = tuple(value) if kind is list else kind(value)
    return cls(**out)


def _number(raw: Mapping[str, Any], key: str, kind: type, default: Any, source: str, minimum: float) -> Any:
    value = raw.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and int(value) != value):
        raise ConfigError(f"{source}: {key}={value!r} must be a {kind.__name__} >= {minimum}")
    if value < minimum:
        raise ConfigError(f"{source}: {key}={value} must be >= {minimum}")
    return kind(value)


def _params(search: dict[str, Any], base: Config, fixed: Mapping[str, Any], source: str) -> tuple[Param, ...]:
    params: dict[str, Param] = {}
    for name, body in search.items():
        where = f"{source}: search.{name}"
        if name not in FIELDS:
            raise ConfigError(f"{where}: '{name}' is not an option.{suggest(name, FIELDS)} "
                              "Searchable options are the keys of tune_fusion/config.py")
        if not isinstance(body, Mapping):
            raise ConfigError(f"{where} must be a mapping like {{type: choice, values: [...]}}")
        if name in fixed:
            raise ConfigError(f"{where}: '{name}' is both fixed and searched; remove it from one of them")
        if name in cache_fields():
            raise ConfigError(f"{where}: '{name}' shapes the prepared data, which a search prepares once for all its "
                              "trials; fix it under dataset: (one search per value)")
        params[name] = _param(name, dict(body), where)
    for param in params.values():
        for key, value in param.when:
            where = f"{source}: search.{param.name}.when"
            if key not in FIELDS:
                raise ConfigError(f"{where}: condition on unknown parameter '{key}'.{suggest(key, FIELDS)} "
                                  "Conditions name a searched or fixed option")
            if key == param.name:
                raise ConfigError(f"{where}: a parameter cannot depend on itself")
            if key in params and params[key].type == "choice" and value not in params[key].values:
                raise ConfigError(f"{where}: {key}={value!r} is never drawn; {key} takes {list(params[key].values)}")
    ordered = _order(params, source)
    _check_values(ordered, base, source)
    return ordered


def _param(name: str, body: dict[str, Any], where: str) -> Param:
    for key in body:
        if key not in PARAM_KEYS:
            raise ConfigError(f"{where}: unknown key '{key}'.{suggest(key, PARAM_KEYS)} Valid keys: {', '.join(PARAM_KEYS)}")
    kind = body.get("type")
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: type={kind!r} must be one of {', '.join(DISTRIBUTIONS)}")
    when = body.get("when") or {}
    if not isinstance(when, Mapping):
        raise ConfigError(f"{where}.when must be a mapping like {{use_cross_modal: true}}")
    with prefixed(f"{where}.when"):
        conditions = tuple((k, coerce(k, v) if k in FIELDS else v) for k, v in when.items())
    if kind == "choice":
        values = body.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: a choice needs a non-empty list 'values', got {values!r}")
        with prefixed(where):
            coerced = tuple(coerce(name, v) for v in values)
        return Param(name, kind, values=coerced, when=conditions)
    expected = int if kind == "int" else float
    if option_type(name) not in (int, float) or (kind == "int") != (option_type(name) is int):
        fix = "type: int" if option_type(name) is int else "type: choice with values: [...]"
        if option_type(name) is float:
            fix = "type: uniform or loguniform"
        raise ConfigError(f"{where}: {name} is a {option_type(name).__name__}, so type: {kind} cannot draw it; use {fix}")
    low, high, step = body.get("low"), body.get("high"), body.get("step")
    for label, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: {label}={value!r} must be a finite {expected.__name__}")
    if low >= high:
        raise ConfigError(f"{where}: low={low} must be < high={high} (an empty or inverted range); "
                          "swap them, or use fixed: for a single value")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0, got low={low}")
    if step is not None and (isinstance(step, bool) or not isinstance(step, expected) or step <= 0):
        raise ConfigError(f"{where}: step={step!r} must be a {expected.__name__} > 0")
    return Param(name, kind, low=expected(low), high=expected(high), step=step, when=conditions)


def _order(params: dict[str, Param], source: str) -> tuple[Param, ...]:
    """Order params so each comes after the searched params its condition reads."""
    ordered: list[Param] = []
    pending = dict(params)
    while pending:
        ready = [p for p in pending.values() if all(k not in pending or k == p.name for k, _ in p.when)]
        if not ready:
            raise ConfigError(f"{source}: conditions of {', '.join(pending)} form a cycle; make one unconditional")
        for param in ready:
            ordered.append(param)
            del pending[param.name]
    return tuple(ordered)


def _check_values(params: tuple[Param, ...], base: Config, source: str) -> None:
    """Every drawable value must make a valid config with the fixed options and the other params' first values
    (layer indices are checked against the largest model the space can draw)."""
    _check_fusion_layers(params, _largest(params, "alignn_layers", base.model.alignn_layers), source)
    representative = {p.name: p.values[0] if p.type == "choice" else p.low for p in params
                      if p.name != "alignn_layers"}
    for param in params:
        where = f"{source}: search.{param.name}"
        if param.name == "middle_fusion_layers":
            continue
        samples = param.values if param.type == "choice" else (param.low, param.high)
        for value in samples:
            try:
                base.replace({**representative, param.name: value})
            except ConfigError as err:
                raise ConfigError(f"{where}: value {value!r} is invalid: {str(err).split(': ', 1)[-1]}") from None


def _check_fusion_layers(params: tuple[Param, ...], max_layers: int, source: str) -> None:
    """Every drawable ``middle_fusion_layers`` value names layers the largest drawable model has."""
    for param in params:
        if param.name != "middle_fusion_layers":
            continue
        where = f"{source}: search.{param.name}"
        for value in param.values:
            with prefixed(where):
                layers = parse_layers(value)
            bad = [i for i in layers if not 0 <= i < max_layers]
            if bad:
                raise ConfigError(f"{where}: value {value!r} names layer(s) {bad} but the model has "
                                  f"alignn_layers={max_layers} (valid 0..{max_layers - 1}); drop it or raise "
                                  "alignn_layers")


def _largest(params: tuple[Param, ...], name: str, fixed: int) -> int:
    """The largest value searched parameter ``name`` can take (``fixed`` when it is not searched)."""
    param = next((p for p in params if p.name == name), None)
    if param is None:
        return fixed
    if param.type == "choice":
        return int(max(param.values))
    return int(param.high)


def _check_run_settings(spec: SearchSpec) -> None:
    src, sched, searcher = spec.source, spec.scheduler, spec.searcher
    if sched.type not in ("asha", "fifo"):
        raise ConfigError(f"{src}: scheduler.type={sched.type!r} must be asha or fifo")
    if sched.type == "asha":
        if not 1 <= sched.grace_period <= sched.max_t:
            raise ConfigError(f"{src}: scheduler needs 1 <= grace_period <= max_t, got grace_period="
                              f"{sched.grace_period}, max_t={sched.max_t}")
        if sched.reduction_factor <= 1:
            raise ConfigError(f"{src}: scheduler.reduction_factor={sched.reduction_factor} must be > 1")
        if any(p.name == "epochs" for p in spec.params):
            raise ConfigError(f"{src}: search.epochs cannot be searched with ASHA, which gives every trial the same "
                              "budget (scheduler.max_t); fix epochs, or use scheduler: {type: fifo}")
        if sched.max_t != spec.base.train.epochs:
            raise ConfigError(f"{src}: scheduler.max_t={sched.max_t} must equal epochs={spec.base.train.epochs} "
                              "(ASHA counts epochs, and a trial's schedule runs to its last epoch); set both alike")
    if searcher.type != "optuna":
        raise ConfigError(f"{src}: searcher.type={searcher.type!r} must be optuna (use sampler: random for a "
                          "random search)")
    if searcher.sampler not in ("tpe", "random"):
        raise ConfigError(f"{src}: searcher.sampler={searcher.sampler!r} must be tpe or random")
    if searcher.n_startup_trials < 0:
        raise ConfigError(f"{src}: searcher.n_startup_trials={searcher.n_startup_trials} must be >= 0 (0 = a quarter "
                          "of num_samples)")
    names = {p.name: p for p in spec.params}
    for i, point in enumerate(searcher.points_to_evaluate):
        where = f"{src}: searcher.points_to_evaluate[{i}]"
        if not isinstance(point, Mapping):
            raise ConfigError(f"{where} must be a mapping of searched parameter: value")
        for key, value in point.items():
            if key not in names:
                raise ConfigError(f"{where}: '{key}' is not a searched parameter.{suggest(key, names)}")
            param = names[key]
            with prefixed(where):
                value = coerce(key, value)
            if param.type == "choice" and value not in param.values:
                raise ConfigError(f"{where}: {key}={value!r} is not among its values {list(param.values)}")
            if param.type != "choice" and not param.low <= value <= param.high:
                raise ConfigError(f"{where}: {key}={value} lies outside [{param.low}, {param.high}]")
    if spec.resources.cpu <= 0 or spec.resources.gpu < 0:
        raise ConfigError(f"{src}: resources need cpu > 0 and gpu >= 0, got {spec.resources}")


def space_summary(spec: SearchSpec) -> dict[str, Any]:
    """What the analysis needs to know of a search: the target and each searched parameter's distribution."""
    params = {p.name: {"type": p.type, "low": p.low, "high": p.high, "values": list(p.values)} for p in spec.params}
    return {"source": spec.source, "target": spec.base.data.target, "params": params,
            "resources": {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}, "max_concurrent": spec.max_concurrent}
