"""What the text is worth: the validation MAE of a model with each crystal's own description, with descriptions
shuffled among the crystals, and with no description.

- **own**: every crystal reads its own description (the model as trained);
- **shuffled**: the validation crystals' descriptions permuted among them (``permutations`` fixed-seed shuffles;
  mean and standard deviation over them): the text is real text but not this crystal's;
- **none**: every crystal reads the same neutral text, the mean of the training crystals' text vectors (and one
  sentence, the mean of their sentence vectors): an input the model has seen the like of, carrying nothing about
  any crystal.

The text's share is MAE(shuffled) - MAE(own) and MAE(none) - MAE(own), each with a 95% interval from the
crystal-by-crystal paired differences (1.96 standard errors of their mean). The verdict reads the shuffled one: it
asks whether *this crystal's* description helps, with the model's inputs kept in their usual range. A graph-only
model reads no text, so every difference is exactly 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tune_fusion.data import TextOverride
from tune_fusion.data.batching import TEXT_ARRAYS
from tune_fusion.errors import DataError
from tune_fusion.train import TrainedModel
from tune_fusion.units import with_unit

__all__ = ["SHUFFLE_SEED", "Effect", "neutral_text", "shuffles", "text_ablation", "verdict"]

SHUFFLE_SEED = 0


@dataclass(frozen=True)
class Effect:
    """MAE(condition) - MAE(own) with the half-width of its 95% interval (target units)."""

    delta: float
    ci95: float

    @property
    def measurable(self) -> bool:
        return abs(self.delta) > self.ci95


def neutral_text(trained: TrainedModel) -> tuple[np.ndarray, np.ndarray]:
    """The mean text vector and the mean sentence vector of the training split (what "no description" reads)."""
    data = trained.data
    refs = data.arrays["text_ref"][data.split("train").numpy()]
    array = TEXT_ARRAYS[trained.cfg.data.text_vector]
    vectors = np.stack([data.texts[s].arrays[array][r] for s, r in refs])
    sentences = np.concatenate([data.texts[s].sentences(r, trained.cfg.data.max_sentences) for s, r in refs])
    return vectors.mean(axis=0), sentences.mean(axis=0, keepdims=True)


def shuffles(indices: torch.Tensor, permutations: int, seed: int = SHUFFLE_SEED) -> list[dict[int, int]]:
    """``permutations`` fixed-seed shuffles of ``indices``: crystal -> the crystal whose description it reads,
    never its own (each shuffle is a random cycle through the crystals)."""
    rng = np.random.default_rng(seed)
    crystals = indices.tolist()
    out = []
    for _ in range(permutations):
        order = [crystals[i] for i in rng.permutation(len(crystals))]
        out.append({c: order[(k + 1) % len(order)] for k, c in enumerate(order)})
    return out


def _errors(found: dict[str, Any]) -> np.ndarray:
    """Absolute errors per crystal, in the order of the crystal indices."""
    order = np.argsort(found["index"])
    return np.abs(found["prediction"] - found["target"])[order]


def _effect(difference: np.ndarray) -> Effect:
    """The mean of per-crystal paired differences and the half-width of its 95% interval."""
    half = 1.96 * float(difference.std(ddof=1)) / math.sqrt(len(difference)) if len(difference) > 1 else math.inf
    return Effect(float(difference.mean()), half)


def text_ablation(trained: TrainedModel, indices: torch.Tensor | str = "val", permutations: int = 5,
                  seed: int = SHUFFLE_SEED) -> dict[str, Any]:
    """Validation MAE with own, shuffled and no text, and the text's share; see the module docstring."""
    indices = trained.data.split(indices) if isinstance(indices, str) else indices
    if len(indices) < 2:
        raise DataError(f"the text ablation needs at least 2 validation crystals to shuffle descriptions among, got "
                        f"{len(indices)}; use a larger validation split (val_ratio or n_val)")
    own = trained.predict(indices)
    baseline = _errors(own)
    shuffled_errors = [_errors(trained.predict(indices, text=TextOverride(text_of=mapping)))
                       for mapping in shuffles(indices, permutations, seed)]
    none = _errors(trained.predict(indices, text=TextOverride(constant=neutral_text(trained))))
    shuffled_maes = [float(e.mean()) for e in shuffled_errors]
    # per crystal: the mean over the shuffles of (its error with another's text - its own error); exactly 0 for a
    # model that reads no text
    effects = {"shuffled": _effect(np.mean([e - baseline for e in shuffled_errors], axis=0)),
               "none": _effect(none - baseline)}
    rows = [
        {"condition": "own", "val_mae": float(baseline.mean()), "spread": 0.0, "runs": 1, "delta_vs_own": 0.0,
         "ci95": 0.0},
        {"condition": "shuffled", "val_mae": float(np.mean(shuffled_maes)),
         "spread": float(np.std(shuffled_maes, ddof=1)) if permutations > 1 else 0.0, "runs": permutations},
        {"condition": "none", "val_mae": float(none.mean()), "spread": 0.0, "runs": 1},
    ]
    for row in rows[1:]:
        effect = effects[row["condition"]]
        row.update(delta_vs_own=effect.delta, ci95=effect.ci95)
    return {"crystals": len(baseline), "permutations": permutations, "seed": seed, "rows": rows,
            "shuffled_maes": shuffled_maes, "verdict": verdict(effects["shuffled"], float(baseline.mean()),
                                                               trained.cfg.data.target)}


def verdict(effect: Effect, own_mae: float, target: str) -> str:
    """One line: "text lowers MAE by X (Y%)", "no measurable effect" or "text hurts"."""
    share = f"{with_unit(abs(effect.delta), target)} ({100 * abs(effect.delta) / max(own_mae, 1e-12):.1f}%)"
    interval = f"± {with_unit(effect.ci95, target)} at 95%"
    if not effect.measurable:
        return (f"no measurable effect of the text: shuffling the descriptions changes the validation MAE by "
                f"{effect.delta:+.4g} {interval}")
    if effect.delta > 0:
        return f"text lowers MAE by {share} {interval} (own descriptions vs shuffled ones)"
    return f"text hurts: the model scores {share} {interval} better with shuffled descriptions"
