"""Fusion diagnostics of trained checkpoints on validation crystals, model comparison and text rescaling.

For every middle-fusion layer (``u`` = scaled transformed text broadcast to atoms, ``h_in``/``h_out`` = atom
features entering/leaving the module, alpha = per-atom gate mean over features):

- ``text_scale``; ``norm_ratio`` = mean ||h_in|| / mean ||u|| (the node/text ratio of the original tools);
- ``cos_before`` / ``cos_after`` = mean over atoms of cos(h_in, u) / cos(h_out, u);
- ``relative_change`` = mean over atoms of ||h_out - h_in|| / ||h_in||;
- alpha mean, std, min, max, range and the mean per element; per-crystal and per-atom alpha as arrays.

Unlike the original scripts these run on the validation split (all of it or its first N crystals), after fusion
as well as before, with every size read from the model.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jarvis.core.specie import atomic_numbers_to_symbols
from torch.nn import functional as F

from tune_fusion import plots
from tune_fusion.checkpoint import load_checkpoint, plain_checkpoint, save_checkpoint
from tune_fusion.data import Batch, PreparedData
from tune_fusion.errors import DataError
from tune_fusion.export import load_weights, open_model, scaled_text_state
from tune_fusion.model import ModelOutput
from tune_fusion.report import write_csv
from tune_fusion.results import Comparison, TextScaling, as_dict
from tune_fusion.train import TrainedModel

__all__ = ["LOW_COSINE", "NORM_RATIO_RANGE", "TEXT_SCALE_COLLAPSING", "TEXT_SCALE_EXPLODING", "Diagnosis",
           "atom_measures", "compare", "diagnose", "diagnose_checkpoint", "first_of_split", "fusion_warnings",
           "indices_for_ids", "scale_text", "write_diagnosis"]

log = logging.getLogger(__name__)


@dataclass
class Diagnosis:
    """``summary``: JSON-compatible numbers; ``arrays``: ``jid``, ``atom_z``, ``atom_crystal`` (position in
    ``jid``), and per fused layer ``alpha_<layer>`` (per atom) and ``crystal_alpha_<layer>`` (per crystal)."""

    summary: dict[str, Any]
    arrays: dict[str, np.ndarray]


def first_of_split(data: PreparedData, split: str = "val", crystals: int = 0) -> torch.Tensor:
    """Crystal indices of ``split``, the first ``crystals`` of them when > 0 (all, with a warning saying so, when
    the split holds fewer)."""
    indices = data.split(split)
    if crystals > len(indices):
        log.warning("%d crystals asked for (--crystals), but the %s split holds %d: all %d are used", crystals,
                    split, len(indices), len(indices))
    return indices[:crystals] if crystals > 0 else indices


def indices_for_ids(data: PreparedData, ids: list[str], what: str) -> torch.Tensor:
    """Crystal indices of ``ids`` in ``data``; DataError naming the absent ones."""
    position = {jid: i for i, jid in enumerate(data.ids)}
    missing = [jid for jid in ids if jid not in position]
    if missing:
        raise DataError(f"{what} was prepared without crystal(s) {', '.join(missing[:5])} of the other model's "
                        "validation split; compare models trained on the same dataset and split")
    return torch.tensor([position[jid] for jid in ids], dtype=torch.int64)


def atom_measures(record: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-atom numbers (N,) from one module's ``last_diagnostics`` (h_in, u, gate, h_out, each (N, hidden))."""
    h_in, u, h_out = record["h_in"], record["u"], record["h_out"]
    h_norm = h_in.norm(dim=1)
    return {"h_norm": h_norm, "u_norm": u.norm(dim=1), "cos_before": F.cosine_similarity(h_in, u, dim=1),
            "cos_after": F.cosine_similarity(h_out, u, dim=1),
            "relative_change": (h_out - h_in).norm(dim=1) / h_norm.clamp_min(1e-12),
            "alpha": record["gate"].mean(dim=1)}


