"""The one training loop: ``fit(config, data, on_epoch=...)``, used standalone and inside every Ray trial.

AdamW (no weight decay on biases and norms), OneCycle schedule, MSE on the standardised target, MAE reported in
the target's units, gradient clipping, early stopping on validation MAE. Model selection uses validation data
only; the test split is evaluated once, by the caller, with the best weights (``test_once(run.best(), folder)``).
``predict`` is the one evaluation loop (validation, test, diagnostics and exported models all use it).

Standalone::

    python -m tune_fusion.train --dataset data/jarvis_dft3d_800.json.gz --target formation_energy_peratom \\
        --output_dir ./output/ --use_middle_fusion True --middle_fusion_layers 2 --epochs 50
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from tune_fusion.checkpoint import restore_run, run_state
from tune_fusion.config import Config
from tune_fusion.data import Batch, PreparedData, Standardizer, TextOverride, make_loader
from tune_fusion.model import FusionNetwork, ModelOutput, contrastive_loss
from tune_fusion.model.message_passing import resolve_backend
from tune_fusion.names import OLD_PREDICTIONS_FILE, PREDICTIONS_FILE, StopReason
from tune_fusion.units import unit

__all__ = ["BatchHook", "EpochCallback", "Run", "TrainedModel", "build_model", "fit", "parameter_groups", "pick_device",
           "place_model", "predict", "read_predictions", "seed_everything", "start_run", "test_once", "train_epoch",
           "write_predictions"]

log = logging.getLogger(__name__)

EpochCallback = Callable[[dict[str, Any], "Run"], None]


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> the first CUDA device when one is visible (Ray sets CUDA_VISIBLE_DEVICES per trial), else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: Config, data: PreparedData) -> FusionNetwork:
    return FusionNetwork(cfg.model, atom_feature_dim=data.atom_feature_dim, text_dim=data.text_dim)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only; biases, norms and scalars (``text_scale``) are not decayed."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# Called after each batch's forward pass in ``predict`` (diagnostics read the model's recorded internals there).
BatchHook = Callable[[Batch, ModelOutput], None]


def predict(model: FusionNetwork, batches: Iterable[Batch], device: torch.device, standardizer: Standardizer,
            hook: BatchHook | None = None, targets: torch.Tensor | None = None) -> dict[str, Any]:
    """The one evaluation loop: model (eval mode, no gradients) + batches -> per-crystal predictions.

    Returns ``index`` (crystal indices), ``prediction`` and ``target`` (numpy, in the target's units: the exact
    values of ``targets`` (float64, by crystal index) when given), and ``mae``, ``rmse``, ``loss`` (MSE on the
    standardised target) and ``crystals``.
    """
    model.eval()
    index, predicted, wanted = [], [], []
    with torch.no_grad():
        for batch in batches:
            batch = batch.to(device)
            output = model(batch)
            if hook is not None:
                hook(batch, output)
            index.append(batch.index)
            predicted.append(output.prediction)
            wanted.append(batch.target)
    if not index:
        return {"index": np.zeros(0, dtype=np.int64), "prediction": np.zeros(0), "target": np.zeros(0),
                "mae": math.nan, "rmse": math.nan, "loss": math.nan, "crystals": 0}
    pred, target = torch.cat(predicted).double().cpu(), torch.cat(wanted).double().cpu()  # one copy to the host
    err = pred - target
    crystals = torch.cat(index).cpu()
    exact = targets[crystals] if targets is not None else standardizer.inverse(target)
    return {"index": crystals.numpy(), "prediction": standardizer.inverse(pred).numpy(),
            "target": exact.numpy(), "mae": float(err.abs().mean()) * standardizer.std,
            "rmse": math.sqrt(float((err**2).mean())) * standardizer.std, "loss": float((err**2).mean()),
            "crystals": len(pred)}


@dataclass
class TrainedModel:
    """A model on its prepared data with its target scaling: everything evaluation needs (no optimizer)."""

    cfg: Config
    data: PreparedData
    model: FusionNetwork
    standardizer: Standardizer
    device: torch.device

    def loader(self, indices: torch.Tensor | str, shuffle: bool = False, seed: int = 0,
               text: TextOverride | None = None) -> DataLoader:
        """Batches of crystals ``indices`` (or of a split, by name), as the run's config makes them."""
        d, t = self.cfg.data, self.cfg.train
        return make_loader(self.data, indices, t.batch_size, self.standardizer, shuffle, seed, t.num_workers,
                           d.max_sentences, d.text_vector, text)

    def predict(self, indices: torch.Tensor | str, hook: BatchHook | None = None,
                text: TextOverride | None = None) -> dict[str, Any]:
        """``predict`` over crystals ``indices`` (or a split), optionally with other text (see ``TextOverride``)."""
        return predict(self.model, self.loader(indices, text=text), self.device, self.standardizer, hook,
                       self.data.targets)


