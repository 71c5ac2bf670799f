"""The one definition of every option: data, model and training settings.

Each field has a type, a default and a one-line help. The CLI flags (``python -m tune_fusion.train``), the YAML
keys of a search space, Ray's ``param_space`` and the config stored in a checkpoint are all derived from these
dataclasses. Keys are flat and unique across sections, so ``{"batch_size": 32, "use_middle_fusion": True}`` is a
complete override, exactly like the original research scripts' flags.

Example:
    >>> cfg = Config.from_dict({"target": "optb88vdw_bandgap", "use_middle_fusion": "True"})
    >>> cfg.model.use_middle_fusion, cfg.data.target
    (True, 'optb88vdw_bandgap')
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tune_fusion.errors import ConfigError, prefixed, reading

__all__ = ["DEFAULT_TEXT_ENCODER", "FIELDS", "GRAPH_BACKENDS", "KEY_ALIASES", "NOT_SEARCHED", "PACKAGE_ROOT",
           "PLACE_OPTIONS", "SAMPLE_DATASET", "SECTIONS", "TARGET_ALIASES", "TEXT_VECTORS", "Config", "DataConfig",
           "ModelConfig", "TrainConfig", "cache_fields", "check_same_run", "coerce", "option_help", "option_type",
           "parse_layers", "read_config_file", "suggest", "validate"]

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATASET = PACKAGE_ROOT / "data" / "jarvis_dft3d_800.json.gz"
DEFAULT_TEXT_ENCODER = "all-minilm-l6-v2"

# The original scripts' short property names (``--property formation_energy``) and their dft_3d keys.
TARGET_ALIASES = {
    "formation_energy": "formation_energy_peratom",
    "bulk_modulus": "bulk_modulus_kv",
    "opt_bandgap": "optb88vdw_bandgap",
    "total_energy": "optb88vdw_total_energy",
    "shear_modulus": "shear_modulus_gv",
}
TEXT_VECTORS = ("sentence_mean", "truncated")
GRAPH_BACKENDS = ("auto", "dgl", "torch")
# Flag names of the original scripts that mean one of our options.
KEY_ALIASES = {"property": "target"}


def _opt(default: Any, help: str, *, cache: str = "", place: bool = False, not_searched: str = "") -> Any:
    """One option. ``cache``: the prepared-data key it is part of (``graphs``, ``texts`` or ``view``); ``place``:
    it says where or how a run happens, not what it computes (it may change when a run resumes); ``not_searched``:
    why a search cannot set it."""
    return field(default=default, metadata={"help": help, "cache": cache, "place": place,
                                            "not_searched": not_searched})


@dataclass(frozen=True)
class DataConfig:
    """Where the crystals come from and how they become cached tensors."""

    dataset: str = _opt(str(SAMPLE_DATASET), "dft_3d JSON(.gz/.zip), jarvis dataset name, ALIGNN folder or description.csv",
                        place=True)  # the cache is keyed by the dataset's content, not its path
    target: str = _opt("formation_energy_peratom", "property to predict (dft_3d key; e.g. optb88vdw_bandgap)",
                       cache="view")
    cache_dir: str = _opt("~/.cache/tune-fusion", "where prepared caches live (each node's own disk is fine)", place=True)
    cutoff: float = _opt(8.0, "neighbour cutoff radius in angstrom", cache="graphs")
    max_neighbors: int = _opt(12, "neighbours kept per atom", cache="graphs")
    atom_features: str = _opt("cgcnn", "jarvis-tools atom feature set (cgcnn: 92 features)", cache="graphs")
    text_encoder: str = _opt(DEFAULT_TEXT_ENCODER, "frozen sentence encoder: all-minilm-l6-v2 or a local model path",
                             cache="texts")
    max_sentences: int = _opt(24, "sentences kept per description for the cross-modal attention")
    text_vector: str = _opt("truncated", "the crystal's text vector: truncated (the whole text as one encoder input, "
                            "cut at the encoder's 256 tokens: measurably better on the bundled data, see "
                            "benchmarks/RESULTS.md) or sentence_mean (normalised mean of its sentence vectors: every "
                            "sentence counts)")
    max_structures: int = _opt(0, "use only the first N usable records (0 = all); for quick runs", cache="view")
    train_ratio: float = _opt(0.8, "fraction of records for training", cache="view")
    val_ratio: float = _opt(0.1, "fraction of records for validation (model selection)", cache="view")
    test_ratio: float = _opt(0.1, "fraction of records for the final test", cache="view")
    n_train: int = _opt(0, "absolute number of training records (overrides train_ratio when > 0)", cache="view")
    n_val: int = _opt(0, "absolute number of validation records (overrides val_ratio when > 0)", cache="view")
    n_test: int = _opt(0, "absolute number of test records (overrides test_ratio when > 0)", cache="view")
    split_seed: int = _opt(123, "seed of the train/val/test split", cache="view")


@dataclass(frozen=True)
class ModelConfig:
    """The ALIGNN encoder, the text branch and the two fusion stages."""

    alignn_layers: int = _opt(4, "ALIGNN blocks (graph + line graph convolution)")
    gcn_layers: int = _opt(4, "edge-gated graph convolutions after the ALIGNN blocks")
    hidden_features: int = _opt(256, "width of atom, bond and angle features")
    embedding_features: int = _opt(64, "width of the atom/bond/angle embeddings before the first block")
    edge_input_features: int = _opt(80, "radial basis functions for bond lengths")
    triplet_input_features: int = _opt(40, "radial basis functions for bond-angle cosines")
    graph_dropout: float = _opt(0.0, "dropout inside the graph convolutions")
    graph_only: bool = _opt(False, "baseline: no text anywhere (ignores every text option)")
    text_projection_dim: int = _opt(64, "width the crystal's text vector is projected to for the head")
    use_middle_fusion: bool = _opt(False, "inject text into chosen ALIGNN layers through a gate")
    middle_fusion_layers: str = _opt("2", "comma-separated ALIGNN layer indices (0-based) to fuse after, e.g. '2,3'")
    middle_fusion_hidden_dim: int = _opt(128, "hidden width of the text_transform MLP")
    middle_fusion_dropout: float = _opt(0.1, "dropout on the fused atom features")
    middle_fusion_use_gate_norm: bool = _opt(False, "LayerNorm on the gate input [h; u]")
    middle_fusion_use_learnable_scale: bool = _opt(False, "learn text_scale (else a fixed buffer)")
    middle_fusion_initial_scale: float = _opt(1.0, "initial (or fixed) text_scale")
    use_cross_modal: bool = _opt(True, "late multi-head attention between atoms and text sentences")
    cross_modal_hidden_dim: int = _opt(256, "width of the cross-modal attention")
    cross_modal_num_heads: int = _opt(4, "attention heads (must divide cross_modal_hidden_dim)")
    cross_modal_dropout: float = _opt(0.1, "dropout on the attention weights")
    use_contrastive: bool = _opt(False, "add a symmetric InfoNCE loss between graph and text representations")
    contrastive_weight: float = _opt(0.1, "weight of the contrastive loss")
    contrastive_temperature: float = _opt(0.1, "temperature of the contrastive loss")

    @property
    def fusion_layer_indices(self) -> tuple[int, ...]:
        """The parsed ``middle_fusion_layers`` (empty when middle fusion is off)."""
        if self.graph_only or not self.use_middle_fusion:
            return ()
        return parse_layers(self.middle_fusion_layers)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, stopping rules and output."""

    epochs: int = _opt(300, "maximum number of epochs")
    batch_size: int = _opt(64, "crystals per batch")
    learning_rate: float = _opt(1e-3, "peak learning rate of the OneCycle schedule")
    weight_decay: float = _opt(1e-5, "AdamW weight decay (not applied to biases and norms)")
    warmup_steps: int = _opt(0, "OneCycle warm-up steps (0 = 30% of all steps)")
    grad_clip_norm: float = _opt(5.0, "gradient norm clip (0 = off)")
    early_stopping_patience: int = _opt(50, "stop after this many epochs without a better val_mae (0 = off)")
    max_text_scale: float = _opt(50.0, "stop the run when any |text_scale| exceeds this")
    random_seed: int = _opt(123, "seed of initialisation and batch order")
    num_workers: int = _opt(0, "DataLoader worker processes", place=True)
    graph_backend: str = _opt("auto", "message passing: dgl (DGL's kernels, CPU only), torch (plain PyTorch, any "
                              "device) or auto (dgl on CPU where DGL imports, torch elsewhere)", place=True)
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N", place=True,
                       not_searched="each trial uses the GPU Ray assigns it (resources.gpu), else the CPU")
    output_dir: str = _opt("./output/", "standalone training: where checkpoints and predictions go", place=True,
                           not_searched="trials write into the experiment directory (storage and name)")


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def parse_layers(spec: str) -> tuple[int, ...]:
    """``"2,3"`` -> ``(2, 3)``; raises ConfigError on anything else."""
    try:
        layers = tuple(int(part) for part in str(spec).split(",") if part.strip() != "")
    except ValueError:
        raise ConfigError(
            f"middle_fusion_layers={spec!r} is not a comma-separated list of layer indices; write e.g. '2' or '2,3'"
        ) from None
    if not layers:
        raise ConfigError("middle_fusion_layers is empty; write e.g. '2' or '2,3'")
    return tuple(sorted(set(layers)))


