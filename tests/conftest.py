"""Shared fixtures: real JARVIS sample data, prepared once per test session into a temporary cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tune_fusion  # noqa: F401  (installs the DGL compatibility step before dgl is imported)
from tune_fusion.config import SAMPLE_DATASET, Config

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
ALIGNN_FOLDER = SHARED_DATA / "alignn_sample_data"


@pytest.fixture(scope="session")
def sample_records() -> list[dict]:
    """The 800 real dft_3d records shipped in data/."""
    import gzip

    with gzip.open(SAMPLE_DATASET, "rt") as handle:
        return json.load(handle)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def tiny_config(cache_dir: Path, **overrides) -> Config:
    """A small real setting: 60 sample crystals (shipped descriptions, no generation), a tiny model."""
    values = {"cache_dir": str(cache_dir), "max_structures": 60, "alignn_layers": 2, "gcn_layers": 1,
              "hidden_features": 16, "embedding_features": 8, "edge_input_features": 16,
              "triplet_input_features": 8, "text_projection_dim": 8, "middle_fusion_hidden_dim": 16,
              "cross_modal_hidden_dim": 16, "cross_modal_num_heads": 2, "batch_size": 16, "epochs": 2,
              "early_stopping_patience": 0, "middle_fusion_layers": "1"}
    values.update(overrides)
    return Config.from_dict(values, source="test")


@pytest.fixture(scope="session")
def prepared(cache_dir):
    """The prepared cache of the tiny config (built once per session)."""
    from tune_fusion.data import prepare

    data, _ = prepare(tiny_config(cache_dir).data)
    return data
