"""The Ray Tune function trainable: one trial = one ``fit()`` on the prepared cache, reported once per epoch.

Every Ray call of a trial lives here; the loop itself is ``tune_fusion.train.fit``.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.fs
import ray
import torch
from ray import tune

from tune_fusion.checkpoint import load_checkpoint, save_checkpoint
from tune_fusion.config import Config
from tune_fusion.data import load
from tune_fusion.data.publish import fetch
from tune_fusion.errors import DataError, TuneFusionError, disk_full, is_disk_full
from tune_fusion.interrupt import storage_full, trial_should_wait, wait_to_be_stopped
from tune_fusion.names import CHECKPOINT_FILE, FINISHED, METRIC, StopReason
from tune_fusion.train import fit

if TYPE_CHECKING:
    from ray.train._internal.storage import StorageContext

__all__ = ["load_trial_checkpoint", "newest_checkpoint", "train_trial"]

log = logging.getLogger(__name__)


def load_trial_checkpoint(checkpoint: tune.Checkpoint) -> dict[str, Any]:
    """The plain-data checkpoint inside a Tune checkpoint directory, checked (DataError when unusable)."""
    with checkpoint.as_directory() as folder:
        return load_checkpoint(Path(folder) / CHECKPOINT_FILE)


def newest_checkpoint(storage: StorageContext) -> dict[str, Any] | None:
    """This trial's newest whole checkpoint on storage (None before its first epoch).

    A resumed search starts from Ray's own snapshot of its trials, which Ray takes every 2 checkpoints or 10 s and
    copies to storage behind the trials' own files: after a killed driver a trial can come back holding an older
    checkpoint than the one it wrote last, or none, and even as running when it had ended."""
    found = storage.storage_filesystem.get_file_info(pyarrow.fs.FileSelector(storage.trial_fs_path,
                                                                               allow_not_found=True))
    folders = sorted((f.path for f in found if f.type == pyarrow.fs.FileType.Directory
                      and f.base_name.startswith("checkpoint_")), reverse=True)
    for folder in folders:
        try:
            return load_trial_checkpoint(tune.Checkpoint(folder, filesystem=storage.storage_filesystem))
        except (OSError, DataError):  # a write cut short by a kill: the one before is whole
            continue
    return None


def _on_full_disk(err: OSError, storage: StorageContext, run_id: str | None, trial_id: str) -> None:
    """A checkpoint that could not be written for want of space: its partial folder is removed (it would not load,
    and it holds space), the driver is told, and the trial trains nothing more; its previous checkpoint is whole
    (Ray writes each into a new folder, and drops the oldest only once the next is complete)."""
    folder = storage.checkpoint_fs_path
    why = disk_full(err, folder, f"while trial {trial_id} wrote its checkpoint")
    log.error("%s", why)
    try:
        storage.storage_filesystem.delete_dir(folder)
    except OSError:  # never created, or the storage is failing altogether
        pass
    if not run_id:  # no driver to stop (a trainable run outside run_search): an error, retried by Ray
        raise OSError(err.errno, why) from err
    storage_full(run_id, trial_id, why)


def _use_trial_resources() -> torch.device:
    """Threads = the trial's CPUs; the GPU Ray assigned (CUDA_VISIBLE_DEVICES is set per trial), if any."""
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_trial(params: dict[str, Any], cache_name: str, published: str | None, base: dict[str, Any],
                run_id: str | None = None) -> None:
    """Tune function trainable: ``base`` (the fixed options) updated with the searched ``params``, trained on the
    prepared cache ``cache_name`` in this node's ``cache_dir`` (opened, never rebuilt; on a cluster, fetched once
    per node from ``published`` when the node lacks it). Once the driver ``run_id`` is asked to stop
    (``tune_fusion.interrupt``), the trial trains nothing after the epoch it is in."""
    trial_id = tune.get_context().get_trial_id()
    if trial_should_wait(run_id):  # started as the driver was stopping
        wait_to_be_stopped(run_id, trial_id)
    device = _use_trial_resources()
    job = params.get("job")  # a confirmation trial carries its whole configuration (tune_fusion.confirm)
    try:
        cfg = Config.from_dict(job["config"] if job else {**base, **params}, source="trial config")
    except TuneFusionError as err:  # a combination the space allowed but the model cannot have: no retry helps
        tune.report({METRIC: math.inf, FINISHED: 1, "stop_reason": StopReason.CONFIG_ERROR.says(str(err))})
        return
    if published:
        path, cost = fetch(cache_name, published, cfg.data.cache_dir)
    else:
        path, cost = Path(cfg.data.cache_dir).expanduser().resolve() / cache_name, {}
    data = load(path)
    storage = tune.get_context().get_storage()  # the trial's folder, and Ray's count of its checkpoints
    resume = newest_checkpoint(storage)
    placement = {"node_id": ray.get_runtime_context().get_node_id(),  # where this attempt runs (after a restart too)
                 "device": str(device), "resumed_from_epoch": resume["epoch"] if resume else 0, **cost}

    def report(metrics: dict[str, Any], state: dict[str, Any]) -> None:
        finished = bool(metrics["stop_reason"]) or metrics["epoch"] >= cfg.train.epochs
        value = metrics[METRIC] if math.isfinite(metrics[METRIC]) else math.inf
        full = None
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(state, Path(folder) / CHECKPOINT_FILE)
            try:
                tune.report({**metrics, **placement, METRIC: value, FINISHED: int(finished)},
                            checkpoint=tune.Checkpoint.from_directory(folder))
            except OSError as err:  # copying the checkpoint to storage failed
                if not is_disk_full(err):
                    raise
                full = err
        if full is not None:  # once the local copy is gone: the trial waits here until the driver ends it
            _on_full_disk(full, storage, run_id, trial_id)
        if not finished and trial_should_wait(run_id):  # this epoch is saved; the next one is the next driver's
            wait_to_be_stopped(run_id, trial_id)

    # Ray's snapshot counts one checkpoint per epoch reported: the epochs it lacks are told again from the newest
    # checkpoint's history, not trained again (one checkpoint each, so that Ray's count stays the epochs')
    for metrics in resume["history"][storage.current_checkpoint_index + 1:] if resume else []:
        report(metrics, resume)
    fit(cfg, data, on_epoch=lambda metrics, run: report(metrics, run.checkpoint()), checkpoint=resume, device=device)