def _field_types() -> dict[str, tuple[str, dataclasses.Field, type]]:
    out = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            out[f.name] = (section, f, hints[f.name])
    return out


FIELDS = _field_types()


def cache_fields(*stores: str) -> tuple[str, ...]:
    """The options that key the prepared data of ``stores`` (``graphs``, ``texts``, ``view``; all when none)."""
    return tuple(name for name, (_, f, _) in FIELDS.items()
                 if f.metadata["cache"] and (not stores or f.metadata["cache"] in stores))


# Options that say where or how a run happens, not what it computes: they may differ when a run resumes.
PLACE_OPTIONS = frozenset(name for name, (_, f, _) in FIELDS.items() if f.metadata["place"])
# Options a search decides itself, with the reason.
NOT_SEARCHED = {name: f.metadata["not_searched"] for name, (_, f, _) in FIELDS.items() if f.metadata["not_searched"]}


def option_help(name: str) -> str:
    """The one-line help of option ``name``."""
    return FIELDS[name][1].metadata["help"]


def option_type(name: str) -> type:
    """The Python type (bool, int, float, str) of option ``name``."""
    return FIELDS[name][2]


def suggest(name: str, valid: typing.Iterable[str]) -> str:
    """A ' Did you mean ...?' hint for a mistyped key, or ''."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def coerce(name: str, value: Any) -> Any:
    """Convert ``value`` (from YAML, JSON or the command line) to option ``name``'s type, or raise ConfigError."""
    kind = option_type(name)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {"true", "false", "1", "0", "yes", "no"}:
            return value.strip().lower() in {"true", "1", "yes"}
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif kind is int:
        if isinstance(value, bool):
            pass
        elif isinstance(value, int):
            return value
        elif isinstance(value, float) and value.is_integer():
            return int(value)
        elif isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{name}={value!r} is not a valid {kind.__name__}; {name}: {option_help(name)}")


