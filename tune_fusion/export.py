"""A checkpoint's model back in use: rebuild its network and its run on the prepared data, export it, rescale its
text, predict with it. The checkpoint format itself (reading, checking, writing) is ``tune_fusion.checkpoint``'s.

An exported ``best_model.pt`` is plain data (``torch.load(..., weights_only=True)``) whose ``model`` key holds the
best-by-validation state dict, so the original research tools that read ``ckpt['model']`` keep working.

Example:
    >>> from tune_fusion.export import load_model
    >>> model = load_model("export/best_model.pt")
    >>> model.predict(records)  # jarvis Atoms or dft_3d records -> numpy array in the target's units
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jarvis.core.atoms import Atoms

from tune_fusion.checkpoint import checkpoint_config, load_checkpoint, plain_checkpoint, save_checkpoint, weights
from tune_fusion.config import SAMPLE_DATASET, Config
from tune_fusion.data import PreparedData, Standardizer, make_loader, prepare
from tune_fusion.data.arrays import TextArrays
from tune_fusion.data.cache import is_complete, load
from tune_fusion.data.embed import embed_texts
from tune_fusion.data.graphs import build_chunk, graph_arrays
from tune_fusion.data.pool import process_map
from tune_fusion.data.sources import sidecar_path
from tune_fusion.data.text import DescriptionStore, fill_descriptions
from tune_fusion.errors import ConfigError, DataError
from tune_fusion.model import FusionNetwork
from tune_fusion.train import TrainedModel, pick_device, place_model, predict
from tune_fusion.units import unit

__all__ = ["EXPORT_FILE", "FusionPredictor", "build_network", "check_scale_factor", "export_best", "load_model",
           "load_weights", "open_model", "scaled_text_state"]

log = logging.getLogger(__name__)

EXPORT_FILE = "best_model.pt"


def build_network(ckpt: Mapping[str, Any], path: str | Path) -> FusionNetwork:
    """The checkpoint's network (on the CPU) holding its best weights."""
    cfg = checkpoint_config(ckpt, path)
    try:
        network = FusionNetwork(cfg.model, int(ckpt["dims"]["atom_feature_dim"]), int(ckpt["dims"]["text_dim"]))
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"checkpoint {path}: its 'dims' entry is unusable ({err!r}); the file is corrupt") from None
    load_weights(network, weights(ckpt), path)
    return network


