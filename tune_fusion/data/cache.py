"""The prepared cache: what every trial trains on, built once and opened read-only, memory-mapped, in milliseconds.

The heavy parts are kept by content and shared (``store.py``): crystal graphs in ``<cache_dir>/graphs-<settings>/``
keyed by structure, text embeddings in ``<cache_dir>/texts-<encoder>/`` keyed by description. A prepared cache
is a small *view* on them for one dataset, target and split, ``<cache_dir>/<dataset>-<target>-<key>/``, where
``key`` hashes the dataset's content, the target, the split and the two stores' settings:

- ``meta.json`` (written last: a folder without it is never opened): settings, counts, timings, and the shards
  the view reads (paths relative to the cache directory);
- ``ids.npy``, ``targets.npy`` (in the dataset's units), ``graph_ref.npy`` and ``text_ref.npy`` ((n, 2): shard,
  row), ``split_<train|val|test>.npy`` (crystal indices); ``descriptions.json`` and ``prepare_log.json``.

A second target of the same dataset, or other split settings, reuses every graph and embedding. Views are built
in a temporary folder and renamed into place under a file lock, so concurrent preparers build once and a crash
leaves nothing that opens.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock

from tune_fusion.config import DataConfig, cache_fields
from tune_fusion.data.arrays import GraphArrays, TextArrays, merged_feature_table
from tune_fusion.data.embed import check_encoder, embed_texts, text_key
from tune_fusion.data.graphs import build_chunk, graph_arrays
from tune_fusion.data.pool import MapFunction, process_map
from tune_fusion.data.records import Record, RecordReport, build_records
from tune_fusion.data.sources import Source, locate, read_entries, sidecar_path
from tune_fusion.data.split import split_indices
from tune_fusion.data.store import ShardStore, settings_key
from tune_fusion.data.text import DescriptionStore, fill_descriptions, structure_hash
from tune_fusion.errors import DataError

__all__ = ["CACHE_VERSION", "GRAPH_CHUNK", "SPLITS", "PreparedData", "cache_key", "cache_path", "graph_store_key",
           "is_complete", "load", "prepare", "shard_folders", "summary", "text_store_key"]

log = logging.getLogger(__name__)

# how a view picks its records and split: 2 = repeated ids dropped, one structure's ids in one split (a view built
# under other rules gets another folder; graphs and embeddings are reused)
VIEW_RULES = 2
CACHE_VERSION = 2  # version 1 (one DGL graph object per crystal) is refused with a message, never misread
SPLITS = ("train", "val", "test")
GRAPH_CHUNK = 200  # structures per graph-building task


@dataclass
class PreparedData:
    """An opened cache. Crystal i is ``ids[i]``, with target ``targets[i]`` (dataset units); its graph is row
    ``graph_ref[i, 1]`` of shard ``graph_ref[i, 0]``, likewise its text; splits hold crystal indices."""

    path: Path
    meta: dict[str, Any]
    graphs: list[GraphArrays]
    texts: list[TextArrays]
    arrays: dict[str, np.ndarray]
    targets: torch.Tensor  # (n,) float64, a copy: small, and callers may edit it

    @property
    def ids(self) -> np.ndarray:
        return self.arrays["ids"]

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def fingerprint(self) -> str:
        """Identifies the prepared data (content + settings); stored in checkpoints."""
        return self.meta["key"]

    @cached_property
    def feature_table(self) -> np.ndarray:
        """Atom features (119, F) by atomic number."""
        return merged_feature_table(self.graphs)

    @property
    def atom_feature_dim(self) -> int:
        return self.graphs[0].feature_dim

    @property
    def text_dim(self) -> int:
        return self.texts[0].dim

    def split(self, name: str) -> torch.Tensor:
        """Crystal indices of split ``name`` (train, val or test)."""
        return torch.from_numpy(np.array(self.arrays[f"split_{name}"], dtype=np.int64))

    def split_ids(self) -> dict[str, list[str]]:
        return {name: [str(self.ids[i]) for i in self.split(name).tolist()] for name in SPLITS}

    def descriptions(self) -> dict[str, str]:
        """``{id: description}`` (read on demand: large at scale)."""
        return json.loads((self.path / "descriptions.json").read_text())


def graph_store_key(cfg: DataConfig) -> str:
    return settings_key({"version": CACHE_VERSION, **{k: getattr(cfg, k) for k in cache_fields("graphs")}})


def text_store_key(cfg: DataConfig) -> str:
    return settings_key({"version": CACHE_VERSION, **{k: getattr(cfg, k) for k in cache_fields("texts")}})


def cache_key(cfg: DataConfig, fingerprint: str) -> str:
    settings = {name: getattr(cfg, name) for name in cache_fields("view")}
    return settings_key({"version": CACHE_VERSION, "rules": VIEW_RULES, "content": fingerprint,
                         "graphs": graph_store_key(cfg),
                         "texts": text_store_key(cfg), **settings})


def cache_path(cfg: DataConfig, source: Source | None = None) -> Path:
    """Where the cache for ``cfg`` lives (whether built or not)."""
    source = source or locate(cfg.dataset, cfg.cache_dir)
    stem = source.path.name.split(".")[0] or "dataset"
    return Path(cfg.cache_dir).expanduser().resolve() / f"{stem}-{cfg.target}-{cache_key(cfg, source.fingerprint)}"


def is_complete(path: Path) -> bool:
    return (path / "meta.json").is_file()


def prepare(cfg: DataConfig, parallel_map: MapFunction = process_map) -> tuple[PreparedData, bool]:
    """Open the cache for ``cfg``, building it first if needed; returns (data, whether this call built it).

    A build spreads graph construction and text generation with ``parallel_map``: local processes by default, Ray
    tasks over a cluster when a search passes ``tune_fusion.cluster.parallel_map``."""
    source = locate(cfg.dataset, cfg.cache_dir)
    path = cache_path(cfg, source)
    if not is_complete(path):
        check_encoder(cfg.text_encoder)
        made = not path.parent.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = Path(str(path) + ".lock")
        try:
            with FileLock(str(lock)):
                if not is_complete(path):  # another process may have built it while we waited
                    _build(cfg, source, path, parallel_map)
                    return load(path), True
        except DataError:  # refused for its input: the build leaves no trace (shards already stored stay valid)
            lock.unlink(missing_ok=True)
            if made:
                with contextlib.suppress(OSError):
                    path.parent.rmdir()
            raise
    return load(path), False


def shard_folders(path: Path) -> list[Path]:
    """Every store shard the cache at ``path`` reads (relative to its cache directory)."""
    meta = json.loads((path / "meta.json").read_text())
    return [Path(p) for p in meta["graph_shards"] + meta["text_shards"]]


def load(path: str | Path) -> PreparedData:
    """Open a built cache read-only (memory-mapped); raises DataError when ``path`` is not one."""
    path = Path(path).expanduser()
    if not is_complete(path):
        raise DataError(f"{path} is not a prepared cache (no meta.json); run "
                        "`python -m tune_fusion.data prepare --dataset ... --target ...` first")
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("version") != CACHE_VERSION:
        raise DataError(f"{path} was prepared by another version of tune-fusion (cache version {meta.get('version')},"
                        f" expected {CACHE_VERSION}); prepare it again (its settings now name a new folder)")
    root = path.parent
    missing = [p for p in meta["graph_shards"] + meta["text_shards"] if not (root / p / "keys.json").is_file()]
    if missing:
        raise DataError(f"{path} reads {', '.join(missing)}, which is missing under {root}; prepare it again")
    arrays = {p.stem: np.load(p, mmap_mode="r") for p in path.glob("*.npy")}
    return PreparedData(path, meta, [GraphArrays.open(root / p) for p in meta["graph_shards"]],
                        [TextArrays.open(root / p) for p in meta["text_shards"]], arrays,
                        torch.from_numpy(np.array(arrays["targets"], dtype=np.float64)))


def _build(cfg: DataConfig, source: Source, path: Path, parallel_map: MapFunction) -> None:
    start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = time.perf_counter() - start - sum(timings.values())

    records, report = build_records(source, read_entries(source, cfg.target), cfg.max_structures)
    log.info("preparing %d crystals of %s once (graphs, descriptions, embeddings; later runs open the cache in "
             "milliseconds)", len(records), source.path.name)
    lap("records_s")
    records, graph_refs, shapes = _graph_rows(records, cfg, path.parent, report, parallel_map)
    lap("graphs_s")
    store = DescriptionStore(Path(cfg.cache_dir).expanduser() / "descriptions.csv.gz")
    texts, text_counts = fill_descriptions([r.jid for r in records], [r.atoms for r in records],
                                           [r.text for r in records], store, sidecar_path(source.path), parallel_map)
    lap("text_s")
    text_refs, new_texts = _text_rows(texts, cfg, path.parent)
    lap("embedding_s")
    groups: dict[str, list[str]] = {}
    for shape, record in zip(shapes, records):  # one structure under several ids: kept, in one split
        groups.setdefault(shape, []).append(record.jid)
    report.same_structure = [ids for ids in groups.values() if len(ids) > 1]
    if report.same_structure:
        log.warning("%d crystals share their structure with another id (%d structures); each structure's copies "
                    "stay in one split", sum(map(len, report.same_structure)), len(report.same_structure))
    split = split_indices(len(records), (cfg.train_ratio, cfg.val_ratio, cfg.test_ratio),
                          (cfg.n_train, cfg.n_val, cfg.n_test), cfg.split_seed, groups=shapes)
    graph_shards, graph_ref = _ref_arrays(graph_refs)
    text_shards, text_ref = _ref_arrays(text_refs)
    view = {"ids": np.array([r.jid for r in records]), "targets": np.array([r.target for r in records], np.float64),
            "graph_ref": graph_ref, "text_ref": text_ref, **{f"split_{k}": v for k, v in split.items()}}
    meta = {
        "version": CACHE_VERSION,
        "key": path.name.rsplit("-", 1)[-1],
        "dataset": str(source.path),
        "format": source.format,
        "content_sha256": source.fingerprint,
        "settings": {name: getattr(cfg, name) for name in cache_fields()},
        "graph_shards": graph_shards,
        "text_shards": text_shards,
        "counts": {**{k: v for k, v in report.to_dict().items() if not k.endswith("_ids")},
                   "split": {k: int(len(v)) for k, v in split.items()},
                   "text": {**text_counts, "distinct": len(set(text_refs)), "embedded_now": new_texts}},
    }
    _write_view(path, view, meta, texts=dict(zip((r.jid for r in records), texts)), report=report,
                timings=timings, start=start)
    log.info("prepared %s in %.1f s", path, time.perf_counter() - start)


def _write_view(path: Path, view: dict[str, np.ndarray], meta: dict[str, Any], texts: dict[str, str],
                report: RecordReport, timings: dict[str, float], start: float) -> None:
    for stale in path.parent.glob(f".building-{path.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a crashed build; we hold the lock
    tmp = path.parent / f".building-{path.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        for name, array in view.items():
            np.save(tmp / f"{name}.npy", array)
        (tmp / "descriptions.json").write_text(json.dumps(texts))
        (tmp / "prepare_log.json").write_text(json.dumps(report.to_dict(), indent=1))
        meta.update(timings={k: round(v, 3) for k, v in timings.items()},
                    build_s=round(time.perf_counter() - start, 3))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _ref_arrays(refs: list[tuple[str, int]]) -> tuple[list[str], np.ndarray]:
    """Shard names in first-use order and an (n, 2) int64 array of (shard index, row)."""
    shards = list(dict.fromkeys(shard for shard, _ in refs))
    position = {shard: i for i, shard in enumerate(shards)}
    return shards, np.array([[position[s], row] for s, row in refs], dtype=np.int64).reshape(-1, 2)


def _graph_rows(records: list[Record], cfg: DataConfig, cache_dir: Path, report: RecordReport,
                parallel_map: MapFunction) -> tuple[list[Record], list[tuple[str, int]], list[str]]:
    """Graph rows of every record, built where the graph store lacks them, and the kept records' structure hashes;
    records whose structure cannot become a graph are skipped and listed by id."""
    keys = [structure_hash(r.atoms) for r in records]
    atoms_by_key = {k: r.atoms for k, r in zip(keys, records)}

    def build(missing: list[str]) -> tuple[GraphArrays, dict[str, str]]:
        chunks = [missing[i : i + GRAPH_CHUNK] for i in range(0, len(missing), GRAPH_CHUNK)]
        work = [([atoms_by_key[k].to_dict() for k in chunk], cfg.cutoff, cfg.max_neighbors, cfg.atom_features)
                for chunk in chunks]
        results = parallel_map(_build_chunk, work, "graphs")
        built, built_keys, errors = [], [], {}
        for chunk, (crystals, _) in zip(chunks, results):
            for key, crystal in zip(chunk, crystals):
                if isinstance(crystal, str):
                    errors[key] = crystal
                else:
                    built.append(crystal)
                    built_keys.append(key)
        if not built:  # nothing to store; the records are skipped below with their errors
            return GraphArrays({"atom_offsets": np.zeros(1, dtype=np.int64)}, []), errors
        return graph_arrays(built, built_keys, [table for _, table in results]), errors

    where, errors = ShardStore(cache_dir / f"graphs-{graph_store_key(cfg)}").ensure(keys, build)
    kept, refs, kept_keys = [], [], []
    for key, record in zip(keys, records):
        if key in where:
            kept.append(record)
            refs.append(where[key])
            kept_keys.append(key)
        else:
            report.skipped_structure[record.jid] = errors.get(key, "graph: not built")
    report.kept = len(kept)
    if not kept:
        raise DataError(f"no structure of {cfg.dataset} could be turned into a graph "
                        f"(cutoff={cfg.cutoff}, max_neighbors={cfg.max_neighbors}); see the skipped ids")
    return kept, refs, kept_keys


def _build_chunk(work: tuple) -> tuple:
    """One graph-building task (module level, so worker processes import it)."""
    return build_chunk(*work)


def _text_rows(texts: list[str], cfg: DataConfig, cache_dir: Path) -> tuple[list[tuple[str, int]], int]:
    """Embedding rows of every text (a text seen twice is embedded once), and how many were embedded now."""
    keys = [text_key(t) for t in texts]
    by_key = dict(zip(keys, texts))
    embedded = []

    def build(missing: list[str]) -> tuple[TextArrays, dict[str, str]]:
        embedded.extend(missing)
        return embed_texts([by_key[k] for k in missing], cfg.text_encoder, keys=missing), {}

    where, _ = ShardStore(cache_dir / f"texts-{text_store_key(cfg)}").ensure(keys, build)
    return [where[k] for k in keys], len(embedded)


def summary(data: PreparedData) -> dict[str, Any]:
    """What ``prepare`` prints: counts, split sizes, path, size on disk (view and the shards it reads), build time."""
    folders = [data.path] + [data.path.parent / p for p in shard_folders(data.path)]
    size = sum(f.stat().st_size for folder in folders for f in folder.iterdir() if f.is_file())
    return {"cache": str(data.path), "size_mb": round(size / 1e6, 2), **data.meta["counts"],
            "build_s": data.meta["build_s"], "timings": data.meta["timings"]}
