"""Getting a prepared cache to every node of a cluster without rebuilding it.

The driver prepares the cache once, then *publishes* it beside the experiments: the cache folder and the store
shards it reads are copied to ``<storage>/tune-fusion-cache/`` (a shared path or an ``s3://``/``gs://`` URI;
shards already there are not copied again). A trial opens the cache in its own node's ``cache_dir``; where it is
missing (a node that cannot see the driver's disk, or joined after the search started), the trial *fetches* it
from the published copy, once per node under a file lock, shards first and the cache's ``meta.json`` last, so a
fetch cut short is completed by the next trial and never opened half-copied.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from filelock import FileLock

from tune_fusion.data.arrays import KEYS_FILE
from tune_fusion.data.cache import is_complete, load, shard_folders
from tune_fusion.errors import DataError
from tune_fusion.names import is_uri

__all__ = ["PUBLISHED", "fetch", "filesystem_of", "publish", "published_root"]

log = logging.getLogger(__name__)

PUBLISHED = "tune-fusion-cache"  # the folder under the search's storage that holds published caches


def published_root(storage: str) -> str:
    """Where ``storage`` keeps published caches (a path or a URI)."""
    return f"{storage.rstrip('/')}/{PUBLISHED}" if is_uri(storage) else str(Path(storage).expanduser() / PUBLISHED)


def filesystem_of(location: str):
    """(pyarrow filesystem, path in it) for a local path or an ``s3://``/``gs://``/``file://`` URI."""
    from pyarrow import fs

    if is_uri(location):
        return fs.FileSystem.from_uri(location)
    return fs.LocalFileSystem(), str(Path(location).resolve())


def _exists(location: str, relative: str) -> bool:
    from pyarrow import fs

    filesystem, root = filesystem_of(location)
    return filesystem.get_file_info(f"{root}/{relative}").type != fs.FileType.NotFound


def _copy(source: str, source_relative: str, target: str, target_relative: str) -> None:
    """Copy folder ``source/source_relative`` to ``target/target_relative`` (either side a path or a URI)."""
    from pyarrow import fs

    source_fs, source_root = filesystem_of(source)
    target_fs, target_root = filesystem_of(target)
    target_fs.create_dir(f"{target_root}/{target_relative}", recursive=True)
    fs.copy_files(f"{source_root}/{source_relative}", f"{target_root}/{target_relative}",
                  source_filesystem=source_fs, destination_filesystem=target_fs)


def publish(cache: Path, root: str) -> None:
    """Copy the cache at ``cache`` and the shards it reads to ``root`` (skipping what is already there); the
    cache's ``meta.json`` goes last, so a published cache with a ``meta.json`` is whole."""
    cache_dir = cache.parent
    start = time.perf_counter()
    for folder, last in [*((shard, KEYS_FILE) for shard in shard_folders(cache)), (Path(cache.name), "meta.json")]:
        if not _exists(root, f"{folder}/{last}"):  # the file that completes a folder is copied after the rest
            _publish_folder(cache_dir / folder, root, str(folder), last)
    log.info("published %s to %s in %.1f s", cache.name, root, time.perf_counter() - start)


def _publish_folder(folder: Path, root: str, relative: str, last: str) -> None:
    """Copy ``folder`` to ``root/relative``: every file but ``last`` first (through a staging copy, as pyarrow
    copies files in any order), then ``last``, so a copy cut short never looks complete."""
    for stale in folder.parent.glob(f".publish-{folder.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a publish that was cut short
    staging = folder.parent / f".publish-{folder.name}-{os.getpid()}"
    shutil.copytree(folder, staging, ignore=shutil.ignore_patterns(last))
    try:
        _copy(str(folder.parent), staging.name, root, relative)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _copy_file(folder / last, root, f"{relative}/{last}")


def _copy_file(path: Path, root: str, relative: str) -> None:
    filesystem, base = filesystem_of(root)
    with filesystem.open_output_stream(f"{base}/{relative}") as out:
        out.write(path.read_bytes())


def fetch(name: str, root: str, cache_dir: str | Path) -> tuple[Path, dict[str, float]]:
    """The cache ``name`` in this node's ``cache_dir``, copied from ``root`` first when missing. Returns its path
    and what getting it cost (``cache_fetch_s``, ``cache_fetch_mb``; 0 when it was already here)."""
    local = Path(cache_dir).expanduser().resolve() / name
    cost = {"cache_fetch_s": 0.0, "cache_fetch_mb": 0.0}
    if is_complete(local):
        return local, cost
    local.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(local) + ".lock"):
        if is_complete(local):  # another trial on this node fetched it while we waited
            return local, cost
        start = time.perf_counter()
        meta = json.loads(_read(root, f"{name}/meta.json"))
        copied = 0
        for shard in meta["graph_shards"] + meta["text_shards"]:
            with FileLock(str(local.parent / Path(shard).parts[0] / ".lock")):  # the store's lock: views share shards
                if not (local.parent / shard / KEYS_FILE).is_file():
                    copied += _fetch_folder(root, shard, local.parent)
        copied += _fetch_folder(root, name, local.parent)
        cost = {"cache_fetch_s": round(time.perf_counter() - start, 3), "cache_fetch_mb": round(copied / 1e6, 2)}
    load(local)  # checks it opens
    log.info("fetched cache %s from %s: %.1f MB in %.1f s", name, root, cost["cache_fetch_mb"], cost["cache_fetch_s"])
    return local, cost


def _read(root: str, relative: str) -> str:
    filesystem, base = filesystem_of(root)
    try:
        with filesystem.open_input_stream(f"{base}/{relative}") as handle:
            return handle.read().decode()
    except (FileNotFoundError, OSError) as err:
        raise DataError(f"the prepared cache is neither in this node's cache_dir nor published at {root} "
                        f"({relative}: {err}); the driver publishes it when the search starts") from None


def _fetch_folder(root: str, relative: str, cache_dir: Path) -> int:
    """Copy ``root/relative`` into ``cache_dir/relative`` through a temporary folder renamed into place; returns
    the bytes copied."""
    target = cache_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".fetching-{target.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a fetch that was cut short; we hold the lock
    staging = target.with_name(f".fetching-{target.name}-{os.getpid()}")
    try:
        _copy(root, relative, str(cache_dir), str(staging.relative_to(cache_dir)))
        size = sum(f.stat().st_size for f in staging.iterdir() if f.is_file())
        shutil.rmtree(target, ignore_errors=True)  # an incomplete earlier copy
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return size
