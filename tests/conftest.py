"""Shared fixtures: real JARVIS sample data, prepared once per test session into a temporary cache."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import tiny_config, write_space
from tune_fusion.config import SAMPLE_DATASET


@pytest.fixture(scope="session")
def sample_records() -> list[dict]:
    """The 800 real dft_3d records shipped in data/."""
    import gzip

    with gzip.open(SAMPLE_DATASET, "rt") as handle:
        return json.load(handle)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """The session's cache folder; with TUNE_FUSION_TEST_CACHE set, a copy of that folder (a cache prepared
    elsewhere: the GPU machine has no sentence encoder, see benchmarks/gpu_check.sh)."""
    folder = tmp_path_factory.mktemp("cache")
    seed = os.environ.get("TUNE_FUSION_TEST_CACHE")
    if seed:
        shutil.copytree(seed, folder, dirs_exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def prepared(cache_dir):
    """The prepared cache of the tiny config (built once per session)."""
    from tune_fusion.data import prepare

    data, _ = prepare(tiny_config(cache_dir).data)
    return data


@pytest.fixture(scope="session")
def tiny_search(tmp_path_factory, cache_dir, prepared):
    """One real search shared by the search and analysis tests: 6 trials, 3 epochs, Optuna + ASHA, fusion searched."""
    from tune_fusion.search import run_search
    from tune_fusion.space import load_spec

    root = tmp_path_factory.mktemp("search")
    spec = load_spec(write_space(root / "tiny.yaml", cache_dir, middle_fusion_use_learnable_scale=True))
    return run_search(spec, storage=str(root / "results"), name="tiny")
