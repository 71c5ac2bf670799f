"""The prepared cache on its way to other nodes: published beside the experiments, fetched once per node, and never
taken for complete when a copy was cut short."""

from __future__ import annotations

import numpy as np
import pytest

from tune_fusion.checkpoint import checkpoint_config
from tune_fusion.data import load, make_loader
from tune_fusion.data.batching import Standardizer
from tune_fusion.data.cache import shard_folders
from tune_fusion.data.publish import fetch, publish
from tune_fusion.errors import DataError


def test_publish_then_fetch_gives_the_same_batches(prepared, tmp_path):
    publish(prepared.path, str(tmp_path / "published"))
    path, cost = fetch(prepared.path.name, str(tmp_path / "published"), tmp_path / "node")
    assert cost["cache_fetch_mb"] > 0 and path == (tmp_path / "node" / prepared.path.name).resolve()
    again, second = fetch(prepared.path.name, str(tmp_path / "published"), tmp_path / "node")
    assert again == path and second == {"cache_fetch_s": 0.0, "cache_fetch_mb": 0.0}  # once per node
    mine, theirs = (next(iter(make_loader(d, "val", 8, Standardizer(0.0, 1.0)))) for d in (prepared, load(path)))
    assert all(np.array_equal(getattr(mine, k).numpy(), getattr(theirs, k).numpy())
               for k in ("atom_features", "edge_src", "angle_cosines", "text", "sentences", "target"))


def test_a_publish_cut_short_is_completed_not_taken_for_whole(prepared, tmp_path):
    root = tmp_path / "published"
    publish(prepared.path, str(root))
    shard = root / shard_folders(prepared.path)[0]
    (shard / "keys.json").unlink()  # as if the driver died mid-copy: the shard's last file never arrived
    next(shard.glob("*.npy")).unlink()
    (root / prepared.path.name / "meta.json").unlink()
    with pytest.raises(DataError, match="neither in this node's cache_dir nor published"):
        fetch(prepared.path.name, str(root), tmp_path / "early_node")
    publish(prepared.path, str(root))  # the next publish (a resumed search) completes it
    path, _ = fetch(prepared.path.name, str(root), tmp_path / "node")
    assert len(load(path)) == len(prepared)


def test_checkpoints_from_before_text_vector_read_the_whole_text_vector(prepared, cache_dir):
    from tests.helpers import tiny_config

    values = tiny_config(cache_dir).to_dict()
    del values["text_vector"]
    assert checkpoint_config({"config": values}, "old.pt").data.text_vector == "truncated"
    chosen = tiny_config(cache_dir, text_vector="sentence_mean").to_dict()
    assert checkpoint_config({"config": chosen}, "new.pt").data.text_vector == "sentence_mean"
