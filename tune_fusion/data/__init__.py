"""Data pipeline: dataset on disk -> records -> prepared cache (graphs, text embeddings, split) -> batches."""

from tune_fusion.data.batching import Batch, CrystalDataset, Standardizer, TextOverride, make_loader
from tune_fusion.data.cache import PreparedData, cache_path, load, prepare, summary

__all__ = ["Batch", "CrystalDataset", "PreparedData", "Standardizer", "TextOverride", "cache_path", "load",
           "make_loader", "prepare", "summary"]