def diagnose(trained: TrainedModel, indices: torch.Tensor) -> Diagnosis:
    """Run the model (eval mode, weights as loaded) over crystals ``indices`` recording every fused layer."""
    model, data = trained.model, trained.data
    per_atom: dict[str, dict[str, list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))
    crystal_alpha: dict[str, list[torch.Tensor]] = defaultdict(list)
    text_norms, atom_z, atom_counts = [], [], []

    def record(batch: Batch, _output: ModelOutput) -> None:
        text_norms.append(batch.text.norm(dim=1).cpu())
        atom_z.append(batch.atomic_numbers.cpu())
        counts = batch.atoms_per_crystal.tolist()
        atom_counts.extend(counts)
        for name, module in model.middle_fusion_modules.items():
            for key, value in atom_measures(module.last_diagnostics).items():
                per_atom[name][key].append(value.cpu())
            alpha = per_atom[name]["alpha"][-1]
            crystal_alpha[name].append(torch.stack([a.mean() for a in alpha.split(counts)]))

    model.set_record_diagnostics(True)
    try:
        found = trained.predict(indices, hook=record)
    finally:
        model.set_record_diagnostics(False)
    z = torch.cat(atom_z)
    arrays = {"jid": np.array([str(data.ids[i]) for i in found["index"]]), "atom_z": z.numpy(),
              "atom_crystal": np.repeat(np.arange(len(atom_counts)), atom_counts)}
    layers = {}
    for name, measures in per_atom.items():
        values = {key: torch.cat(parts).double() for key, parts in measures.items()}
        layers[name] = _layer_summary(values, float(model.middle_fusion_modules[name].text_scale.detach()), z,
                                      torch.from_numpy(arrays["atom_crystal"]))
        arrays[f"alpha_{name}"] = values["alpha"].numpy()
        arrays[f"crystal_alpha_{name}"] = torch.cat(crystal_alpha[name]).double().numpy()
    summary = {"target": trained.cfg.data.target, "split": "val", "crystals": found["crystals"],
               "atoms": int(z.numel()), "val_mae": found["mae"],
               "val_rmse": found["rmse"], "text_input_norm": float(torch.cat(text_norms).double().mean()),
               "layers": layers}
    return Diagnosis(summary, arrays)


def _layer_summary(values: dict[str, torch.Tensor], text_scale: float, z: torch.Tensor, crystal: torch.Tensor,
                   ) -> dict[str, Any]:
    alpha = values["alpha"]
    per_element = {}
    for number in sorted(set(z.tolist())):
        where = z == number
        chosen = alpha[where]
        per_element[atomic_numbers_to_symbols([number])[0]] = {
            "atoms": len(chosen), "crystals": len(set(crystal[where].tolist())), "mean": float(chosen.mean()),
            "std": float(chosen.std(unbiased=False))}
    summary = {
        "text_scale": text_scale,
        "h_in_norm": float(values["h_norm"].mean()), "u_norm": float(values["u_norm"].mean()),
        "norm_ratio": float(values["h_norm"].mean() / values["u_norm"].mean().clamp_min(1e-12)),
        "cos_before": float(values["cos_before"].mean()), "cos_after": float(values["cos_after"].mean()),
        "relative_change": float(values["relative_change"].mean()),
        "alpha": {"mean": float(alpha.mean()), "std": float(alpha.std(unbiased=False)), "min": float(alpha.min()),
                  "max": float(alpha.max()), "range": float(alpha.max() - alpha.min())},
        "alpha_per_element": per_element,
    }
    summary["warnings"] = fusion_warnings(summary)
    return summary


# The original guide's checks. text_scale: above 50 it explodes, below 0.1 the text is switched off (marks that do
# not depend on the encoder). The node/text norm ratio and the cosine: the guide's "balanced 0.9-1.2" and "low below
# 0.3" assume MatSciBERT vectors; with the default MiniLM vectors (L2-normalised), 8 trained fused models on the
# bundled data (text scales 4-18, 11 fused layers, validation MAE 0.29-0.34 eV/atom) measured a ratio of 0.85-4.2
# and a cosine after fusion of 0.11-0.57. The bounds: about a factor 4 beyond the measured ratios (0.2, 16), half the lowest cosine.
TEXT_SCALE_EXPLODING, TEXT_SCALE_COLLAPSING = 50.0, 0.1
NORM_RATIO_RANGE = (0.2, 16.0)
LOW_COSINE = 0.05


def fusion_warnings(layer: dict[str, Any]) -> list[str]:
    """The guide's checks on one fused layer's diagnosis, as warnings with the numbers (empty when all pass)."""
    found = []
    scale, ratio, cosine = abs(layer["text_scale"]), layer["norm_ratio"], layer["cos_after"]
    if scale > TEXT_SCALE_EXPLODING:
        found.append(f"text_scale {scale:.3g} > {TEXT_SCALE_EXPLODING:g}: exploding; lower middle_fusion_initial_scale "
                     "or turn on middle_fusion_use_gate_norm")
    if scale < TEXT_SCALE_COLLAPSING:
        found.append(f"text_scale {scale:.3g} < {TEXT_SCALE_COLLAPSING:g}: collapsing, the text is switched off; raise "
                     "middle_fusion_initial_scale or fix it (middle_fusion_use_learnable_scale false)")
    low, high = NORM_RATIO_RANGE
    if not low <= ratio <= high:
        side = "atoms drown the text" if ratio > high else "the text drowns the atoms"
        found.append(f"node/text norm ratio {ratio:.3g} outside [{low:g}, {high:g}]: {side}; adjust the text scale")
    if cosine < LOW_COSINE:
        found.append(f"cosine of fused atoms and text {cosine:.3g} < {LOW_COSINE:g}: the text barely shapes the atom "
                     "features; try middle_fusion_use_gate_norm or a larger text scale")
    return found


