"""The analysis figures (matplotlib's Agg canvas; no pyplot state, no display needed).

Every function takes plain data (trial rows, arrays, dicts) and returns a ``Figure`` whose axes carry labels with
units and a legend or caption, so a reader who did not write them can read them; ``save`` writes it as PNG (and
as PDF, for papers, where asked). Trials are duck-typed: ``trial_id``, ``status``, ``params``, ``history`` (the
reported rows) and ``best_val_mae``.
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
from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter
from matplotlib.transforms import offset_copy

from tune_fusion.names import Status
from tune_fusion.units import axis_label, with_unit

__all__ = ["FUSION_CAPTION", "FUSION_METRICS", "STATUS_STYLE", "alpha_figures", "fusion_summary", "importance_bar",
           "learning_curves", "params_vs_metric", "parity", "save", "text_ablation_bars", "text_scale_curves"]

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


def save(fig: Figure, path: Path, vector: bool = False) -> Path:
    """Write ``fig`` as PNG at ``path`` (and beside it as PDF when ``vector``); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    if vector:
        fig.savefig(path.with_suffix(".pdf"))
    return path


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) if v is not None and math.isfinite(float(v)) else math.nan for v in values]


def _status_legend(ax: Axes, statuses: set, markers_only: bool = False, **kwargs: Any) -> None:
    """How each trial ended: line style and end marker (``markers_only``: the marker alone, as scatter plots draw)."""
    handles = [Line2D([], [], linestyle="none" if markers_only else STATUS_STYLE[s][0], marker=STATUS_STYLE[s][1],
                      color=STATUS_STYLE[s][2], label=s.label) for s in Status if s in statuses]
    ax.legend(handles=handles, title="trial ended", fontsize=8, **kwargs)


