"""Tests of the neural network on real JARVIS crystal graphs with random text embeddings."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

import tune_fusion  # noqa: F401  (must precede dgl: installs the graphbolt stub)
from tune_fusion.config import SAMPLE_DATASET, Config, ModelConfig
from tune_fusion.data import Batch
from tune_fusion.data.arrays import CrystalGraph
from tune_fusion.data.batching import graph_tensors
from tune_fusion.data.graphs import build_graph
from tune_fusion.errors import DataError
from tune_fusion.model import ALIGNNEncoder, FusionNetwork, contrastive_loss, pad_by_graph

TEXT_DIM, SENTENCES = 384, 3
TINY = {"hidden_features": 16, "embedding_features": 8, "edge_input_features": 10, "triplet_input_features": 6,
        "alignn_layers": 2, "gcn_layers": 1, "text_projection_dim": 8, "middle_fusion_hidden_dim": 8,
        "cross_modal_hidden_dim": 8, "cross_modal_num_heads": 2}


def model_config(**overrides) -> ModelConfig:
    return Config.from_dict({**TINY, **overrides}).model


@pytest.fixture(scope="module")
def crystals() -> list[tuple[CrystalGraph, np.ndarray]]:
    """Five small real crystals (2-4 atoms, distinct sizes first) as (graph arrays, atom features)."""
    from jarvis.core.atoms import Atoms

    with gzip.open(SAMPLE_DATASET, "rt") as handle:
        records = json.load(handle)
    by_size = sorted(records, key=lambda r: len(r["atoms"]["elements"]))
    chosen = [r for r in by_size if 2 <= len(r["atoms"]["elements"]) <= 4]
    first = [next(r for r in chosen if len(r["atoms"]["elements"]) == n) for n in (2, 3, 4)]
    chosen = first + [r for r in chosen if r not in first][:2]
    return [build_graph(Atoms.from_dict(record["atoms"]), 8.0, 12, "cgcnn") for record in chosen]


def make_batch(crystals, seed: int = 0, pad_value: float = 0.0) -> Batch:
    """Batch of the given crystals with random text; the last sentence of crystal 0 is padding."""
    gen = torch.Generator().manual_seed(seed)
    n = len(crystals)
    mask = torch.ones(n, SENTENCES, dtype=torch.bool)
    mask[0, -1] = False
    sentences = torch.randn(n, SENTENCES, TEXT_DIM, generator=gen)
    sentences[~mask] = pad_value
    table = np.zeros((119, 92), dtype=np.float32)
    for crystal, features in crystals:
        table[crystal.z] = features
    return Batch(**graph_tensors([c for c, _ in crystals], table), text=torch.randn(n, TEXT_DIM, generator=gen),
                 sentences=sentences, sentence_mask=mask, target=torch.randn(n, generator=gen),
                 index=torch.arange(n))


def test_jarvis_graphs_as_arrays(crystals):
    crystal, features = crystals[0]
    assert features.shape == (len(crystal.z), 92) and crystal.bond_vectors.shape == (len(crystal.edge_src), 3)
    assert len(crystal.angle_src) == len(crystal.angle_cosines) and (np.abs(crystal.angle_cosines) <= 1 + 1e-6).all()
    # line-graph edges join bonds that meet at an atom: bond i -> j followed by bond j -> k
    assert (crystal.edge_dst[crystal.angle_src] == crystal.edge_src[crystal.angle_dst]).all()
    batch = make_batch(crystals[:2])
    first = len(crystals[0][0].z)
    assert batch.edge_src[len(crystal.edge_src):].min() >= first  # the second crystal's indices are shifted


@pytest.mark.parametrize("overrides", [{"graph_only": True}, {"use_middle_fusion": True, "middle_fusion_layers": "0,1"}])
def test_output_shapes(crystals, overrides):
    cfg = model_config(use_contrastive=True, **overrides)
    batch = make_batch(crystals)
    out = FusionNetwork(cfg, 92, TEXT_DIM)(batch)
    b = len(crystals)
    assert out.prediction.shape == (b,)
    assert out.graph_repr.shape == (b, 16)
    if cfg.graph_only:
        assert out.text_repr is None and out.contrastive_pair is None
    else:
        assert out.text_repr.shape == (b, 8)
        assert [t.shape for t in out.contrastive_pair] == [(b, 8), (b, 8)]


COMBINATIONS = [
    {"graph_only": True},
    {"use_cross_modal": False},
    {"use_cross_modal": True, "use_contrastive": True},
    *[
        {"use_middle_fusion": True, "middle_fusion_layers": layers, "middle_fusion_use_gate_norm": norm,
         "middle_fusion_use_learnable_scale": learn, "use_cross_modal": layers == "0,1",
         "use_contrastive": norm}
        for layers in ("0", "0,1") for norm in (False, True) for learn in (False, True)
    ],
]


@pytest.mark.parametrize("overrides", COMBINATIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_one_optimizer_step(crystals, overrides):
    torch.manual_seed(0)
    cfg = model_config(**overrides)
    model = FusionNetwork(cfg, 92, TEXT_DIM)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = make_batch(crystals)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(batch)
    loss = torch.nn.functional.mse_loss(out.prediction, batch.target)
    if out.contrastive_pair is not None:
        loss = loss + cfg.contrastive_weight * contrastive_loss(*out.contrastive_pair, cfg.contrastive_temperature)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    alphas = model.alpha_stats()
    assert set(alphas) == {f"layer_{i}" for i in cfg.fusion_layer_indices}
    n = batch.atom_features.shape[0]
    for alpha in alphas.values():
        assert alpha.shape == (n,) and not alpha.requires_grad
        assert bool(((alpha > 0) & (alpha < 1)).all())
    # rebuilding from (config, atom_feature_dim, text_dim) alone gives the same checkpoint keys
    assert FusionNetwork(cfg, 92, TEXT_DIM).state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize("learnable", [False, True])
def test_text_scale_gradient_only_when_learnable(crystals, learnable):
    cfg = model_config(use_middle_fusion=True, middle_fusion_layers="1", middle_fusion_use_learnable_scale=learnable,
                       middle_fusion_initial_scale=0.5)
    model = FusionNetwork(cfg, 92, TEXT_DIM)
    scale = model.middle_fusion_modules["layer_1"].text_scale
    assert "middle_fusion_modules.layer_1.text_scale" in model.state_dict()
    assert float(model.text_scales()["layer_1"]) == 0.5
    model(make_batch(crystals)).prediction.sum().backward()
    assert scale.requires_grad is learnable
    if learnable:
        assert isinstance(scale, torch.nn.Parameter) and scale.grad is not None and scale.grad.abs() > 0
    else:
        assert scale.grad is None
        assert "layer_1.text_scale" not in " ".join(name for name, _ in model.named_parameters())


def test_graph_only_shares_encoder_and_has_no_text_parameters():
    graph_only = FusionNetwork(model_config(graph_only=True, use_middle_fusion=True), 92, TEXT_DIM)
    fusion = FusionNetwork(model_config(use_middle_fusion=True, middle_fusion_layers="1", use_contrastive=True), 92, TEXT_DIM)
    assert type(graph_only.encoder) is type(fusion.encoder) is ALIGNNEncoder
    encoder_keys = [k for k in fusion.state_dict() if k.startswith("encoder.")]
    assert encoder_keys == [k for k in graph_only.state_dict() if k.startswith("encoder.")]
    assert all(k.startswith(("encoder.", "head.")) for k in graph_only.state_dict())
    assert any(k.startswith(("text_projection.", "cross_modal.", "middle_fusion")) for k in fusion.state_dict())
    assert graph_only.head[0].in_features == 16  # graph readout only


def test_graph_only_ignores_text(crystals):
    model = FusionNetwork(model_config(graph_only=True), 92, TEXT_DIM).eval()
    batch = make_batch(crystals)
    first = model(batch).prediction
    batch.text, batch.sentences = torch.randn(5, 7), None
    assert torch.equal(first, model(batch).prediction)


def test_middle_fusion_key_for_layer_2():
    model = FusionNetwork(model_config(alignn_layers=3, use_middle_fusion=True, middle_fusion_layers="2"), 92, TEXT_DIM)
    assert "middle_fusion_modules.layer_2.text_scale" in model.state_dict()
    assert list(model.text_scales()) == ["layer_2"]
    assert isinstance(model.middle_fusion_modules["layer_2"].text_transform[-1], torch.nn.Linear)


def test_middle_fusion_diagnostics(crystals):
    model = FusionNetwork(model_config(use_middle_fusion=True, middle_fusion_layers="0"), 92, TEXT_DIM).eval()
    model.set_record_diagnostics(True)
    batch = make_batch(crystals)
    model(batch)
    diag = model.middle_fusion_modules["layer_0"].last_diagnostics
    n = batch.atom_features.shape[0]
    assert {k: tuple(v.shape) for k, v in diag.items()} == {k: (n, 16) for k in ("h_in", "u", "gate", "h_out")}
    assert not torch.allclose(diag["h_in"], diag["h_out"])
    # u is one text vector per crystal, repeated over that crystal's atoms
    first_two = batch.atoms_per_crystal[0]
    assert torch.equal(diag["u"][0], diag["u"][first_two - 1]) and not torch.equal(diag["u"][0], diag["u"][-1])


def test_cross_modal_attention_is_real(crystals):
    torch.manual_seed(0)
    model = FusionNetwork(model_config(use_cross_modal=True, cross_modal_dropout=0.0), 92, TEXT_DIM)
    batch = make_batch(crystals, seed=1)
    model(batch).prediction.sum().backward()
    attention = model.cross_modal.last_attention
    a2s, s2a = attention["atoms_to_sentences"], attention["sentences_to_atoms"]
    n_max = int(batch.atoms_per_crystal.max())
    assert a2s.shape == (5, n_max, SENTENCES) and s2a.shape == (5, SENTENCES, n_max)
    assert torch.allclose(a2s.sum(-1), torch.ones(5, n_max), atol=1e-5)
    assert torch.all(a2s[0, :, -1] == 0)  # padded sentence gets no weight
    counts = batch.atoms_per_crystal
    for b, n in enumerate(counts.tolist()):  # padded atoms get no weight
        assert torch.all(s2a[b, :, n:] == 0)
    real = a2s[1:, :2, :]  # crystals 1.. have 3 real sentences and >= 2 atoms
    assert real.std() > 1e-3 and (real - 1).abs().max() > 0.1  # neither uniform nor identically 1
    assert s2a[2].std() > 1e-3  # crystal 2 is the largest: no padded atoms
    dim = 8
    for mha in (model.cross_modal.atoms_to_sentences, model.cross_modal.sentences_to_atoms):
        grad = mha.in_proj_weight.grad
        assert grad[:dim].abs().sum() > 0 and grad[dim:2 * dim].abs().sum() > 0  # query and key slices
    batch.sentences = batch.sentences + torch.randn_like(batch.sentences)
    model(batch)
    assert not torch.allclose(model.cross_modal.last_attention["atoms_to_sentences"], a2s)


def test_pad_by_graph():
    x = torch.arange(6.0).unsqueeze(-1)
    padded, mask = pad_by_graph(x, torch.tensor([1, 3, 2]))
    assert padded.squeeze(-1).tolist() == [[0, 0, 0], [1, 2, 3], [4, 5, 0]]
    assert mask.tolist() == [[True, False, False], [True, True, True], [True, True, False]]


def test_padding_does_not_leak(crystals):
    """A crystal's prediction is the same alone or next to a bigger crystal and garbage in padded sentences."""
    torch.manual_seed(0)
    cfg = model_config(use_middle_fusion=True, middle_fusion_layers="0,1", use_cross_modal=True)
    model = FusionNetwork(cfg, 92, TEXT_DIM)
    model(make_batch(crystals))  # one training-mode pass so BatchNorm running stats are not the defaults
    model.eval()
    small, big = crystals[0], crystals[2]  # 2 and 4 atoms
    alone = make_batch([small])
    pair = make_batch([small, big], pad_value=100.0)
    pair.text[0], pair.sentences[0] = alone.text[0], alone.sentences[0]
    pair.sentences[0, -1] = 100.0  # padded slot of crystal 0: must be masked out
    with torch.no_grad():
        assert not torch.equal(model(alone).prediction, model(make_batch([small], seed=3)).prediction)
        assert torch.allclose(model(alone).prediction, model(pair).prediction[:1], atol=1e-5)


