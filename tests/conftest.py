"""Shared fixtures: real JARVIS sample data, prepared once per test session into a temporary cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import tune_fusion  # noqa: F401  (installs the DGL compatibility step before dgl is imported)
from tune_fusion.config import SAMPLE_DATASET, Config

REPO = Path(__file__).resolve().parent.parent
ALIGNN_FOLDER = REPO / "tests" / "data" / "alignn_sample_data"  # a copy of ../shared/data/alignn_sample_data (NIST)


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


TINY = ("cache_dir", "max_structures", "alignn_layers", "gcn_layers", "hidden_features", "embedding_features",
        "edge_input_features", "triplet_input_features", "text_projection_dim", "middle_fusion_hidden_dim",
        "cross_modal_hidden_dim", "batch_size", "early_stopping_patience")


def write_space(path: Path, cache_dir: Path, num_samples: int = 6, epochs: int = 3, fifo: bool = False,
                **fixed) -> Path:
    """The tiny search space (Optuna + ASHA; ``fifo``: every trial runs all its epochs) with ``fixed`` options."""
    base = tiny_config(cache_dir).to_dict()
    space = {
        "dataset": {"path": base["dataset"], "target": "formation_energy_peratom"},
        "fixed": {**{k: base[k] for k in TINY}, "epochs": epochs, **fixed},
        "search": {
            "learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
            "use_middle_fusion": {"type": "choice", "values": [True, False]},
            "middle_fusion_layers": {"type": "choice", "values": ["0", "1"], "when": {"use_middle_fusion": True}},
            "use_cross_modal": {"type": "choice", "values": [True, False]},
            "cross_modal_num_heads": {"type": "choice", "values": [1, 2], "when": {"use_cross_modal": True}},
        },
        "scheduler": {"type": "fifo"} if fifo else {"type": "asha", "max_t": epochs, "grace_period": 1,
                                                     "reduction_factor": 2},
        "searcher": {"type": "optuna", "sampler": "tpe", "seed": 0},
        "resources": {"cpu": 1, "gpu": 0},
        "num_samples": num_samples,
        "max_concurrent": 2,
    }
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def trial_rows(exp_dir: Path) -> dict[str, list[dict]]:
    """Every trial's reported results, read from its result.json."""
    rows = {}
    for result in sorted(exp_dir.glob("trial_*/result.json")):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        rows[result.parent.name] = lines
    return rows



@pytest.fixture(scope="session")
def tiny_search(tmp_path_factory, cache_dir, prepared):
    """One real search shared by the search and analysis tests: 6 trials, 3 epochs, Optuna + ASHA, fusion searched."""
    from tune_fusion.search import run_search
    from tune_fusion.space import load_spec

    root = tmp_path_factory.mktemp("search")
    spec = load_spec(write_space(root / "tiny.yaml", cache_dir, middle_fusion_use_learnable_scale=True))
    return run_search(spec, storage=str(root / "results"), name="tiny")
