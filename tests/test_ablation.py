"""What the text is worth: the text ablation against a hand computation, reproducible shuffles, a constructed case
where the text carries the target, a graph-only model with exactly no text effect; diagnosis of any checkpoint kind
and of a standalone run folder; the original guide's checks as warnings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers import tiny_config
from tune_fusion import analysis, diagnostics
from tune_fusion.ablation import neutral_text, shuffles, text_ablation
from tune_fusion.checkpoint import save_checkpoint
from tune_fusion.data import TextOverride, prepare
from tune_fusion.export import export_best
from tune_fusion.train import fit

FUSED = {"use_middle_fusion": True, "middle_fusion_layers": "1", "use_cross_modal": True,
         "middle_fusion_use_learnable_scale": True}


@pytest.fixture(scope="module")
def fused_run(prepared, cache_dir):
    return fit(tiny_config(cache_dir, epochs=2, **FUSED), prepared)


def test_ablation_equals_a_hand_computation(fused_run, prepared):
    trained = fused_run.best()
    val = prepared.split("val")
    found = text_ablation(trained, val, permutations=3, seed=7)

    def mae(text=None) -> float:
        batch = next(iter(trained.loader(val, text=text)))
        with torch.no_grad():
            trained.model.eval()
            prediction = trained.standardizer.inverse(trained.model(batch).prediction.double())
        return float((prediction - prepared.targets[batch.index]).abs().mean())

    own, shuffled, none = found["rows"]
    assert len(val) <= trained.cfg.train.batch_size  # one batch holds the whole split
    assert own["val_mae"] == pytest.approx(mae(), rel=1e-6)
    by_hand = []
    for mapping in shuffles(val, 3, seed=7):
        batch = next(iter(trained.loader(torch.tensor([mapping[i] for i in val.tolist()]))))
        own_batch = next(iter(trained.loader(val)))
        own_batch.text, own_batch.sentences, own_batch.sentence_mask = batch.text, batch.sentences, batch.sentence_mask
        with torch.no_grad():
            prediction = trained.standardizer.inverse(trained.model(own_batch).prediction.double())
        by_hand.append(float((prediction - prepared.targets[own_batch.index]).abs().mean()))
    np.testing.assert_allclose(found["shuffled_maes"], by_hand, rtol=1e-6)
    assert shuffled["val_mae"] == pytest.approx(np.mean(by_hand)) and shuffled["spread"] == pytest.approx(
        np.std(by_hand, ddof=1))
    assert none["val_mae"] == pytest.approx(mae(TextOverride(constant=neutral_text(trained))), rel=1e-6)
    assert shuffled["delta_vs_own"] == pytest.approx(shuffled["val_mae"] - own["val_mae"], abs=1e-9)


def test_shuffles_are_reproducible_and_never_a_crystals_own_text():
    indices = torch.arange(10, 20)
    first, again, other = shuffles(indices, 4, seed=1), shuffles(indices, 4, seed=1), shuffles(indices, 4, seed=2)
    assert first == again and first != other
    for mapping in first:
        assert sorted(mapping.values()) == indices.tolist() and all(k != v for k, v in mapping.items())


def test_a_graph_only_model_shows_exactly_no_text_effect(prepared, cache_dir):
    trained = fit(tiny_config(cache_dir, graph_only=True, epochs=1), prepared).best()
    found = text_ablation(trained, "val", permutations=2)
    own, shuffled, none = found["rows"]
    assert shuffled["val_mae"] == own["val_mae"] == none["val_mae"]
    assert shuffled["delta_vs_own"] == 0.0 and none["delta_vs_own"] == 0.0
    assert found["verdict"].startswith("no measurable effect")


@pytest.mark.slow
def test_text_that_carries_the_target_is_worth_a_lot(tmp_path, sample_records):
    """A constructed dataset whose descriptions say how large the target is: shuffling them must hurt."""
    rows = [dict(r) for r in sample_records if isinstance(r["formation_energy_peratom"], float)][:150]
    cut = np.quantile([r["formation_energy_peratom"] for r in rows], [1 / 3, 2 / 3])
    words = ("strongly bound, very negative formation energy", "moderately bound", "unstable, positive energy")
    for r in rows:
        r["description"] = f"This crystal is {words[int(np.searchsorted(cut, r['formation_energy_peratom']))]}."
    path = tmp_path / "told.json"
    path.write_text(json.dumps(rows))
    cfg = tiny_config(tmp_path / "cache", dataset=str(path), max_structures=0, epochs=15, learning_rate=3e-3,
                      use_cross_modal=False, batch_size=16, text_projection_dim=16)
    data, _ = prepare(cfg.data)
    found = text_ablation(fit(cfg, data).best(), "val", permutations=5)
    own, shuffled, _ = found["rows"]
    assert shuffled["delta_vs_own"] > shuffled["ci95"] > 0, found["rows"]  # measurably worse with others' text
    assert found["verdict"].startswith("text lowers MAE by")


def test_any_checkpoint_kind_is_diagnosed_without_an_experiment(fused_run, prepared, tmp_path):
    trial_like = save_checkpoint(fused_run.checkpoint(), tmp_path / "trial" / "checkpoint.pt")
    standalone = save_checkpoint({**fused_run.checkpoint(), "model": fused_run.checkpoint()["best_model"]},
                                 tmp_path / "run" / "best_val_model.pt")
    exported = export_best(trial_like, tmp_path / "export", {"val_mae": fused_run.best_val_mae})
    results = [analysis.analyze(analysis.Request(checkpoint=str(p), output=tmp_path / f"out{i}", device="cpu",
                                                 permutations=2))
               for i, p in enumerate((trial_like, standalone, exported))]
    maes = [r.checkpoint.checkpoint.val_mae for r in results]
    assert maes == pytest.approx([fused_run.best_val_mae] * 3, rel=1e-5)
    out = tmp_path / "out0"
    for name in ("text_ablation.csv", "text_ablation.png", "text_ablation.pdf", "report.md",
                 "diagnostics/alpha_by_element_checkpoint.csv", "diagnostics/alpha_checkpoint.npz",
                 "diagnostics/alpha_checkpoint_layer_1.pdf"):
        assert (out / name).is_file(), name
    rows = (out / "diagnostics" / "alpha_by_element_checkpoint.csv").read_text().splitlines()
    assert rows[0] == "layer,element,atoms,crystals,mean,std" and len(rows) > 2
    report = (out / "report.md").read_text()
    assert "What the text is worth" in report and "Checks of the original guide" in report


@pytest.mark.slow
def test_a_standalone_run_folder_draws_its_curves_and_text_scale(cache_dir, tmp_path, prepared):
    from tests.helpers import tiny_flags
    from tune_fusion.train.__main__ import main as train_main

    train_main(["--output_dir", str(tmp_path), *tiny_flags(cache_dir), "--epochs", "3", "--use_middle_fusion",
                "True", "--middle_fusion_layers", "1", "--middle_fusion_use_learnable_scale", "True"])
    folder = tmp_path / "formation_energy_peratom"
    summary = analysis.analyze(analysis.Request(str(folder), tmp_path / "analysis", device="cpu", permutations=2)).run
    assert summary.run.epochs == 3 and set(summary.figures) == {"learning_curves", "text_scale", "parity"}
    (folder / "test_predictions.csv").rename(folder / "predictions_test.csv")  # the name older runs wrote
    again = analysis.analyze_run(str(folder), tmp_path / "analysis2", device="cpu", permutations=2)
    assert "parity" in again.figures
    assert (tmp_path / "analysis" / "text_scale.png").is_file() and summary.checkpoint.val_mae > 0


def layer(**changes) -> dict:
    base = {"text_scale": 2.0, "norm_ratio": 1.0, "cos_after": 0.4}
    return {**base, **changes}


@pytest.mark.parametrize("changes, fires", [
    ({}, None), ({"text_scale": 80.0}, "exploding"), ({"text_scale": 0.01}, "collapsing"),
    ({"norm_ratio": 500.0}, "atoms drown the text"), ({"norm_ratio": 0.001}, "the text drowns the atoms"),
    ({"cos_after": -0.2}, "barely shapes"),
])
def test_the_guides_checks_fire_with_their_numbers(changes, fires):
    found = diagnostics.fusion_warnings(layer(**changes))
    if fires is None:
        assert found == []
    else:
        assert len(found) == 1 and fires in found[0] and f"{list(changes.values())[0]:.3g}" in found[0]


def test_a_checkpoint_with_an_exploded_scale_warns(fused_run, tmp_path, caplog):
    ckpt = fused_run.checkpoint()
    ckpt["best_model"] = {**ckpt["best_model"], "middle_fusion_modules.layer_1.text_scale": torch.tensor(80.0)}
    path = save_checkpoint(ckpt, tmp_path / "exploded.pt")
    found = analysis.analyze_checkpoint(path, tmp_path / "out", device="cpu", permutations=2)
    warnings = found.checkpoint.diagnosis["layers"]["layer_1"]["warnings"]
    assert any("text_scale 80 > 50" in w for w in warnings)
    assert "text_scale 80 > 50" in caplog.text


def test_bad_checkpoints_for_diagnosis_are_one_line_errors(tmp_path, capsys):
    import analyze_trials
    from tune_fusion.cli import run

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as stop:
        run(analyze_trials.main, ["--checkpoint", str(broken), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "cannot be read" in err


def test_neutral_text_is_the_training_mean(fused_run, prepared):
    vector, sentence = neutral_text(fused_run.best())
    refs = prepared.arrays["text_ref"][prepared.split("train").numpy()]
    expected = np.mean([prepared.texts[s].arrays["text"][r] for s, r in refs], axis=0)  # truncated: the default
    np.testing.assert_allclose(vector, expected, rtol=1e-6)
    assert sentence.shape == (1, prepared.text_dim)