@dataclass
class Run(TrainedModel):
    """The state of one training run; ``checkpoint()`` turns it into plain data, ``resume()`` back."""

    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    epoch: int = 0  # epochs completed
    best_val_mae: float = math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = ""

    def checkpoint(self) -> dict[str, Any]:
        """Plain data (tensors and JSON values) that ``torch.load(..., weights_only=True)`` reads back: the format
        is ``tune_fusion.checkpoint``'s (``model`` the current weights, ``best_model`` the best-by-validation ones)."""
        return run_state(self)

    def resume(self, ckpt: dict[str, Any]) -> None:
        """Continue from ``ckpt`` (same data, same schedule position)."""
        restore_run(self, ckpt)

    def best(self) -> TrainedModel:
        """The run's best-by-validation weights as a model of their own (the run's model is left as it is)."""
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.best_state or self.model.state_dict())
        return TrainedModel(self.cfg, self.data, model, self.standardizer, self.device)


def place_model(model: FusionNetwork, device: torch.device, graph_backend: str = "auto") -> FusionNetwork:
    """``model`` on ``device`` with the message-passing path ``graph_backend`` resolves to there."""
    return model.to(device).use_graph_backend(resolve_backend(graph_backend, device))


def start_run(cfg: Config, data: PreparedData, device: torch.device | None = None) -> Run:
    seed_everything(cfg.train.random_seed)
    device = device or pick_device(cfg.train.device)
    model = place_model(build_model(cfg, data), device, cfg.train.graph_backend)
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.train.weight_decay), lr=cfg.train.learning_rate)
    steps_per_epoch = math.ceil(len(data.split("train")) / cfg.train.batch_size)
    total = cfg.train.epochs * steps_per_epoch
    pct_start = min(cfg.train.warmup_steps / total, 0.99) if cfg.train.warmup_steps else 0.3
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.train.learning_rate, total_steps=total,
                                                    pct_start=pct_start)
    standardizer = Standardizer.fit(data.targets[data.split("train")])
    return Run(cfg, data, model, standardizer, device, optimizer, scheduler)


def train_epoch(run: Run) -> dict[str, Any]:
    """One shuffled pass over the training split with optimizer steps. MAE/RMSE are in the target's units.

    Returns ``loss``, ``mae``, ``rmse``, ``crystals`` and, when middle fusion is on, the gate's ``alpha_mean`` and
    ``alpha_std`` over the epoch's atoms.
    """
    model = run.model
    model.train()
    sums = torch.zeros(5, device=run.device, dtype=torch.float64)  # loss*B, |err|, err^2, alpha sum, alpha^2 sum
    atoms = 0
    for batch in run.loader("train", shuffle=True, seed=run.cfg.train.random_seed + run.epoch):
        batch = batch.to(run.device)
        loss, pred = _step(run, batch)
        err = (pred.detach() - batch.target).double() * run.standardizer.std
        alphas = model.alpha_stats()
        alpha = torch.cat(list(alphas.values())).double() if alphas else sums.new_zeros(0)
        sums += torch.stack([loss.detach().double() * len(batch), err.abs().sum(), (err**2).sum(), alpha.sum(),
                             (alpha**2).sum()])
        atoms += alpha.numel()
    n = len(run.data.split("train"))
    loss_sum, abs_sum, sq_sum, alpha_sum, alpha_sq = sums.tolist()  # the epoch's one device-to-host copy
    out: dict[str, Any] = {"loss": loss_sum / n, "mae": abs_sum / n, "rmse": math.sqrt(sq_sum / n), "crystals": n}
    if atoms:
        mean = alpha_sum / atoms
        out.update(alpha_mean=mean, alpha_std=math.sqrt(max(alpha_sq / atoms - mean**2, 0.0)))
    return out


def _step(run: Run, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    output = run.model(batch)
    loss = nn.functional.mse_loss(output.prediction, batch.target)
    if output.contrastive_pair is not None:
        loss = loss + run.cfg.model.contrastive_weight * contrastive_loss(
            *output.contrastive_pair, temperature=run.cfg.model.contrastive_temperature)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if run.cfg.train.grad_clip_norm > 0:
        nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.train.grad_clip_norm)
    run.optimizer.step()
    run.scheduler.step()
    return loss, output.prediction


