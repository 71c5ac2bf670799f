"""The map functions data preparation spreads its work with: ``process_map`` over local processes, the default
wherever no Ray cluster is involved (``python -m tune_fusion.data prepare``, standalone training, reopening a
checkpoint's data). A search passes Ray's (``tune_fusion.cluster.parallel_map``) instead, so every node helps;
the data layer itself never starts Ray.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from tqdm.auto import tqdm

__all__ = ["MapFunction", "process_map"]

# (fn, items, description for the progress bar) -> [fn(item) for item in items]
MapFunction = Callable[[Callable[[Any], Any], Sequence[Any], str], list[Any]]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (a container's share)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def process_map(fn: Callable[[Any], Any], items: Sequence[Any], desc: str) -> list[Any]:
    """``[fn(x) for x in items]`` in a pool of local processes (one per core, at most one per item), with a progress
    bar. ``fn`` must be a module-level function so the workers can import it. One item runs inline."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    # fresh interpreters (spawn), not forks of one whose torch and OpenMP threads may hold locks
    with ProcessPoolExecutor(max_workers=min(len(items), _cores()), mp_context=multiprocessing.get_context("spawn")
                             ) as pool, tqdm(total=len(items), desc=desc, unit="task") as bar:
        futures = [pool.submit(fn, item) for item in items]
        for _ in as_completed(futures):
            bar.update(1)
        return [future.result() for future in futures]