def write_diagnosis(diagnosis: Diagnosis, out_dir: Path, tag: str, source: str) -> dict[str, Any]:
    """``diagnostics_<tag>.json``, ``alpha_<tag>.npz`` and the alpha figures; returns the summary with file names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    per_element = {layer: v["alpha_per_element"] for layer, v in diagnosis.summary["layers"].items()}
    figures = [plots.save(fig, out_dir / f"{name}.png", vector=True).name
               for name, fig in plots.alpha_figures(diagnosis.arrays, per_element, tag).items()]
    np.savez(out_dir / f"alpha_{tag}.npz", **diagnosis.arrays)
    rows = [{"layer": layer, "element": element, **values} for layer, elements in per_element.items()
            for element, values in elements.items()]
    if rows:
        write_csv(rows, out_dir / f"alpha_by_element_{tag}.csv")
    summary = {"checkpoint": source, **diagnosis.summary, "arrays": f"alpha_{tag}.npz", "figures": figures,
               "alpha_by_element": f"alpha_by_element_{tag}.csv" if rows else None}
    (out_dir / f"diagnostics_{tag}.json").write_text(json.dumps(summary, indent=1))
    for layer, values in diagnosis.summary["layers"].items():
        for warning in values["warnings"]:
            log.warning("%s %s: %s", source, layer, warning)
    if not diagnosis.summary["layers"]:
        log.info("%s has no middle-fusion layer: only its validation MAE is reported", source)
    return summary



def diagnose_checkpoint(path: str | Path, out_dir: Path, tag: str, crystals: int = 0, device: str = "auto",
                        cache_dir: str | None = None, data: PreparedData | None = None) -> dict[str, Any]:
    """Diagnose one checkpoint on its validation split (the first ``crystals`` when > 0) and write the results."""
    trained = open_model(load_checkpoint(path), path, device, cache_dir, data)
    return write_diagnosis(diagnose(trained, first_of_split(trained.data, "val", crystals)), out_dir, tag, str(path))


def compare(path_a: str | Path, path_b: str | Path, out_dir: Path, crystals: int = 0, device: str = "auto",
            cache_dir: str | None = None) -> Comparison:
    """Two checkpoints side by side on the same validation crystals (those of ``path_a``, by id)."""
    model_a = open_model(load_checkpoint(path_a), path_a, device, cache_dir)
    indices_a = first_of_split(model_a.data, "val", crystals)
    ids = [str(model_a.data.ids[i]) for i in indices_a.tolist()]
    a = write_diagnosis(diagnose(model_a, indices_a), out_dir, "A", str(path_a))
    del model_a
    model_b = open_model(load_checkpoint(path_b), path_b, device, cache_dir)
    b = write_diagnosis(diagnose(model_b, indices_for_ids(model_b.data, ids, str(path_b))), out_dir, "B",
                        str(path_b))
    figure = plots.fusion_summary({"A": a, "B": b})
    name = plots.save(figure, out_dir / "compare_fusion.png", vector=True).name if figure else None
    result = Comparison(len(ids), b["val_mae"] - a["val_mae"], a, b, name)
    (out_dir / "compare.json").write_text(json.dumps(as_dict(result), indent=1))
    return result


def scale_text(path: str | Path, factor: float, out_dir: Path, crystals: int = 0, device: str = "auto",
               cache_dir: str | None = None) -> TextScaling:
    """Write ``scaled_x<factor>.pt`` (last text_transform layer times ``factor``) and measure validation MAE
    and diagnostics before and after, on the same crystals (``scale_text_x<factor>.json``)."""
    ckpt = load_checkpoint(path)
    state = scaled_text_state(ckpt, path, factor)
    trained = open_model(ckpt, path, device, cache_dir)
    indices = first_of_split(trained.data, "val", crystals)
    before = write_diagnosis(diagnose(trained, indices), out_dir, "before_scaling", str(path))
    load_weights(trained.model, state, path)
    scaled_path = out_dir / f"scaled_x{factor:g}.pt"
    after = write_diagnosis(diagnose(trained, indices), out_dir, f"scaled_x{factor:g}", str(scaled_path))
    metrics = {"scale_factor": factor, "val_mae_before": before["val_mae"], "val_mae_after": after["val_mae"],
               "val_crystals": len(indices)}
    save_checkpoint({**plain_checkpoint(ckpt, state, metrics, path), "val_mae": after["val_mae"]}, scaled_path)
    result = TextScaling(**metrics, checkpoint=str(path), scaled_checkpoint=str(scaled_path), before=before,
                         after=after)
    (out_dir / f"scale_text_x{factor:g}.json").write_text(json.dumps(as_dict(result), indent=1))
    log.debug("text scaled x%g: val MAE %.4f -> %.4f on %d crystals", factor, before["val_mae"], after["val_mae"],
              len(indices))
    return result