def load_weights(model: FusionNetwork, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """``model.load_state_dict(state)``; a state dict that does not fit the config is a DataError naming ``path``."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as err:
        reason = str(err).strip().splitlines()[0][:200]
        raise DataError(f"checkpoint {path}: its weights do not fit its config ({reason}); the file is corrupt or "
                        "was edited by hand") from None


def open_model(ckpt: Mapping[str, Any], path: str | Path, device: str = "auto", cache_dir: str | None = None,
               data: PreparedData | None = None, graph_backend: str = "auto") -> TrainedModel:
    """The checkpoint's best weights on its prepared data, ready to evaluate (``.predict(split)``). ``cache_dir``
    points at the prepared caches when they moved; ``data`` reuses data already open (checked against the
    checkpoint's fingerprint); ``graph_backend`` is the message-passing path here (either path runs any
    checkpoint)."""
    cfg = checkpoint_config(ckpt, path)
    if cache_dir:
        cfg = cfg.replace({"cache_dir": cache_dir})
    if data is None or data.fingerprint != ckpt["dataset_fingerprint"]:
        data, _ = prepare(cfg.data)
    earlier = data.path.with_name(f"{data.path.name.rsplit('-', 1)[0]}-{ckpt['dataset_fingerprint']}")
    if data.fingerprint != ckpt["dataset_fingerprint"] and is_complete(earlier):
        data = load(earlier)  # the view it was trained on, prepared by an earlier version's rules (same dataset)
    if data.fingerprint != ckpt["dataset_fingerprint"]:
        if "text_vector" not in ckpt["config"]:
            raise DataError(f"checkpoint {path} was made by an earlier tune-fusion whose prepared caches this version "
                            "cannot open; tune_fusion.export.load_model(path).predict(...) still uses it, but to "
                            "evaluate it on its splits retrain it with this version")
        raise DataError(f"checkpoint {path} was trained on prepared data {ckpt['dataset_fingerprint']}, but its "
                        f"settings now give {data.fingerprint} ({data.path}): the dataset file changed, or its cache was "
                        "prepared by an earlier version and is gone; analyse it with the original dataset and cache "
                        "(--cache_dir), or retrain it")
    target = pick_device(device)
    model = place_model(build_network(ckpt, path), target, graph_backend)
    return TrainedModel(cfg, data, model, Standardizer(**ckpt["standardizer"]), target)


def export_best(ckpt_path: str | Path, out_dir: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Write ``best_model.pt``, ``config.json``, ``metrics.json`` (with the dataset fingerprint) and
    ``split_ids.json`` to ``out_dir``; returns the path of ``best_model.pt``."""
    out = Path(out_dir).expanduser()
    ckpt = load_checkpoint(ckpt_path)
    payload = plain_checkpoint(ckpt, weights(ckpt), metrics, ckpt_path)
    save_checkpoint(payload, out / EXPORT_FILE)
    (out / "config.json").write_text(json.dumps(payload["config"], indent=2))
    (out / "metrics.json").write_text(json.dumps({**payload["metrics"], "dataset_fingerprint":
                                                  payload["dataset_fingerprint"], "source": str(ckpt_path)}, indent=2))
    (out / "split_ids.json").write_text(json.dumps(payload.get("split_ids", {})))
    log.debug("exported %s to %s", ckpt_path, out)
    return out / EXPORT_FILE


def check_scale_factor(factor: float) -> None:
    """A text scale factor must be a finite number > 0: ConfigError otherwise."""
    if not (math.isfinite(factor) and factor > 0):
        raise ConfigError(f"scale_text={factor}: the factor must be a finite number > 0, e.g. 12")


def scaled_text_state(ckpt: Mapping[str, Any], path: str | Path, factor: float) -> dict[str, torch.Tensor]:
    """The best weights with the last ``text_transform`` Linear of every fused layer multiplied by ``factor``
    (weight and bias, so the transformed text ``u`` is exactly ``factor`` times larger)."""
    check_scale_factor(factor)
    network = build_network(ckpt, path)
    if not len(network.middle_fusion_modules):
        raise ConfigError(f"checkpoint {path} has no middle-fusion layer (use_middle_fusion is off); scaling the "
                          "text needs a model trained with use_middle_fusion True")
    with torch.no_grad():
        for module in network.middle_fusion_modules.values():
            last = module.text_transform[-1]
            if not isinstance(last, torch.nn.Linear):
                raise DataError(f"checkpoint {path}: the last text_transform module is {type(last).__name__}, "
                                "not a Linear layer; it cannot be rescaled")
            last.weight.mul_(factor)
            last.bias.mul_(factor)
    return network.state_dict()


class FusionPredictor:
    """A reloaded model: ``predict(structures)`` -> numpy array in the target's units."""

    def __init__(self, network: FusionNetwork, cfg: Config, standardizer: Standardizer, device: torch.device) -> None:
        self.network, self.cfg, self.standardizer, self.device = network.eval(), cfg, standardizer, device

    def __repr__(self) -> str:
        m = self.cfg.model
        kind = "graph-only" if m.graph_only else ", ".join(
            part for part, on in ((f"middle fusion at layers {m.middle_fusion_layers} (0-based)", m.use_middle_fusion),
                                  ("cross-modal attention", m.use_cross_modal)) if on) or "graph + text"
        return (f"FusionPredictor(target={self.cfg.data.target!r}, unit={unit(self.cfg.data.target)!r}, model: "
                f"{kind}, {sum(p.numel() for p in self.network.parameters()):,} parameters, device={self.device})")

    def predict(self, structures: Sequence[Any], batch_size: int = 64) -> np.ndarray:
        """Predict for jarvis ``Atoms`` or dft_3d records (``atoms`` dict, optional ``description``). A missing
        description is looked up by structure, as preparation does (the prepared caches' descriptions, the
        model's dataset's or the bundled data's ``.descriptions.csv.gz``); only a structure described nowhere is
        described anew (robocrystallographer, 1-5 s each; a warning says how many). Graph-only models need no
        text."""
        if not len(structures):
            return np.zeros(0)
        d = self.cfg.data
        atoms, texts = zip(*(_as_atoms(s, i) for i, s in enumerate(structures)))
        crystals, tables = build_chunk([a.to_dict() for a in atoms], d.cutoff, d.max_neighbors, d.atom_features)
        bad = [i for i, c in enumerate(crystals) if isinstance(c, str)]
        if bad:
            raise DataError(f"structure {bad[0]} cannot become a graph ({crystals[bad[0]]}); predict() needs "
                            "structures with at least one neighbour within the cutoff")
        keys = [str(i) for i in range(len(crystals))]
        data = PreparedData(Path("."), {"key": "predict"}, [graph_arrays(crystals, keys, [tables])],
                            [self._text_arrays(list(atoms), list(texts))],
                            {"ids": np.array(keys), "graph_ref": _rows(len(keys)), "text_ref": _rows(len(keys)),
                             "split_all": np.arange(len(keys))}, torch.zeros(len(keys), dtype=torch.float64))
        loader = make_loader(data, "all", batch_size, self.standardizer, max_sentences=d.max_sentences,
                             text_vector=d.text_vector)
        return predict(self.network, loader, self.device, self.standardizer)["prediction"]

    def _text_arrays(self, atoms: list[Atoms], texts: list[str | None]) -> TextArrays:
        n, dim = len(atoms), self.network.text_dim
        if self.cfg.model.graph_only:  # no text anywhere: placeholders the model never reads
            return TextArrays({"text": np.zeros((n, dim), np.float32), "text_mean": np.zeros((n, dim), np.float32),
                               "sentences": np.zeros((n, dim), np.float32), "sentence_offsets": np.arange(n + 1)})
        texts, _counts = fill_descriptions([f"structure {i}" for i in range(n)], atoms, texts,
                                           DescriptionStore(Path(self.cfg.data.cache_dir).expanduser()
                                                            / "descriptions.csv.gz"),
                                           _known_beside(self.cfg.data.dataset), _describe_with_a_warning)
        return embed_texts(texts, self.cfg.data.text_encoder)


def _known_beside(dataset: str) -> Path | None:
    """The descriptions shipped beside the model's dataset (``<stem>.descriptions.csv.gz``), else the bundled sample
    data's: preparation reads the same file, so a structure described there is never described again."""
    for path in (Path(dataset).expanduser(), SAMPLE_DATASET):
        if sidecar_path(path).is_file():
            return sidecar_path(path)
    return None


def _describe_with_a_warning(fn: Any, chunks: Sequence[Any], desc: str) -> list[Any]:
    """Generation for the structures no stored description covers, said first (it takes a while)."""
    log.warning("generating %d text description(s) with robocrystallographer (1-5 s each); pass records with a "
                "'description' to skip this", sum(len(c) for c in chunks))
    return process_map(fn, chunks, desc)


def _rows(n: int) -> np.ndarray:
    """(n, 2) references to rows 0..n-1 of shard 0."""
    return np.stack([np.zeros(n, dtype=np.int64), np.arange(n)], axis=1)


def _as_atoms(item: Any, i: int) -> tuple[Atoms, str | None]:
    if isinstance(item, Atoms):
        return item, None
    if isinstance(item, Mapping) and isinstance(item.get("atoms"), Mapping):
        text = item.get("description")
        return Atoms.from_dict(item["atoms"]), text.strip() if isinstance(text, str) and text.strip() else None
    if isinstance(item, Mapping) and "lattice_mat" in item:
        return Atoms.from_dict(item), None
    raise DataError(f"structure {i} is a {type(item).__name__}; predict() takes jarvis Atoms or dft_3d records "
                    "(dicts with an 'atoms' entry and optionally a 'description')")


def load_model(path: str | Path, device: str = "cpu", graph_backend: str = "auto") -> FusionPredictor:
    """Rebuild the model of an exported (or any tune-fusion) checkpoint, with ``weights_only=True`` loading, on
    ``device`` with message-passing path ``graph_backend`` (auto: DGL on CPU, torch on CUDA)."""
    ckpt = load_checkpoint(path)
    target = pick_device(device)
    return FusionPredictor(place_model(build_network(ckpt, path), target, graph_backend),
                           checkpoint_config(ckpt, path), Standardizer(**ckpt["standardizer"]), target)
