"""The training loop on real sample data: metrics, stopping rules, checkpoints and resume, the standalone CLI."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import REPO, tiny_config, tiny_flags
from tune_fusion.checkpoint import save_checkpoint
from tune_fusion.config import SAMPLE_DATASET
from tune_fusion.data import Standardizer, prepare
from tune_fusion.errors import ConfigError
from tune_fusion.train import fit, parameter_groups, start_run
from tune_fusion.train.__main__ import main as train_main


def roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_fit_reports_every_metric_each_epoch(prepared, cache_dir):
    cfg = tiny_config(cache_dir, use_middle_fusion=True, middle_fusion_layers="0,1",
                      middle_fusion_use_learnable_scale=True, epochs=2)
    seen = []
    run = fit(cfg, prepared, on_epoch=lambda metrics, r: seen.append(metrics))
    assert [m["epoch"] for m in seen] == [1, 2] and run.epoch == 2
    for key in ("train_loss", "train_mae", "val_mae", "val_rmse", "lr", "text_scale/layer_0", "text_scale/layer_1",
                "alpha_mean", "alpha_std", "seconds_per_epoch", "crystals_per_second"):
        assert np.isfinite(seen[-1][key]), key
    assert 0 < seen[-1]["alpha_mean"] < 1 and seen[-1]["stop_reason"] == ""
    assert run.best_val_mae == min(m["val_mae"] for m in seen)


def test_no_weight_decay_on_biases_norms_and_scales(prepared, cache_dir):
    run = start_run(tiny_config(cache_dir, use_middle_fusion=True, middle_fusion_use_learnable_scale=True), prepared)
    decayed = {id(p) for p in parameter_groups(run.model, 0.1)[0]["params"]}
    for name, param in run.model.named_parameters():
        assert (id(param) in decayed) == (param.ndim >= 2), name


@pytest.mark.slow
def test_few_epochs_beat_the_mean_predictor(cache_dir):
    cfg = tiny_config(cache_dir, max_structures=160, epochs=12, graph_only=True, learning_rate=3e-3, batch_size=32,
                      hidden_features=32)
    data, _ = prepare(cfg.data)
    run = fit(cfg, data)
    targets = data.targets
    mean_predictor = float((targets[data.split("val")] - targets[data.split("train")].mean()).abs().mean())
    assert run.best_val_mae < 0.8 * mean_predictor, (run.best_val_mae, mean_predictor)


def test_checkpoint_roundtrips_and_resume_continues_the_same_run(prepared, cache_dir):
    cfg = tiny_config(cache_dir, epochs=4, use_middle_fusion=True, graph_dropout=0.1,  # dropout everywhere
                      middle_fusion_use_learnable_scale=True)
    full = fit(cfg, prepared)
    saved = {}

    def stop_after_two(metrics, run):
        if run.epoch == 2:
            saved.update(roundtrip(run.checkpoint()))
            raise KeyboardInterrupt  # the process dies mid-run

    with pytest.raises(KeyboardInterrupt):
        fit(cfg, prepared, on_epoch=stop_after_two)
    assert saved["epoch"] == 2 and saved["config"] == cfg.to_dict()
    assert saved["dataset_fingerprint"] == prepared.fingerprint
    assert set(saved["split_ids"]["test"]) == {prepared.ids[i] for i in prepared.split("test").tolist()}
    assert any(k.endswith("text_scale") for k in saved["model"])
    resumed = fit(cfg, prepared, checkpoint=saved)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    np.testing.assert_allclose([h["val_mae"] for h in resumed.history], [h["val_mae"] for h in full.history],
                               rtol=1e-4)
    np.testing.assert_allclose([h["lr"] for h in resumed.history], [h["lr"] for h in full.history])


def test_text_scale_beyond_bound_stops_with_a_reason(prepared, cache_dir):
    cfg = tiny_config(cache_dir, use_middle_fusion=True, middle_fusion_initial_scale=5.0, max_text_scale=2.0, epochs=3)
    run = fit(cfg, prepared)
    assert run.epoch == 1 and run.stop_reason.startswith("text_scale_exploded")
    assert run.history[-1]["stop_reason"] == run.stop_reason


def test_nan_loss_stops_with_a_reason_instead_of_crashing(prepared, cache_dir):
    cfg = tiny_config(cache_dir, epochs=3, graph_only=True)
    targets = prepared.targets
    prepared.targets = targets.clone()
    prepared.targets[prepared.split("train")[0]] = float("nan")
    try:
        run = fit(cfg, prepared)
    finally:
        prepared.targets = targets
    assert run.epoch == 1 and run.stop_reason.startswith("nan_loss")


def test_test_split_evaluated_with_best_weights(prepared, cache_dir):
    run = fit(tiny_config(cache_dir, graph_only=True, epochs=2), prepared)
    with torch.no_grad():  # the current weights are now far from the best ones
        for param in run.model.parameters():
            param.add_(torch.randn_like(param))
    best = run.best()
    test = best.predict("test")
    assert test["crystals"] == len(prepared.split("test"))
    assert np.abs(test["prediction"] - test["target"]).mean() == pytest.approx(test["mae"], rel=1e-5)
    assert test["target"] == pytest.approx(prepared.targets[test["index"]].numpy())
    assert best.predict("val")["mae"] == pytest.approx(run.best_val_mae, rel=1e-5)  # best weights, not current
    assert run.predict("val")["mae"] != pytest.approx(run.best_val_mae, rel=1e-3)


def test_target_statistics_come_from_the_training_split_only(prepared, cache_dir):
    run = start_run(tiny_config(cache_dir), prepared)
    targets = prepared.targets
    assert run.standardizer == Standardizer.fit(targets[prepared.split("train")])
    assert run.standardizer != Standardizer.fit(targets)


ORIGINAL_FLAGS = ["--use_middle_fusion", "True", "--middle_fusion_layers", "0,1", "--middle_fusion_use_gate_norm",
                  "True", "--middle_fusion_use_learnable_scale", "True", "--middle_fusion_initial_scale", "12.0",
                  "--use_cross_modal", "True", "--cross_modal_num_heads", "2", "--batch_size", "16", "--epochs", "2",
                  "--learning_rate", "0.001"]


def test_standalone_cli_with_the_original_flags(prepared, cache_dir, tmp_path):
    out = tmp_path / "out"
    metrics = train_main(["--property", "formation_energy", "--dataset", str(SAMPLE_DATASET), "--output_dir", str(out),
                          *tiny_flags(cache_dir), *ORIGINAL_FLAGS])
    folder = out / "formation_energy_peratom"
    for name in ("config.json", "best_val_model.pt", "last_checkpoint.pt", "history_train.json", "history_val.json",
                 "test_predictions.csv", "metrics.json"):
        assert (folder / name).is_file(), name
    best = torch.load(folder / "best_val_model.pt", weights_only=True)
    assert "middle_fusion_modules.layer_1.text_scale" in best["model"]
    assert best["config"]["middle_fusion_initial_scale"] == 12.0 and best["config"]["middle_fusion_use_gate_norm"]
    rows = list(csv.DictReader(open(folder / "test_predictions.csv")))
    assert len(rows) == metrics["test_crystals"] == len(prepared.split("test"))
    mae = np.mean([abs(float(r["prediction"]) - float(r["target"])) for r in rows])
    assert mae == pytest.approx(metrics["test_mae"], rel=1e-5)
    assert min(float(r["target"]) for r in rows) < 0  # formation energies stay negative: nothing is clamped


def test_standalone_resume_after_a_crash(cache_dir, tmp_path, monkeypatch):
    from tune_fusion.train import __main__ as standalone

    args = ["--output_dir", str(tmp_path), *tiny_flags(cache_dir), *ORIGINAL_FLAGS[:-4], "--epochs", "3"]
    real_save = standalone.save_checkpoint

    def save_then_die(obj, path):
        real_save(obj, path)
        if path.name == "last_checkpoint.pt" and obj["epoch"] == 2:
            raise KeyboardInterrupt  # killed after the second epoch's checkpoint

    monkeypatch.setattr(standalone, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_main(args)
    monkeypatch.setattr(standalone, "save_checkpoint", real_save)
    resumed = train_main([*args, "--resume"])
    assert resumed["epochs_run"] == 3
    history = json.loads((tmp_path / "formation_energy_peratom" / "history_val.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    with pytest.raises(ConfigError, match="other settings for epochs"):
        train_main([*args[:-2], "--epochs", "5", "--resume"])


def test_config_file_and_flag_precedence(prepared, cache_dir, tmp_path):
    config = tmp_path / "config_improved_fusion.json"
    config.write_text(json.dumps({"use_middle_fusion": True, "middle_fusion_layers": "1", "epochs": 5,
                                  "graph_dropout": 0.0}))
    metrics = train_main(["--config", str(config), "--epochs", "1", "--output_dir", str(tmp_path / "o"),
                          *tiny_flags(cache_dir)])
    stored = json.loads((tmp_path / "o" / "formation_energy_peratom" / "config.json").read_text())
    assert metrics["epochs_run"] == 1 and stored["epochs"] == 1 and stored["use_middle_fusion"] is True


def test_published_layout_via_dataset_jarvis_root_dir(tmp_path, cache_dir, sample_records):
    from tests.helpers import make_description_csv

    make_description_csv(tmp_path / "ds" / "jarvis" / "formation_energy_peratom", sample_records, n=12)
    metrics = train_main(["--dataset", "jarvis", "--root_dir", str(tmp_path / "ds"), "--property", "formation_energy",
                          "--output_dir", str(tmp_path / "o"), "--n_val", "2", "--n_test", "2", "--epochs", "1",
                          *tiny_flags(cache_dir)])
    assert metrics["test_crystals"] == 2


def test_epoch_lines_say_their_time_and_throughput(prepared, cache_dir, tmp_path, caplog):
    caplog.set_level("INFO", logger="tune_fusion")
    train_main(["--dataset", str(SAMPLE_DATASET), "--output_dir", str(tmp_path), *tiny_flags(cache_dir), "--epochs",
                "1"])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 1
    assert re.fullmatch(r"epoch 1: train_mae \d+\.\d{4} val_mae \d+\.\d{4} eV/atom, \d+\.\d s \(\d+ crystals/s "
                        r"training\)", lines[0]), lines


def test_cli_errors_are_one_line(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "tune_fusion.train", "--middle_fusion_layers", "7",
                          "--use_middle_fusion", "True", "--output_dir", str(tmp_path)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert bad.returncode == 2 and "valid indices 0..3" in bad.stderr and bad.stderr.strip().count("\n") == 0
    typo = subprocess.run([sys.executable, "-m", "tune_fusion.train", "--batch_sise", "3"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert typo.returncode == 2 and "batch_sise" in typo.stderr


def test_a_crash_while_saving_leaves_the_previous_checkpoint_usable(tmp_path, monkeypatch):
    from tune_fusion import train

    path = tmp_path / "last_checkpoint.pt"
    save_checkpoint({"epoch": 1, "model": {"w": torch.ones(3)}}, path)
    real_save = torch.save

    def crash_midway(obj, target):
        Path(target).write_bytes(b"PK\x03\x04 half a file")  # the process dies while writing
        raise OSError("disk full")

    monkeypatch.setattr(train.torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2, "model": {"w": torch.zeros(3)}}, path)
    monkeypatch.setattr(train.torch, "save", real_save)
    kept = torch.load(path, weights_only=True)
    assert kept["epoch"] == 1 and torch.equal(kept["model"]["w"], torch.ones(3))


def test_the_contrastive_term_trains_its_heads_only_when_weighted(prepared, cache_dir):
    """fit() adds the weighted contrastive loss: its projection heads move only when the weight is above zero."""
    moved = {}
    for weight in (0.0, 0.5):
        cfg = tiny_config(cache_dir, epochs=1, use_contrastive=True, contrastive_weight=weight, weight_decay=0.0)
        start = start_run(cfg, prepared).model.state_dict()
        after = fit(cfg, prepared).model.state_dict()
        moved[weight] = any(not torch.equal(start[k], after[k]) for k in after if "contrastive_head" in k)
    assert moved == {0.0: False, 0.5: True}