def learning_curves(trials: Sequence[Any], target: str, run: str | None = None) -> Figure:
    """Validation MAE per epoch of every trial, each line labelled with its trial id at its last epoch (labels
    spread apart where trials end close together); the line style and end marker say how the trial ended. ``run``:
    the figure is one standalone run's (named so), whose line needs no trial id."""
    fig, (ax,) = _figure(width=8.0, height=4.8)
    ends = []
    for trial in trials:
        rows = [r for r in trial.history if "val_mae" in r and "epoch" in r]  # not a trial that could not start
        if not rows:
            continue
        style, marker, colour = STATUS_STYLE[trial.status]
        epochs = [r["epoch"] for r in rows]
        values = _finite([r["val_mae"] for r in rows])
        ax.plot(epochs, values, linestyle=style, color=colour, alpha=0.8, lw=1.2)
        ax.plot(epochs[-1:], values[-1:], marker=marker, color=colour, linestyle="none")
        if math.isfinite(values[-1]) and run is None:
            ends.append((values[-1], epochs[-1], trial.trial_id[:8], colour))
    ends = sorted(ends)[:_MAX_LABELS]  # the best by their last validation MAE; trials.csv has every trial
    _spread_labels(ax, fig, ends)
    _status_legend(ax, {t.status for t in trials}, loc="upper right")
    which = "trial id" if len(ends) == len(trials) else f"trial id of the {len(ends)} best by last validation MAE"
    title = f"Learning curve of the standalone run {run}" if run else \
        f"Learning curves of {len(trials)} trials (label: {which})"
    ax.set(xlabel="epoch", ylabel=axis_label("validation MAE", target), title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return fig


_LABEL_GAP = 0.035  # of the y axis' height between two end-of-line labels: a 7-point label on a 4.8-inch figure
_MAX_LABELS = 15  # labelled trials at most: 15 stacked labels take half the axis' height


def _spread_labels(ax: Axes, fig: Figure, ends: list[tuple[float, int, str, str]]) -> None:
    """Trial ids beside the lines' last points, moved apart vertically (bottom to top, with a thin leader line
    where one moved) so that labels of trials ending close together do not overlap."""
    if not ends:
        return
    ax.margins(x=0.1)  # room for the labels right of the last epoch
    low, high = ax.get_ylim()
    gap = _LABEL_GAP * (high - low)
    placed: list[float] = []
    beside = offset_copy(ax.transData, fig=fig, x=4, y=0, units="points")
    for value, epoch, label, colour in sorted(ends):
        y = max(value, placed[-1] + gap) if placed else value
        placed.append(y)
        leader = {"arrowstyle": "-", "color": colour, "lw": 0.5, "alpha": 0.6} if y != value else None
        ax.annotate(label, (epoch, value), xytext=(epoch, y), textcoords=beside, fontsize=7, va="center",
                    color=colour, arrowprops=leader)
    if placed[-1] > high - gap / 2:
        ax.set_ylim(low, placed[-1] + gap)


def _is_numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _scatter_param(ax: Axes, name: str, points: list[tuple[Any, float, Any]], distribution: Mapping[str, Any],
                   target: str) -> None:
    values = [v for v, _, _ in points]
    if _is_numeric(values):
        _scatter_by_status(ax, values, points)
        if distribution.get("type") == "loguniform":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # only the decades are labelled: no overlapping labels
            name = f"{name} (log scale)"
        if distribution.get("low") is not None and distribution.get("high") is not None:
            ax.set_xlim(distribution["low"], distribution["high"])  # the searched range, not just the drawn values
    else:
        labels = [str(v).lower() if isinstance(v, bool) else str(v) for v in distribution.get("values") or []]
        labels += sorted({str(v).lower() if isinstance(v, bool) else str(v) for v in values} - set(labels))
        shown = [labels.index(str(v).lower() if isinstance(v, bool) else str(v)) for v in values]
        _scatter_by_status(ax, shown, points)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set(xlabel=name, ylabel=axis_label("best validation MAE", target))
    ax.grid(alpha=0.3)


def _scatter_by_status(ax: Axes, xs: Sequence[Any], points: list[tuple[Any, float, Any]]) -> None:
    """One scatter per trial status, with the marker and colour its legend entry shows (labelled with the status)."""
    for status in Status:
        chosen = [(x, m) for x, (_, m, s) in zip(xs, points) if s == status]
        if chosen:
            _, marker, colour = STATUS_STYLE[status]
            ax.scatter([x for x, _ in chosen], [m for _, m in chosen], color=colour, marker=marker, s=30,
                       label=status.label)


def params_vs_metric(trials: Sequence[Any], params: Sequence[str], target: str,
                     distributions: Mapping[str, Mapping[str, Any]] | None = None) -> Figure:
    """One panel per searched parameter: its value against the trial's best validation MAE; the colour says how the
    trial ended (legend), log-uniform parameters get a log axis."""
    distributions = distributions or {}
    cols = min(3, max(1, len(params)))
    rows = max(1, math.ceil(len(params) / cols))
    fig, axes = _figure(cols, rows, width=4.2, height=3.4)
    for ax, name in zip(axes, params):
        points = [(t.params[name], t.best_val_mae, t.status) for t in trials
                  if name in t.params and t.best_val_mae is not None]
        if points:
            _scatter_param(ax, name, points, distributions.get(name, {}), target)
        else:
            ax.set_title(f"{name}: no trial with a validation MAE")
    for ax in axes[len(params):]:
        ax.set_visible(False)
    _status_legend(axes[0], {t.status for t in trials}, markers_only=True, loc="best")
    fig.suptitle("Searched parameters against each trial's best validation MAE (marker and colour: how the trial "
                 "ended)")
    return fig


def text_scale_curves(trials: Sequence[Any], run: str | None = None) -> Figure | None:
    """``text_scale`` of every fused layer per epoch for the given (top) trials; None when no trial's scale moved
    (fixed scales are flat lines hiding each other: the table has their values). The y axis shows absolute values
    (no offset notation: a scale of 12 reads 12). ``run``: the figure is one standalone run's, labelled by layer."""
    curves = []
    for trial in trials:
        for key in sorted({k for r in trial.history for k in r if k.startswith("text_scale/")}):
            rows = [r for r in trial.history if key in r]
            values = [float(r[key]) for r in rows]
            if max(values) - min(values) > 1e-9:
                layer = key.split("/", 1)[1]
                curves.append((layer if run else f"trial {trial.trial_id[:8]}, {layer}", [r["epoch"] for r in rows],
                               values))
    if not curves:
        return None
    fig, (ax,) = _figure(width=7.0)
    for label, epochs, values in curves:
        ax.plot(epochs, values, marker=".", label=label)
    ax.set(xlabel="epoch", ylabel="text_scale (learned multiplier of the text, no unit)",
           title=f"Learnable text_scale over epochs, standalone run {run}" if run else "Learnable text_scale over "
                                                                                      "epochs")
    ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, title="fused layer" if run else "trial, fused layer")
    ax.grid(alpha=0.3)
    return fig


def parity(target: np.ndarray, prediction: np.ndarray, target_name: str, title: str) -> Figure:
    """Prediction against the DFT value, with the y = x line; the MAE in the legend."""
    fig, (ax,) = _figure(width=5.2, height=5.2)
    target, prediction = np.asarray(target, float), np.asarray(prediction, float)
    mae = float(np.abs(prediction - target).mean())
    ax.scatter(target, prediction, s=14, alpha=0.7, label=f"{len(target)} crystals, MAE {with_unit(mae, target_name)}")
    both = np.concatenate([target, prediction])
    low, high = float(both.min()), float(both.max())
    pad = 0.05 * (high - low or 1.0)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="black", lw=1, label="prediction = DFT value")
    ax.set(xlabel=axis_label(f"DFT {target_name}", target_name), ylabel=axis_label(f"predicted {target_name}",
                                                                                  target_name),
           title=title, xlim=(low - pad, high + pad), ylim=(low - pad, high + pad))
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return fig


def importance_bar(importances: Mapping[str, float]) -> Figure:
    """Horizontal bars of parameter importance, the most important on top."""
    names = list(importances)[::-1]
    fig, (ax,) = _figure(width=6.0, height=1.2 + 0.45 * len(names))
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set(xlabel="importance for validation MAE (fANOVA, sums to 1)", ylabel="searched parameter",
           title="Parameter importance")
    ax.grid(alpha=0.3, axis="x")
    return fig


