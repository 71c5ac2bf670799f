"""The train/validation/test split, computed once when the cache is prepared and stored with it."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

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


def split_indices(n: int, ratios: tuple[float, float, float], counts: tuple[int, int, int], seed: int,
                  groups: Sequence[Hashable] | None = None) -> dict[str, np.ndarray]:
    """Random disjoint index sets ``train``, ``val``, ``test`` (int64), reproducible from ``seed``. Records with
    the same ``groups`` value (one structure under several ids) go to one split together: the split that draws
    the first of them takes them all, so a split can exceed its size by a group's other members. Without groups
    (or with none repeated) this is one permutation cut in three."""
    n_train, n_val, n_test = split_sizes(n, ratios, counts)
    order = np.random.default_rng(seed).permutation(n)
    if groups is None or len(set(groups)) == n:
        return {
            "train": np.sort(order[:n_train]),
            "val": np.sort(order[n_train : n_train + n_val]),
            "test": np.sort(order[n_train + n_val : n_train + n_val + n_test]),
        }
    members: dict[Hashable, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    chosen: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    wanted = {"train": n_train, "val": n_val, "test": n_test}
    placed: set[Hashable] = set()
    for i in order.tolist():
        if groups[i] in placed:
            continue
        name = next((k for k in chosen if len(chosen[k]) < wanted[k]), None)
        if name is None:
            break
        placed.add(groups[i])
        chosen[name].extend(members[groups[i]])
    return {k: np.sort(np.array(v, dtype=np.int64)) for k, v in chosen.items()}
