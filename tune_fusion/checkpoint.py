"""The checkpoint format, in one place: what a checkpoint holds, writing it, reading and checking it, and reading the
ones older versions wrote.

A checkpoint is plain data that ``torch.load(..., weights_only=True)`` reads back: the ``model`` state dict (the
current weights; in a standalone ``best_val_model.pt`` and an exported ``best_model.pt`` the best ones, so the
original research tools that read ``ckpt['model']`` keep working), ``best_model`` (the best-by-validation weights),
``config`` as a flat dict, optimizer and scheduler state, epoch, best validation MAE, history, the random-number
state, and the data it was trained on (fingerprint, split ids, target scaling, input sizes).

Example:
    >>> from tune_fusion.checkpoint import checkpoint_config, load_checkpoint
    >>> ckpt = load_checkpoint("export/best_model.pt")   # DataError in one line when unusable
    >>> checkpoint_config(ckpt, "export/best_model.pt").data.target
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tune_fusion import __version__
from tune_fusion.config import Config
from tune_fusion.data import PreparedData, Standardizer
from tune_fusion.errors import ConfigError, DataError, first_line

if TYPE_CHECKING:
    from tune_fusion.train import Run

__all__ = ["REQUIRED_KEYS", "checkpoint_config", "data_identity", "load_checkpoint", "plain_checkpoint",
           "restore_run", "run_state", "save_checkpoint", "standalone_best", "weights"]

REQUIRED_KEYS = ("config", "dataset_fingerprint", "standardizer", "dims")  # besides model or best_model


def run_state(run: Run) -> dict[str, Any]:
    """A training run as a checkpoint: ``model`` holds the current weights (to resume), ``best_model`` the
    best-by-validation ones."""
    return {
        "model": run.model.state_dict(),
        "best_model": run.best_state or run.model.state_dict(),
        "config": run.cfg.to_dict(),
        "optimizer": run.optimizer.state_dict(),
        "lr_scheduler": run.scheduler.state_dict(),
        "epoch": run.epoch,
        "val_mae": run.best_val_mae,
        "best_epoch": run.best_epoch,
        "history": run.history,
        "stop_reason": run.stop_reason,
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        **data_identity(run.data, run.standardizer),
        "version": __version__,
    }


def restore_run(run: Run, ckpt: Mapping[str, Any]) -> None:
    """Put ``run`` back where the checkpoint ``ckpt`` of the same data left it (weights, optimizer, schedule,
    history, random-number state)."""
    if ckpt.get("dataset_fingerprint") != run.data.fingerprint:
        raise DataError(f"the checkpoint was trained on prepared data {ckpt.get('dataset_fingerprint')}, not on "
                        f"{run.data.fingerprint}; resume with the same dataset and data settings")
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["lr_scheduler"])
    run.epoch, run.best_val_mae, run.best_epoch = ckpt["epoch"], ckpt["val_mae"], ckpt["best_epoch"]
    run.best_state = ckpt["best_model"]
    run.history = list(ckpt["history"])
    run.stop_reason = ckpt.get("stop_reason", "")
    torch.set_rng_state(ckpt["rng"]["torch"])  # dropout continues where it was
    if ckpt["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])


def data_identity(data: PreparedData, standardizer: Standardizer) -> dict[str, Any]:
    """What a checkpoint stores about its data: fingerprint, split ids, target scaling, input sizes."""
    return {
        "dataset_fingerprint": data.fingerprint,
        "split_ids": data.split_ids(),
        "standardizer": {"mean": standardizer.mean, "std": standardizer.std},
        "dims": {"atom_feature_dim": data.atom_feature_dim, "text_dim": data.text_dim},
    }


def standalone_best(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """A standalone run's ``best_val_model.pt``: the run's checkpoint with its best weights under ``model``."""
    return {**ckpt, "model": ckpt["best_model"]}


def plain_checkpoint(ckpt: Mapping[str, Any], state: Mapping[str, torch.Tensor], metrics: Mapping[str, Any],
                     source: str | Path) -> dict[str, Any]:
    """The exported form: ``model`` = ``state``, with config, metrics, data identity and where it came from."""
    keep = ("config", "dataset_fingerprint", "split_ids", "standardizer", "dims")
    return {"model": {k: v.detach().cpu() for k, v in state.items()}, **{k: ckpt[k] for k in keep if k in ckpt},
            "epoch": ckpt.get("best_epoch", ckpt.get("epoch")), "val_mae": ckpt.get("val_mae"),
            "metrics": dict(metrics), "source": str(source), "version": __version__}


def save_checkpoint(obj: Mapping[str, Any], path: Path) -> Path:
    """``torch.save`` through a temporary file renamed into place: a crash never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A trial's ``checkpoint.pt``, a standalone ``best_val_model.pt`` or ``last_checkpoint.pt``, or an exported
    ``best_model.pt``, checked for the keys every use needs; raises DataError naming the file when it is missing,
    unreadable or incomplete."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist; give a trial's checkpoint_*/checkpoint.pt or an "
                        "exported best_model.pt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types on a truncated or foreign file
        raise DataError(f"checkpoint {path} cannot be read ({first_line(err)}); it is corrupt or not a tune-fusion "
                        "checkpoint: use the trial's other checkpoint_* folder or retrain") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if isinstance(ckpt, dict) and "best_model" not in ckpt and "model" not in ckpt:
        missing.append("model")
    if missing:
        raise DataError(f"checkpoint {path} lacks {', '.join(missing)}; it is corrupt or was not written by "
                        "tune-fusion: use a trial's checkpoint.pt or an exported best_model.pt")
    return ckpt


def weights(ckpt: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The best-by-validation state dict (``best_model`` in trial checkpoints, ``model`` in exported ones)."""
    return ckpt.get("best_model") or ckpt["model"]


def checkpoint_config(ckpt: Mapping[str, Any], path: str | Path) -> Config:
    """The full config stored in the checkpoint, validated. Checkpoints made before ``text_vector`` existed read
    the whole-text vector (``truncated``), as they were trained."""
    values = dict(ckpt["config"])
    values.setdefault("text_vector", "truncated")
    try:
        return Config.from_dict(values, source=f"checkpoint {path}")
    except ConfigError as err:
        raise DataError(f"{err} (the stored config does not fit this version of tune-fusion)") from None