@dataclass(frozen=True)
class Config:
    """All settings of one training run (one trial of a search)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        """Flat ``{option: value}`` of JSON-compatible values (stored in checkpoints, given to Ray)."""
        out: dict[str, Any] = {}
        for section in SECTIONS:
            out.update(dataclasses.asdict(getattr(self, section)))
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> Config:
        """Build from flat option values; unknown keys and bad values raise ConfigError naming ``source``."""
        return cls().replace(values, source=source)

    def replace(self, values: Mapping[str, Any], source: str = "config") -> Config:
        """A copy with some options changed (flat keys; original flag names accepted)."""
        per_section: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        for raw_key, value in values.items():
            key = KEY_ALIASES.get(raw_key, raw_key)
            if key not in FIELDS:
                raise ConfigError(
                    f"{source}: unknown option '{raw_key}'.{suggest(raw_key, FIELDS)} "
                    f"Valid options: {', '.join(FIELDS)}"
                )
            with prefixed(source):
                value = coerce(key, value)
            if key == "target":
                value = TARGET_ALIASES.get(value, value)
            per_section[FIELDS[key][0]][key] = value
        with prefixed(source):
            return Config(**{s: dataclasses.replace(getattr(self, s), **per_section[s]) for s in SECTIONS})


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a JSON or YAML file of flat keys (like the original ``config_improved_fusion.json``)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle, \
                reading(path, "config file", "save it as UTF-8 JSON or YAML", ConfigError):
            values = yaml.safe_load(handle)  # YAML is a superset of JSON
    except OSError as err:
        raise ConfigError(f"config file {path}: cannot read it ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path}: not valid JSON/YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path}: expected a mapping of option: value")
    return values


def check_same_run(cfg: Config, stored: Mapping[str, Any], path: str | Path) -> None:
    """Resuming continues the same run: every option that shapes it (epochs included) must match the stored ones."""
    differ = sorted(k for k, v in cfg.to_dict().items() if k not in PLACE_OPTIONS and stored.get(k) != v)
    if differ:
        raise ConfigError(f"cannot resume {path}: it was made with other settings for {', '.join(differ)} "
                          f"({', '.join(f'{k}={stored.get(k)!r}' for k in differ)}); use the same values, "
                          "or start a new run in another output_dir")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(cfg: Config) -> None:
    """Cross-field rules, each stated with the value received and the fix."""
    d, m, t = cfg.data, cfg.model, cfg.train
    for name in ("train_ratio", "val_ratio", "test_ratio"):
        value = getattr(d, name)
        _check(0.0 <= value <= 1.0, f"{name}={value} must lie in [0, 1]")
    total = d.train_ratio + d.val_ratio + d.test_ratio
    _check(total <= 1.0 + 1e-9, f"train_ratio + val_ratio + test_ratio = {total:g} must be <= 1; lower one of them")
    _check(d.train_ratio > 0 or d.n_train > 0, "train_ratio is 0 and n_train is 0: no data to train on")
    _check(d.val_ratio > 0 or d.n_val > 0, "val_ratio is 0 and n_val is 0: validation data is needed to select models")
    for name in ("n_train", "n_val", "n_test", "max_structures"):
        _check(getattr(d, name) >= 0, f"{name}={getattr(d, name)} must be >= 0 (0 = not set)")
    _check(d.cutoff > 0, f"cutoff={d.cutoff} must be > 0 angstrom")
    _check(d.max_neighbors >= 1, f"max_neighbors={d.max_neighbors} must be >= 1")
    _check(d.max_sentences >= 1, f"max_sentences={d.max_sentences} must be >= 1")
    _check(d.text_vector in TEXT_VECTORS, f"text_vector={d.text_vector!r} must be one of {', '.join(TEXT_VECTORS)}")
    for name in ("alignn_layers", "gcn_layers"):
        _check(getattr(m, name) >= 0, f"{name}={getattr(m, name)} must be >= 0")
    for name in ("hidden_features", "embedding_features", "edge_input_features", "triplet_input_features",
                 "text_projection_dim", "middle_fusion_hidden_dim", "cross_modal_hidden_dim", "cross_modal_num_heads"):
        _check(getattr(m, name) >= 1, f"{name}={getattr(m, name)} must be >= 1")
    for name in ("graph_dropout", "middle_fusion_dropout", "cross_modal_dropout"):
        _check(0.0 <= getattr(m, name) < 1.0, f"{name}={getattr(m, name)} must lie in [0, 1)")
    if m.use_middle_fusion and not m.graph_only:
        bad = [i for i in parse_layers(m.middle_fusion_layers) if not 0 <= i < m.alignn_layers]
        _check(not bad, f"middle_fusion_layers={m.middle_fusion_layers!r} names layer(s) {bad}, but the model has "
                        f"alignn_layers={m.alignn_layers} (valid indices 0..{m.alignn_layers - 1}); pick indices in "
                        "that range or raise alignn_layers")
    if m.use_cross_modal and not m.graph_only:
        _check(m.cross_modal_hidden_dim % m.cross_modal_num_heads == 0,
               f"cross_modal_num_heads={m.cross_modal_num_heads} must divide cross_modal_hidden_dim="
               f"{m.cross_modal_hidden_dim}; choose e.g. 1, 2, 4 or 8 heads with a width of 256")
    _check(m.middle_fusion_initial_scale > 0 and math.isfinite(m.middle_fusion_initial_scale),
           f"middle_fusion_initial_scale={m.middle_fusion_initial_scale} must be a finite number > 0")
    _check(m.contrastive_weight >= 0, f"contrastive_weight={m.contrastive_weight} must be >= 0")
    _check(m.contrastive_temperature > 0, f"contrastive_temperature={m.contrastive_temperature} must be > 0")
    _check(t.epochs >= 1, f"epochs={t.epochs} must be >= 1")
    _check(t.batch_size >= 1, f"batch_size={t.batch_size} must be >= 1")
    _check(t.learning_rate > 0, f"learning_rate={t.learning_rate} must be > 0")
    _check(t.weight_decay >= 0, f"weight_decay={t.weight_decay} must be >= 0")
    _check(t.warmup_steps >= 0, f"warmup_steps={t.warmup_steps} must be >= 0")
    _check(t.grad_clip_norm >= 0, f"grad_clip_norm={t.grad_clip_norm} must be >= 0 (0 = off)")
    _check(t.early_stopping_patience >= 0, f"early_stopping_patience={t.early_stopping_patience} must be >= 0")
    _check(t.max_text_scale > 0, f"max_text_scale={t.max_text_scale} must be > 0")
    _check(t.num_workers >= 0, f"num_workers={t.num_workers} must be >= 0")
    _check(t.graph_backend in GRAPH_BACKENDS,
           f"graph_backend={t.graph_backend!r} must be one of {', '.join(GRAPH_BACKENDS)}")
    _check(t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"),
           f"device={t.device!r} must be auto, cpu, cuda or cuda:N")

