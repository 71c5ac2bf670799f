"""Content-keyed stores of prepared arrays, shared by every dataset, target and trial that needs the same content.

A store is a folder named by the settings that shape its content (``graphs-<hash of cutoff, neighbours, atom
features>``, ``texts-<hash of the encoder>``); inside, immutable shards (``shard-<hash>``), each a folder of
memory-mapped arrays whose rows are keyed by content (a structure hash, a description hash). Preparing data finds
the rows it needs and builds only the missing ones, as one new shard, under the store's file lock; a shard is
written in a temporary folder and renamed into place, so a crash leaves nothing that opens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from filelock import FileLock

from tune_fusion.data.arrays import KEYS_FILE, FlatArrays

__all__ = ["Builder", "Ref", "ShardStore", "settings_key"]

log = logging.getLogger(__name__)

Ref = tuple[str, int]  # (shard folder relative to the cache directory, row)
# The missing keys -> their arrays (rows for the keys that could be built, in ``arrays.keys``) and the errors of
# those that could not.
Builder = Callable[[list[str]], tuple[FlatArrays, dict[str, str]]]


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class ShardStore:
    """The shards of one store folder ``root`` (under the cache directory ``root.parent``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def shards(self) -> list[Path]:
        """Complete shards, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.glob("shard-*") if (p / KEYS_FILE).is_file()]
        return sorted(found, key=lambda p: ((p / KEYS_FILE).stat().st_mtime, p.name))

    def index(self) -> dict[str, Ref]:
        """Where every stored key is: ``{key: (shard path relative to the cache directory, row)}``."""
        where: dict[str, Ref] = {}
        for shard in self.shards():
            name = str(shard.relative_to(self.root.parent))
            for row, key in enumerate(json.loads((shard / KEYS_FILE).read_text())):
                where.setdefault(key, (name, row))
        return where

    def ensure(self, keys: Sequence[str], build: Builder) -> tuple[dict[str, Ref], dict[str, str]]:
        """Rows for ``keys`` (duplicates share one), building the missing ones as one new shard; returns where each
        key is and the errors of the keys that could not be built."""
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / ".lock")):
            where = self.index()
            missing = list(dict.fromkeys(k for k in keys if k not in where))
            if not missing:
                return where, {}
            arrays, errors = build(missing)
            if len(arrays):
                where.update(self._write(arrays))
            return where, errors

    def _write(self, arrays: FlatArrays) -> dict[str, Ref]:
        for stale in self.root.glob(".building-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a crashed build; we hold the lock
        name = f"shard-{settings_key({'keys': arrays.keys})}"
        tmp = self.root / f".building-{name}-{os.getpid()}"
        try:
            arrays.save(tmp)
            os.replace(tmp, self.root / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("stored %d new rows in %s", len(arrays), self.root / name)
        relative = str((self.root / name).relative_to(self.root.parent))
        return {key: (relative, row) for row, key in enumerate(arrays.keys)}
