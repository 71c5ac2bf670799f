"""The train/validation/test split, computed once when the cache is prepared and stored with it."""

from __future__ import annotations

import numpy as np

from tune_fusion.errors import DataError

__all__ = ["split_indices", "split_sizes"]


def split_sizes(n: int, ratios: tuple[float, float, float], counts: tuple[int, int, int]) -> tuple[int, int, int]:
    """Sizes of (train, val, test): an absolute count where given (> 0), else ``floor(ratio * n)``; a training
    size from its ratio shrinks to what the other two leave."""
    sizes = tuple(count if count > 0 else int(ratio * n) for ratio, count in zip(ratios, counts))
    if counts[0] == 0:
        sizes = (min(sizes[0], n - sizes[1] - sizes[2]), sizes[1], sizes[2])
    if sum(sizes) > n:
        raise DataError(f"split sizes train/val/test = {sizes} need {sum(sizes)} records but only {n} are usable; "
                        "lower n_train/n_val/n_test or the ratios")
    if sizes[0] < 1 or sizes[1] < 1:
        raise DataError(f"split of {n} records gives {sizes[0]} training and {sizes[1]} validation records; "
                        "both need at least 1: use more data or larger train_ratio/val_ratio")
    return sizes


def split_indices(n: int, ratios: tuple[float, float, float], counts: tuple[int, int, int], seed: int) -> dict[str, np.ndarray]:
    """Random disjoint index sets ``train``, ``val``, ``test`` (int64), reproducible from ``seed``."""
    n_train, n_val, n_test = split_sizes(n, ratios, counts)
    order = np.random.default_rng(seed).permutation(n)
    return {
        "train": np.sort(order[:n_train]),
        "val": np.sort(order[n_train : n_train + n_val]),
        "test": np.sort(order[n_train + n_val : n_train + n_val + n_test]),
    }
