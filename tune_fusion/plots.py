"""The analysis figures (PNG, matplotlib's Agg canvas; no pyplot state, no display needed).

Every function takes plain data (trial rows, arrays, dicts), writes one PNG and returns its path. Trials are
duck-typed: ``trial_id``, ``status``, ``params``, ``history`` (the reported rows) and ``best_val_mae``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from tune_fusion.names import Status

# trial status -> (line style, marker at the last epoch, colour)
STATUS_STYLE = {
    Status.COMPLETED: ("-", "o", "tab:blue"),
    Status.STOPPED_BY_SCHEDULER: ("--", "x", "tab:gray"),
    Status.DIVERGED: (":", "v", "tab:red"),
    Status.CONFIG_ERROR: (":", "v", "tab:red"),
    Status.ERRORED: (":", "v", "tab:red"),
    Status.RUNNING: ("-", ">", "tab:green"),
    Status.INTERRUPTED: ("-.", "s", "tab:orange"),
}
assert set(STATUS_STYLE) == set(Status), "every trial status needs a style"


def _figure(ncols: int = 1, nrows: int = 1, width: float = 6.0, height: float = 4.0) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) if v is not None and math.isfinite(float(v)) else math.nan for v in values]


def learning_curves(trials: Sequence[Any], path: Path) -> Path:
    """Validation MAE per epoch of every trial; the line style and end marker say how each trial ended."""
    fig, (ax,) = _figure(width=7.5)
    for trial in trials:
        rows = [r for r in trial.history if "val_mae" in r]
        if not rows:
            continue
        style, marker, colour = STATUS_STYLE[trial.status]
        epochs = [r.get("training_iteration", i + 1) for i, r in enumerate(rows)]
        ax.plot(epochs, _finite([r["val_mae"] for r in rows]), linestyle=style, color=colour, alpha=0.8, lw=1.2)
        ax.plot(epochs[-1:], _finite([rows[-1]["val_mae"]]), marker=marker, color=colour, linestyle="none")
    present = [s for s in Status if any(t.status == s for t in trials)]
    handles = [Line2D([], [], linestyle=STATUS_STYLE[s][0], marker=STATUS_STYLE[s][1], color=STATUS_STYLE[s][2],
                      label=s.label) for s in present]
    ax.legend(handles=handles, title="trial status", fontsize=8)
    ax.set(xlabel="epoch", ylabel="validation MAE", title=f"Learning curves of {len(trials)} trials")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _is_numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _scatter_param(ax: Axes, name: str, points: list[tuple[Any, float, str]]) -> None:
    values = [v for v, _, _ in points]
    colours = [STATUS_STYLE[s][2] for _, _, s in points]
    maes = [m for _, m, _ in points]
    if _is_numeric(values):
        ax.scatter(values, maes, c=colours, s=30)
        positive = [v for v in values if v > 0]
        if len(positive) == len(values) and max(values) / min(values) > 20:
            ax.set_xscale("log")
    else:
        labels = sorted({str(v) for v in values})
        ax.scatter([labels.index(str(v)) for v in values], maes, c=colours, s=30)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set(xlabel=name, ylabel="best validation MAE")
    ax.grid(alpha=0.3)


def params_vs_metric(trials: Sequence[Any], params: Sequence[str], path: Path) -> Path:
    """One panel per searched parameter: its value against the trial's best validation MAE (colour = status)."""
    cols = min(3, max(1, len(params)))
    rows = max(1, math.ceil(len(params) / cols))
    fig, axes = _figure(cols, rows, width=4.2, height=3.4)
    for ax, name in zip(axes, params):
        points = [(t.params[name], t.best_val_mae, t.status) for t in trials
                  if name in t.params and t.best_val_mae is not None]
        if points:
            _scatter_param(ax, name, points)
        else:
            ax.set_title(f"{name}: no trial with a validation MAE")
    for ax in axes[len(params):]:
        ax.set_visible(False)
    fig.suptitle("Searched parameters against best validation MAE")
    return _save(fig, path)


