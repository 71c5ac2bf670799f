"""The prepared cache: graphs, text embeddings, targets and the split, built once and opened read-only by every trial.

A cache is a directory ``<cache_dir>/<dataset>-<target>-<key>`` where ``key`` hashes the dataset's content, the
target, the graph settings, the text encoder and the split. It is built in a temporary directory and renamed
into place (a crash mid-build leaves nothing that loads), under a file lock (concurrent trials or nodes never
build it twice).

Layout: ``graphs.bin`` and ``line_graphs.bin`` (DGL), ``tensors.pt`` (targets, text/sentence embeddings, split
indices, atomic numbers), ``descriptions.json`` (the texts), ``meta.json`` (ids, settings, counts; written last).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dgl
import torch
from filelock import FileLock
from tqdm.auto import tqdm

from tune_fusion.cluster import parallel_map
from tune_fusion.config import DataConfig
from tune_fusion.data.embed import check_encoder, embed_texts
from tune_fusion.data.graphs import build_graph
from tune_fusion.data.records import RecordReport, build_records
from tune_fusion.data.sources import Source, locate, read_entries, sidecar_path
from tune_fusion.data.split import split_indices
from tune_fusion.data.text import DescriptionStore, fill_descriptions
from tune_fusion.errors import DataError

log = logging.getLogger(__name__)

CACHE_VERSION = 1
# The DataConfig fields that change what a cache holds (everything but where caches live).
KEY_FIELDS = ("target", "cutoff", "max_neighbors", "atom_features", "text_encoder", "max_sentences", "max_structures",
              "train_ratio", "val_ratio", "test_ratio", "n_train", "n_val", "n_test", "split_seed")
SPLITS = ("train", "val", "test")


@dataclass
class PreparedData:
    """Everything the model trains on, in memory. Crystal i is ``ids[i]``; splits hold crystal indices."""

    path: Path
    meta: dict[str, Any]
    graphs: list[dgl.DGLGraph]
    line_graphs: list[dgl.DGLGraph]
    tensors: dict[str, torch.Tensor]

    @property
    def ids(self) -> list[str]:
        return self.meta["ids"]

    @property
    def fingerprint(self) -> str:
        """Identifies the prepared data (content + settings); stored in checkpoints."""
        return self.meta["key"]

    @property
    def atom_feature_dim(self) -> int:
        return int(self.graphs[0].ndata["atom_features"].shape[1])

    @property
    def text_dim(self) -> int:
        return int(self.tensors["text"].shape[1])

    def split(self, name: str) -> torch.Tensor:
        """Crystal indices of split ``name`` (train, val or test)."""
        return self.tensors[f"split_{name}"]

    def split_ids(self) -> dict[str, list[str]]:
        return {name: [self.ids[i] for i in self.split(name).tolist()] for name in SPLITS}


def cache_key(cfg: DataConfig, fingerprint: str) -> str:
    settings = {name: getattr(cfg, name) for name in KEY_FIELDS}
    payload = json.dumps({"version": CACHE_VERSION, "content": fingerprint, **settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def cache_path(cfg: DataConfig, source: Source | None = None) -> Path:
    """Where the cache for ``cfg`` lives (whether built or not)."""
    source = source or locate(cfg.dataset, cfg.cache_dir)
    stem = source.path.name.split(".")[0] or "dataset"
    return Path(cfg.cache_dir).expanduser().resolve() / f"{stem}-{cfg.target}-{cache_key(cfg, source.fingerprint)}"


def is_complete(path: Path) -> bool:
    return (path / "meta.json").is_file()


def prepare(cfg: DataConfig) -> tuple[PreparedData, bool]:
    """Open the cache for ``cfg``, building it first if needed; returns (data, whether this call built it)."""
    source = locate(cfg.dataset, cfg.cache_dir)
    path = cache_path(cfg, source)
    if not is_complete(path):
        check_encoder(cfg.text_encoder)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if not is_complete(path):  # another process may have built it while we waited
                _build(cfg, source, path)
                return load(path), True
    return load(path), False


def load(path: str | Path) -> PreparedData:
    """Open a built cache read-only; raises DataError when ``path`` is not one."""
    path = Path(path).expanduser()
    if not is_complete(path):
        raise DataError(f"{path} is not a prepared cache (no meta.json); run "
                        "`python -m tune_fusion.data prepare --dataset ... --target ...` first")
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("version") != CACHE_VERSION:
        raise DataError(f"{path} was prepared by another version of tune-fusion (cache version {meta.get('version')},"
                        f" expected {CACHE_VERSION}); prepare it again")
    graphs, _ = dgl.load_graphs(str(path / "graphs.bin"))
    line_graphs, _ = dgl.load_graphs(str(path / "line_graphs.bin"))
    tensors = torch.load(path / "tensors.pt", weights_only=True)
    return PreparedData(path, meta, graphs, line_graphs, tensors)


def _build(cfg: DataConfig, source: Source, path: Path) -> None:
    start = time.perf_counter()
    timings: dict[str, float] = {}
    for stale in path.parent.glob(f".building-{path.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a crashed build; we hold the lock
    tmp = path.parent / f".building-{path.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        records, report = build_records(source, read_entries(source, cfg.target), cfg.max_structures)
        timings["records_s"] = time.perf_counter() - start
        records, graphs, line_graphs = _build_graphs(records, cfg, report)
        timings["graphs_s"] = time.perf_counter() - start - sum(timings.values())
        store = DescriptionStore(Path(cfg.cache_dir).expanduser() / "descriptions.csv.gz")
        texts, text_counts = fill_descriptions([r.jid for r in records], [r.atoms for r in records],
                                               [r.text for r in records], store, sidecar_path(source.path), parallel_map)
        timings["text_s"] = time.perf_counter() - start - sum(timings.values())
        tensors = embed_texts(texts, cfg.text_encoder, cfg.max_sentences)
        timings["embedding_s"] = time.perf_counter() - start - sum(timings.values())
        split = split_indices(len(records), (cfg.train_ratio, cfg.val_ratio, cfg.test_ratio),
                              (cfg.n_train, cfg.n_val, cfg.n_test), cfg.split_seed)
        tensors["targets"] = torch.tensor([r.target for r in records], dtype=torch.float64)
        tensors["atomic_numbers"] = torch.tensor([z for r in records for z in r.atoms.atomic_numbers], dtype=torch.int64)
        tensors.update({f"split_{name}": torch.from_numpy(idx) for name, idx in split.items()})
        dgl.save_graphs(str(tmp / "graphs.bin"), graphs)
        dgl.save_graphs(str(tmp / "line_graphs.bin"), line_graphs)
        torch.save(tensors, tmp / "tensors.pt")
        (tmp / "descriptions.json").write_text(json.dumps(dict(zip((r.jid for r in records), texts))))
        (tmp / "prepare_log.json").write_text(json.dumps(report.to_dict(), indent=1))
        meta = {
            "version": CACHE_VERSION,
            "key": path.name.rsplit("-", 1)[-1],
            "dataset": str(source.path),
            "format": source.format,
            "content_sha256": source.fingerprint,
            "settings": {name: getattr(cfg, name) for name in KEY_FIELDS},
            "ids": [r.jid for r in records],
            "counts": {**{k: v for k, v in report.to_dict().items() if not k.endswith("_ids")},
                       "split": {k: int(len(v)) for k, v in split.items()}, "text": text_counts},
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "build_s": round(time.perf_counter() - start, 3),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("prepared %s in %.1f s", path, time.perf_counter() - start)


def _build_graphs(records: list, cfg: DataConfig, report: RecordReport) -> tuple[list, list, list]:
    kept, graphs, line_graphs = [], [], []
    for record in tqdm(records, desc="graphs", unit="crystal"):
        try:
            graph, line_graph = build_graph(record.atoms, cfg.cutoff, cfg.max_neighbors, cfg.atom_features)
        except Exception as err:  # a structure jarvis cannot turn into a graph is skipped and listed by id
            report.skipped_structure[record.jid] = f"graph: {type(err).__name__}: {err}"[:200]
            continue
        kept.append(record)
        graphs.append(graph)
        line_graphs.append(line_graph)
    report.kept = len(kept)
    if not kept:
        raise DataError(f"no structure of {cfg.dataset} could be turned into a graph "
                        f"(cutoff={cfg.cutoff}, max_neighbors={cfg.max_neighbors}); see the skipped ids")
    return kept, graphs, line_graphs


def summary(data: PreparedData) -> dict[str, Any]:
    """What ``prepare`` prints: counts, split sizes, path, size on disk, build time."""
    size = sum(f.stat().st_size for f in data.path.iterdir() if f.is_file())
    return {"cache": str(data.path), "size_mb": round(size / 1e6, 2), **data.meta["counts"],
            "build_s": data.meta["build_s"], "timings": data.meta["timings"]}

