"""The two message-passing paths (DGL's kernels, plain PyTorch) compute the same model on real batches.

Tolerances: in float64, predictions agree to 1e-10 relative and every parameter's gradient to 1e-9 (relative to
its largest entry); two epochs of ``fit()`` in float32 give validation MAEs within 1e-4 relative; a checkpoint
trained on one path predicts within 1e-5 on the other.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import tiny_config
from tune_fusion.checkpoint import save_checkpoint
from tune_fusion.data import make_loader
from tune_fusion.errors import ConfigError
from tune_fusion.export import load_model, open_model
from tune_fusion.model import FusionNetwork
from tune_fusion.model import message_passing as mp
from tune_fusion.train import fit

MODELS = {
    "graph_only": {"graph_only": True},
    "middle_fusion": {"use_middle_fusion": True, "middle_fusion_layers": "0,1", "middle_fusion_use_gate_norm": True,
                      "use_cross_modal": False},
    "cross_modal": {"use_middle_fusion": True, "middle_fusion_layers": "1", "use_cross_modal": True,
                    "use_contrastive": True},
}


def forward_backward(model: FusionNetwork, batch, backend: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.use_graph_backend(backend).zero_grad()
    prediction = model(batch).prediction
    ((prediction - batch.target.double()) ** 2).mean().backward()
    return prediction.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", list(MODELS))
def test_same_weights_same_batch_same_predictions_and_gradients(prepared, cache_dir, name):
    cfg = tiny_config(cache_dir, graph_dropout=0.0, middle_fusion_dropout=0.0, cross_modal_dropout=0.0,
                      **MODELS[name])
    torch.manual_seed(0)
    model = FusionNetwork(cfg.model, prepared.atom_feature_dim, prepared.text_dim).double().train()
    batch = next(iter(make_loader(prepared, "train", 16, _identity_scaler())))
    dgl_pred, dgl_grads = forward_backward(model, batch, "dgl")
    torch_pred, torch_grads = forward_backward(model, batch, "torch")
    assert dgl_pred.dtype == torch.float64 and len(dgl_pred) == 16
    torch.testing.assert_close(torch_pred, dgl_pred, rtol=1e-10, atol=1e-12)
    assert dgl_grads.keys() == torch_grads.keys()
    assert sum(".alignn_blocks." in k or ".gcn_blocks." in k for k in dgl_grads) >= 20  # the convolutions' weights
    for key, grad in dgl_grads.items():
        scale = float(grad.abs().max()) or 1.0
        assert float((torch_grads[key] - grad).abs().max()) <= 1e-9 * scale, key


def _identity_scaler():
    from tune_fusion.data import Standardizer

    return Standardizer(0.0, 1.0)


@pytest.mark.slow
def test_two_epochs_of_fit_agree_on_both_paths(prepared, cache_dir):
    base = tiny_config(cache_dir, **MODELS["cross_modal"])
    runs = {b: fit(base.replace({"graph_backend": b}), prepared) for b in ("dgl", "torch")}
    assert runs["dgl"].model.graph_backend == "dgl" and runs["torch"].model.graph_backend == "torch"
    for key in ("val_mae", "train_loss"):
        np.testing.assert_allclose([h[key] for h in runs["torch"].history], [h[key] for h in runs["dgl"].history],
                                   rtol=1e-4)


def test_a_checkpoint_trained_on_dgl_predicts_the_same_on_torch(prepared, cache_dir, tmp_path, sample_records):
    run = fit(tiny_config(cache_dir, graph_backend="dgl", **MODELS["middle_fusion"]), prepared)
    path = save_checkpoint(run.checkpoint(), tmp_path / "dgl.pt")
    on_dgl = open_model(run.checkpoint(), path, device="cpu", data=prepared, graph_backend="dgl").predict("val")
    on_torch = open_model(run.checkpoint(), path, device="cpu", data=prepared, graph_backend="torch").predict("val")
    np.testing.assert_allclose(on_torch["prediction"], on_dgl["prediction"], rtol=1e-5, atol=1e-6)
    descriptions = prepared.descriptions()
    by_id = {r["jid"]: r for r in sample_records}
    records = [{**by_id[str(prepared.ids[i])], "description": descriptions[str(prepared.ids[i])]}
               for i in prepared.split("val").tolist()]
    predicted = load_model(path, graph_backend="torch").predict(records)
    np.testing.assert_allclose(predicted, on_dgl["prediction"], rtol=1e-5, atol=1e-6)


def test_auto_picks_dgl_on_cpu_and_torch_where_dgl_cannot_run(monkeypatch):
    assert mp.resolve_backend("auto", "cpu") == "dgl"
    assert mp.resolve_backend("auto", "cuda:0") == "torch"
    assert mp.resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(ConfigError, match="graph_backend=dgl runs on the CPU only"):
        mp.resolve_backend("dgl", "cuda")
    monkeypatch.setattr(mp, "dgl_available", lambda: False)
    assert mp.resolve_backend("auto", "cpu") == "torch"
    with pytest.raises(ConfigError, match="DGL does not import here"):
        mp.resolve_backend("dgl", "cpu")


def test_readouts_agree():
    x = torch.randn(9, 4, dtype=torch.float64)
    counts = torch.tensor([2, 3, 4])
    expected = torch.stack([x[:2].mean(0), x[2:5].mean(0), x[5:].mean(0)])
    torch.testing.assert_close(mp.mean_by_crystal(x, counts), expected)
    torch.testing.assert_close(mp.dgl_mean_by_crystal(x, counts), expected)