def text_scale_curves(trials: Sequence[Any], path: Path) -> Path | None:
    """``text_scale`` of every fused layer per epoch for the given (top) trials; None when none has a fused layer."""
    fig, (ax,) = _figure(width=7.0)
    drawn = 0
    for trial in trials:
        keys = sorted({k for r in trial.history for k in r if k.startswith("text_scale/")})
        for key in keys:
            rows = [r for r in trial.history if key in r]
            ax.plot([r.get("training_iteration", i + 1) for i, r in enumerate(rows)], [r[key] for r in rows],
                    marker=".", label=f"{trial.trial_id} {key.split('/', 1)[1]}")
            drawn += 1
    if not drawn:
        return None
    ax.set(xlabel="epoch", ylabel="text_scale", title="text_scale over epochs (top trials)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def parity(target: np.ndarray, prediction: np.ndarray, path: Path, title: str) -> Path:
    """Prediction against target, with the y = x line."""
    fig, (ax,) = _figure(width=5.0, height=5.0)
    ax.scatter(target, prediction, s=14, alpha=0.7)
    both = np.concatenate([np.asarray(target, float), np.asarray(prediction, float)])
    low, high = float(both.min()), float(both.max())
    pad = 0.05 * (high - low or 1.0)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="black", lw=1)
    ax.set(xlabel="target", ylabel="prediction", title=title, xlim=(low - pad, high + pad), ylim=(low - pad, high + pad))
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def importance_bar(importances: Mapping[str, float], path: Path) -> Path:
    """Horizontal bars of parameter importance, the most important on top."""
    names = list(importances)[::-1]
    fig, (ax,) = _figure(width=6.0, height=1.0 + 0.45 * len(names))
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set(xlabel="importance (Optuna, normalised)", title="Parameter importance for validation MAE")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


# (summary key, axis label) of the per-layer fusion numbers drawn side by side
FUSION_METRICS = (("text_scale", "text_scale"), ("norm_ratio", "node/text norm ratio"),
                  ("cos_before", "cos(h_in, u)"), ("cos_after", "cos(h_out, u)"),
                  ("relative_change", "|h_out - h_in| / |h_in|"), ("alpha_std", "alpha std"))


def fusion_summary(summaries: Mapping[str, Mapping[str, Any]], path: Path) -> Path | None:
    """Grouped bars per fused layer for each labelled diagnosis (top-k trials, or the two compared models)."""
    bars = [(label, layer, values) for label, summary in summaries.items()
            for layer, values in summary.get("layers", {}).items()]
    if not bars:
        return None
    fig, axes = _figure(3, 2, width=4.0, height=3.2)
    names = [f"{label}\n{layer}" for label, layer, _ in bars]
    for ax, (key, label) in zip(axes, FUSION_METRICS):
        values = [v["alpha"]["std"] if key == "alpha_std" else v[key] for _, _, v in bars]
        ax.bar(range(len(bars)), values, color=[f"C{i % 10}" for i in range(len(bars))])
        ax.set_xticks(range(len(bars)), names, fontsize=7)
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Fusion diagnostics per fused layer (validation crystals)")
    return _save(fig, path)


def alpha_figures(arrays: Mapping[str, np.ndarray], per_element: Mapping[str, Mapping[str, Any]], out_dir: Path,
                  tag: str) -> list[Path]:
    """The alpha figures of the original paper scripts, per fused layer: the distribution of per-crystal alpha
    and the mean alpha per element (elements ordered by atomic number)."""
    paths = []
    for key in sorted(k for k in arrays if k.startswith("crystal_alpha_")):
        layer = key[len("crystal_alpha_"):]
        fig, (left, right) = _figure(2, 1, width=5.5, height=3.8)
        left.hist(arrays[key], bins=30, color="tab:blue", alpha=0.8)
        left.set(xlabel="alpha (mean gate over a crystal's atoms)", ylabel="crystals",
                 title=f"Per-crystal alpha, {layer}")
        elements = per_element.get(layer, {})
        symbols = list(elements)
        right.bar(range(len(symbols)), [elements[s]["mean"] for s in symbols], color="tab:orange")
        right.set_xticks(range(len(symbols)), symbols, fontsize=7, rotation=90 if len(symbols) > 20 else 0)
        right.set(ylabel="mean alpha", title=f"Per-element alpha, {layer}")
        low = min((elements[s]["mean"] for s in symbols), default=0.0)
        right.set_ylim(bottom=max(0.0, low - 0.05))
        fig.suptitle(tag)
        paths.append(_save(fig, out_dir / f"alpha_{tag}_{layer}.png"))
    return paths