# (summary key, panel title) of the per-layer fusion numbers drawn side by side
FUSION_METRICS = (("text_scale", "text_scale (multiplier of the text)"),
                  ("norm_ratio", "‖h_in‖ / ‖u‖ (atoms / text size)"),
                  ("cos_before", "cos(h_in, u) before fusion"), ("cos_after", "cos(h_out, u) after fusion"),
                  ("relative_change", "‖h_out − h_in‖ / ‖h_in‖"), ("alpha_std", "std of the gate alpha"))
FUSION_CAPTION = ("h_in: atom features entering the fusion layer; u: the crystal's text vector after text_transform "
                  "and text_scale, given to each of its atoms; h_out: atom features leaving the layer; alpha: the "
                  "gate (0 = ignore the text, 1 = add all of it). Means over the validation crystals' atoms.")


def fusion_summary(summaries: Mapping[str, Mapping[str, Any]]) -> Figure | None:
    """Grouped bars per fused layer for each labelled diagnosis (top-k trials, or the two compared models)."""
    bars = [(label, layer, values) for label, summary in summaries.items()
            for layer, values in summary.get("layers", {}).items()]
    if not bars:
        return None
    fig, axes = _figure(3, 2, width=4.2, height=3.3)
    names = [f"{label}\n{layer}" for label, layer, _ in bars]
    for ax, (key, title) in zip(axes, FUSION_METRICS):
        values = [v["alpha"]["std"] if key == "alpha_std" else v[key] for _, _, v in bars]
        ax.bar(range(len(bars)), values, color=[f"C{i % 10}" for i in range(len(bars))])
        ax.set_xticks(range(len(bars)), names, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("model, fused layer", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Fusion diagnostics per fused layer (validation crystals)")
    fig.supxlabel(FUSION_CAPTION, fontsize=8, wrap=True)
    return fig


def alpha_figures(arrays: Mapping[str, np.ndarray], per_element: Mapping[str, Mapping[str, Any]], tag: str,
                  ) -> dict[str, Figure]:
    """The alpha figures of the original paper scripts, per fused layer: the distribution of per-crystal alpha and
    the mean alpha per element (elements ordered by atomic number, error bars = std over the element's atoms, the
    full 0-1 range of the gate on the axis so small differences look small)."""
    out = {}
    for key in sorted(k for k in arrays if k.startswith("crystal_alpha_")):
        layer = key[len("crystal_alpha_"):]
        elements = per_element.get(layer, {})
        symbols = list(elements)
        fig, (left, right) = _figure(1, 2, width=max(7.0, 0.2 * len(symbols)), height=3.6)
        left.hist(arrays[key], bins=30, color="tab:blue", alpha=0.8)
        left.set(xlabel="alpha (the gate, mean over a crystal's atoms; 0-1)", ylabel="crystals",
                 title=f"Per-crystal alpha, {layer}")
        right.bar(range(len(symbols)), [elements[s]["mean"] for s in symbols],
                  yerr=[elements[s].get("std", 0.0) for s in symbols], color="tab:orange", capsize=2)
        right.set_xticks(range(len(symbols)), symbols, fontsize=9, rotation=90 if len(symbols) > 25 else 0)
        right.set(xlabel="element (by atomic number)", ylabel="mean alpha over the element's atoms (0-1)",
                  title=f"Per-element alpha, {layer}\n(error bars: std of alpha over the element's atoms)",
                  ylim=(0.0, 1.0))
        fig.suptitle(tag)
        out[f"alpha_{tag}_{layer}"] = fig
    return out


def text_ablation_bars(rows: Sequence[Mapping[str, Any]], target: str, title: str) -> Figure:
    """Validation MAE with each crystal's own text, shuffled text and no text, one group per model; the error bars
    (the rows' ``spread``: the standard deviation over the shuffles; one run has none) are said on the figure."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    fig, (ax,) = _figure(width=max(5.5, 2.2 * len(models)), height=4.2)
    width = 0.8 / len(conditions)
    for j, condition in enumerate(conditions):
        chosen = [next((r for r in rows if r["model"] == m and r["condition"] == condition), None) for m in models]
        ax.bar([i + j * width for i in range(len(models))], [r["val_mae"] if r else math.nan for r in chosen],
               width, yerr=[r.get("spread", 0.0) if r else 0.0 for r in chosen], capsize=3, label=condition)
    ax.set_xticks([i + width * (len(conditions) - 1) / 2 for i in range(len(models))], models)
    ax.set(xlabel="model", ylabel=axis_label("validation MAE", target), title=title)
    ax.legend(title="text given to the model", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the bars
    ax.grid(alpha=0.3, axis="y")
    shuffles = sorted({r.get("runs", 1) for r in rows if r.get("spread")})
    if shuffles:
        fig.supxlabel(f"error bars: standard deviation of the validation MAE over the "
                      f"{'/'.join(map(str, shuffles))} shuffles of the text; the other bars are single runs",
                      fontsize=8, wrap=True)
    return fig
