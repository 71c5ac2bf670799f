"""What an analysis finds, as frozen dataclasses: each entry point of the analysis returns one, and the report and
the CLI read them by attribute. ``as_dict`` gives their plain-data form, the one the JSON files hold
(``summary.json``, ``best_trial.json``, ``compare.json``, ...); a part that may be absent (``optional()``) is left
out of it rather than written as null. Imports nothing heavy: the experiment reader uses it too.

Example:
    >>> found = analyze_experiment("~/ray_results/quickstart")
    >>> found.best.test_mae, as_dict(found.best)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

__all__ = ["Ablation", "Analysis", "BestTrial", "CheckpointAnalysis", "CheckpointSummary", "Comparison", "Confirmation",
           "ExperimentAnalysis", "FusedVsGraph", "FusionDiagnostics", "Importance", "RunAnalysis", "RunInfo",
           "TextScaling", "as_dict", "optional"]


def optional() -> Any:
    """A field for a part that may be absent (None): left out of ``as_dict``, as the JSON files always did."""
    return field(default=None, metadata={"optional": True})


def as_dict(value: Any) -> Any:
    """The plain-data form of a result: dataclasses as dicts in field order (absent optional parts left out), lists
    and dicts converted item by item, everything else as it is."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_dict(getattr(value, f.name)) for f in fields(value)
                if not (f.metadata.get("optional") and getattr(value, f.name) is None)}
    if isinstance(value, dict):
        return {k: as_dict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_dict(v) for v in value]
    return value


@dataclass(frozen=True, kw_only=True)
class BestTrial:
    """The trial with the lowest validation MAE and its one test evaluation (absent when there is no test split)."""

    trial: str
    status: str
    params: dict[str, Any]
    checkpoint: str
    val_mae: float
    best_epoch: int | None
    target: str
    unit: str
    test_mae: float | None = optional()
    test_rmse: float | None = optional()
    test_crystals: int | None = optional()
    test_note: str | None = optional()

    @property
    def metrics(self) -> dict[str, Any]:
        """What an export stores beside the model: validation and test numbers, target and unit."""
        return {k: v for k, v in as_dict(self).items() if k not in ("trial", "status", "params", "checkpoint")}


@dataclass(frozen=True)
class Importance:
    """Parameter importance (fANOVA, sums to 1), or no values and a note saying why."""

    values: dict[str, float]
    note: str


@dataclass(frozen=True)
class FusionDiagnostics:
    """Fusion diagnostics of the top trials (by trial id: ``diagnostics.write_diagnosis`` summaries) and the figure
    comparing them (None when no trial has a fused layer)."""

    trials: dict[str, dict[str, Any]]
    figure: str | None


@dataclass(frozen=True)
class Ablation:
    """What the text is worth, per model (``ablation.text_ablation`` results by label); ``rows`` is the table in
    ``csv``, drawn in ``figure``."""

    models: dict[str, dict[str, Any]]
    rows: list[dict[str, Any]]
    csv: str
    figure: str


@dataclass(frozen=True)
class FusedVsGraph:
    """The best fused configuration against the best graph-only one, over seeds: ``difference`` = graph-only minus
    fused mean validation MAE, ``spread`` = the larger of their standard deviations."""

    fused: str
    graph_only: str
    difference: float
    spread: float
    exceeds_spread: bool


@dataclass(frozen=True, kw_only=True)
class Confirmation:
    """The confirmation runs of a search (``<experiment>-confirm``): one row per retrained configuration (seeds,
    mean and standard deviation of their best validation MAEs), best first."""

    folder: str
    rows: list[dict[str, Any]]
    best: str
    fused_vs_graph: FusedVsGraph | None = optional()


@dataclass(frozen=True, kw_only=True)
class ExperimentAnalysis:
    """A search's analysis: the trial table, the best trial tested once, importance, figures (file names in the output
    folder), the text ablation, and, where asked or present, diagnostics, confirmation runs and the export."""

    table: list[dict[str, Any]]
    table_text: str
    figures: dict[str, str]
    target: str
    unit: str
    status_counts: str
    best: BestTrial
    importance: Importance
    diagnostics: FusionDiagnostics | None = optional()
    ablation: Ablation
    confirmation: Confirmation | None = optional()
    export: str | None = optional()


@dataclass(frozen=True)
class CheckpointSummary:
    """One checkpoint's validation MAE and fusion diagnosis (``diagnostics.write_diagnosis``)."""

    path: str
    target: str
    unit: str
    val_mae: float
    graph_only: bool
    diagnosis: dict[str, Any]


@dataclass(frozen=True)
class CheckpointAnalysis:
    """One checkpoint on its validation split: diagnosis and text ablation."""

    target: str
    checkpoint: CheckpointSummary
    ablation: Ablation


@dataclass(frozen=True)
class RunInfo:
    """A standalone run's folder, epochs run and its ``metrics.json`` ({} while it trains)."""

    folder: str
    epochs: int
    metrics: dict[str, Any]


@dataclass(frozen=True)
class RunAnalysis:
    """A standalone run: its curves (and test parity plot), and the analysis of its best checkpoint."""

    run: RunInfo
    figures: dict[str, str]
    target: str
    unit: str
    checkpoint: CheckpointSummary
    ablation: Ablation


@dataclass(frozen=True)
class Comparison:
    """Two checkpoints (A, B: diagnosis summaries) on the same validation crystals."""

    crystals: int
    val_mae_difference_b_minus_a: float
    a: dict[str, Any]
    b: dict[str, Any]
    figure: str | None


@dataclass(frozen=True)
class TextScaling:
    """A checkpoint with its last text_transform layer times ``scale_factor``, measured before and after."""

    scale_factor: float
    val_mae_before: float
    val_mae_after: float
    val_crystals: int
    checkpoint: str
    scaled_checkpoint: str
    before: dict[str, Any]
    after: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Analysis:
    """What ``analyze_trials.py`` wrote in one output folder: the parts it was asked for (a search or a standalone
    run, a checkpoint alone or beside them, a comparison, a text scaling) and the report."""

    output: str
    experiment: str | None
    search: ExperimentAnalysis | None = None
    run: RunAnalysis | None = None
    checkpoint: CheckpointAnalysis | None = None  # a checkpoint analysed alone
    compare: Comparison | None = None
    scale_text: TextScaling | None = None
    checkpoint_analysis: CheckpointAnalysis | None = None  # a checkpoint analysed beside a search or run
    report: str = ""

    @property
    def main(self) -> ExperimentAnalysis | RunAnalysis | CheckpointAnalysis | None:
        """The part the target, the ablation and the verdicts come from: the search, the run or the checkpoint."""
        return self.search or self.run or self.checkpoint

    @property
    def target(self) -> str:
        return self.main.target if self.main else ""

    def summary(self) -> dict[str, Any]:
        """The plain data of ``summary.json``: output and experiment, then each part's fields (a comparison, a text
        scaling and a checkpoint beside an experiment under their own keys)."""
        found: dict[str, Any] = {"output": self.output, "experiment": self.experiment}
        for part in (self.search, self.run):
            found.update(as_dict(part) if part else {})
        for key in ("compare", "scale_text"):
            if getattr(self, key) is not None:
                found[key] = as_dict(getattr(self, key))
        found.update(as_dict(self.checkpoint) if self.checkpoint else {})
        if self.checkpoint_analysis is not None:
            found["checkpoint_analysis"] = as_dict(self.checkpoint_analysis)
        return found