def test_contrastive_loss():
    x = torch.randn(6, 8)
    matched = contrastive_loss(x, x, temperature=0.1)
    shuffled = contrastive_loss(x, x.roll(1, dims=0), temperature=0.1)
    assert matched < shuffled
    assert torch.isclose(contrastive_loss(x, 3 * x, 0.1), matched)  # cosine similarity: scale-free


def test_text_dim_mismatch_is_clear(crystals):
    model = FusionNetwork(model_config(), 92, TEXT_DIM)
    batch = make_batch(crystals)
    batch.text = batch.text[:, :100]
    with pytest.raises(DataError, match="text_dim=384"):
        model(batch)


def test_the_gate_reads_layer_normed_inputs_when_gate_norm_is_on(crystals):
    """gate = sigmoid(W LayerNorm([h; u]) + b): computed by hand from the module's own weights."""
    torch.manual_seed(0)
    model = FusionNetwork(model_config(use_middle_fusion=True, middle_fusion_layers="0",
                                       middle_fusion_use_gate_norm=True), 92, TEXT_DIM).eval()
    fusion = model.middle_fusion_modules["layer_0"]
    with torch.no_grad():  # a LayerNorm that is not the identity at initialisation
        fusion.gate_norm.weight.uniform_(0.5, 2.0)
        fusion.gate_norm.bias.uniform_(-1.0, 1.0)
    model.set_record_diagnostics(True)
    model(make_batch(crystals))
    record = fusion.last_diagnostics
    joined = torch.cat([record["h_in"], record["u"]], dim=-1)
    normed = torch.nn.functional.layer_norm(joined, joined.shape[-1:], fusion.gate_norm.weight, fusion.gate_norm.bias)
    assert torch.allclose(record["gate"], torch.sigmoid(fusion.gate(normed)), atol=1e-6)
    assert not torch.allclose(record["gate"], torch.sigmoid(fusion.gate(joined)), atol=1e-3)