def _stop_reason(run: Run, train: dict[str, Any], val: dict[str, Any], scales: dict[str, float]) -> str:
    if not math.isfinite(train["loss"]) or not math.isfinite(val["mae"]):
        return StopReason.NAN_LOSS.says(f"the loss became {train['loss']} at epoch {run.epoch}; lower learning_rate "
                                        "or the text scale")
    too_big = {name: s for name, s in scales.items() if abs(s) > run.cfg.train.max_text_scale}
    if too_big:
        return StopReason.TEXT_SCALE_EXPLODED.says(
            f"{too_big} beyond max_text_scale={run.cfg.train.max_text_scale} at epoch {run.epoch}; lower "
            "middle_fusion_initial_scale or use middle_fusion_use_gate_norm")
    patience = run.cfg.train.early_stopping_patience
    if patience and run.epoch - run.best_epoch >= patience:
        return StopReason.EARLY_STOPPING.says(f"no better val_mae for {patience} epochs")
    return ""


def fit(cfg: Config, data: PreparedData, on_epoch: EpochCallback | None = None,
        checkpoint: dict[str, Any] | None = None, device: torch.device | None = None) -> Run:
    """Train until ``epochs``, early stopping, a NaN loss or an exploding ``text_scale``; returns the run.

    ``on_epoch(metrics, run)`` is called after every epoch with train loss/MAE, val MAE/RMSE, lr, each layer's
    ``text_scale``, alpha mean/std, seconds per epoch and crystals per second; ``run.checkpoint()`` gives the
    state to save. ``checkpoint`` resumes a run where it stopped.

    Example:
        >>> cfg = Config.from_dict({"epochs": 3})
        >>> run = fit(cfg, tune_fusion.data.prepare(cfg.data)[0])
        >>> run.best_val_mae
    """
    run = start_run(cfg, data, device)
    if checkpoint is not None:
        run.resume(checkpoint)
    while run.epoch < cfg.train.epochs and not run.stop_reason:
        start = time.perf_counter()
        lr = run.optimizer.param_groups[0]["lr"]
        train = train_epoch(run)
        train_seconds = time.perf_counter() - start
        val = run.predict("val")
        run.epoch += 1
        scales = {name: float(value) for name, value in run.model.text_scales().items()}
        if math.isfinite(val["mae"]) and val["mae"] < run.best_val_mae:
            run.best_val_mae, run.best_epoch = val["mae"], run.epoch
            run.best_state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        run.stop_reason = _stop_reason(run, train, val, scales)
        metrics = {
            "epoch": run.epoch, "train_loss": train["loss"], "train_mae": train["mae"], "val_mae": val["mae"],
            "val_rmse": val["rmse"], "best_val_mae": run.best_val_mae, "lr": lr,
            "seconds_per_epoch": time.perf_counter() - start,
            "crystals_per_second": train["crystals"] / max(train_seconds, 1e-9),
            **{f"text_scale/{name}": value for name, value in scales.items()},
            **{k: train[k] for k in ("alpha_mean", "alpha_std") if k in train},
            "stop_reason": run.stop_reason,
        }
        run.history.append(metrics)
        log.info("epoch %d: train_mae %.4f val_mae %.4f %s, %.1f s (%.0f crystals/s training)%s", run.epoch,
                 train["mae"], val["mae"], unit(cfg.data.target), metrics["seconds_per_epoch"],
                 metrics["crystals_per_second"], f" ({run.stop_reason})" if run.stop_reason else "")
        if on_epoch is not None:
            on_epoch(metrics, run)
    return run


def test_once(trained: TrainedModel, out: Path) -> dict[str, Any]:
    """The one test evaluation of a model (for a ``Run``, pass ``run.best()``): the test split, predictions written
    to ``out/test_predictions.csv`` (unclamped); returns test MAE, RMSE and the number of crystals, with the
    targets and predictions ({} when the split is empty)."""
    if not len(trained.data.split("test")):
        return {}
    test = trained.predict("test")
    write_predictions(out / PREDICTIONS_FILE, [str(trained.data.ids[i]) for i in test["index"]], test["target"],
                      test["prediction"])
    return {"test_mae": test["mae"], "test_rmse": test["rmse"], "test_crystals": test["crystals"],
            "target": test["target"], "prediction": test["prediction"]}


def write_predictions(path: Path, ids: list[str], targets: Any, predictions: Any) -> None:
    """CSV ``jid,target,prediction`` in the target's units, unclamped."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["jid", "target", "prediction"])
        writer.writerows(zip(ids, (float(t) for t in targets), (float(p) for p in predictions)))


def read_predictions(folder: Path) -> dict[str, np.ndarray] | None:
    """The test predictions written in ``folder`` (either file name), or None."""
    for name in (PREDICTIONS_FILE, OLD_PREDICTIONS_FILE):
        if (folder / name).is_file():
            with open(folder / name, newline="") as handle:
                rows = list(csv.DictReader(handle))
            return {"jid": np.array([r["jid"] for r in rows]),
                    "target": np.array([float(r["target"]) for r in rows]),
                    "prediction": np.array([float(r["prediction"]) for r in rows])}
    return None
