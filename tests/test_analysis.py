"""Analysis of a real tiny search (6 trials, 3 epochs, Optuna + ASHA, middle fusion searched): the trial table and
statuses, the best trial tested once, importance, plots, fusion diagnostics against a hand computation, text
rescaling and comparison, the export reloaded in a fresh process, and one-line errors for bad inputs."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from jarvis.core.specie import atomic_numbers_to_symbols

from tests.helpers import REPO, trial_rows
from tune_fusion import analysis
from tune_fusion.checkpoint import load_checkpoint
from tune_fusion.data import make_loader
from tune_fusion.diagnostics import compare, diagnose, first_of_split, scale_text
from tune_fusion.errors import DataError
from tune_fusion.experiment import (
    TrialInfo,
    best_trial,
    locate_experiment,
    read_confirmation,
    read_trials,
    table_rows,
    to_confirm,
    usable_trials,
)
from tune_fusion.export import open_model
from tune_fusion.names import METRIC, Status

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def experiment(tiny_search) -> Path:
    return Path(tiny_search.experiment_dir)


@pytest.fixture(scope="module")
def analysed(experiment, tmp_path_factory):
    """One full analysis, counting test-split evaluations."""
    out = tmp_path_factory.mktemp("analysis")
    calls = []
    real = analysis.test_once

    def counting(trained, folder):
        calls.append("test")
        return real(trained, folder)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(analysis, "test_once", counting)
        found = analysis.analyze(analysis.Request(experiment, out / "report", diagnose=2, export=out / "export",
                                                   device="cpu"))
    return found.search, Path(found.output), out / "export", calls


@pytest.fixture(scope="module")
def fused_checkpoint(experiment) -> Path:
    trials = read_trials(experiment)
    fused = [t for t in trials if t.params.get("use_middle_fusion") and t.checkpoint is not None]
    assert fused, "the seeded search should sample middle fusion at least once"
    return fused[0].checkpoint


@pytest.mark.slow
def test_table_lists_every_trial_with_the_right_status(analysed, experiment):
    summary, out, _, _ = analysed
    rows = trial_rows(experiment)
    with open(out / "trials.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(rows) == 6
    for row in table:
        reported = rows[f"trial_{row['trial']}"]
        expected = "completed" if reported[-1]["trial_finished"] else "stopped_by_scheduler"
        assert row["status"] == expected
        assert int(row["epochs"]) == reported[-1]["epoch"]
        assert float(row["best_val_mae"]) == pytest.approx(min(r["val_mae"] for r in reported))
        assert float(row["last_val_mae"]) == pytest.approx(reported[-1]["val_mae"])
        assert "learning_rate" in row and "use_middle_fusion" in row
    assert [float(r["best_val_mae"]) for r in table] == sorted(float(r["best_val_mae"]) for r in table)
    assert {"completed", "stopped_by_scheduler"} == {r["status"] for r in table}
    assert "stopped_by_scheduler" in summary.table_text


@pytest.mark.slow
def test_best_trial_is_the_lowest_validation_mae(analysed, experiment):
    summary, out, _, _ = analysed
    rows = trial_rows(experiment)
    lowest = min(rows, key=lambda name: min(r["val_mae"] for r in rows[name]))
    best = json.loads((out / "best_trial.json").read_text())
    assert f"trial_{best['trial']}" == lowest == f"trial_{summary.best.trial}"
    assert best["val_mae"] == pytest.approx(min(r["val_mae"] for r in rows[lowest]))


@pytest.mark.slow
def test_test_mae_is_computed_once_and_matches_the_predictions(analysed, prepared):
    summary, out, _, calls = analysed
    assert calls.count("test") == 1 and set(calls) == {"test"}
    with open(out / "test_predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["jid", "target", "prediction"]
    assert [r["jid"] for r in rows] == prepared.split_ids()["test"]
    errors = np.array([float(r["prediction"]) - float(r["target"]) for r in rows])
    best = summary.best
    assert best.test_crystals == len(rows)
    assert best.test_mae == pytest.approx(np.abs(errors).mean(), rel=1e-6)
    assert best.test_rmse == pytest.approx(math.sqrt((errors**2).mean()), rel=1e-6)
    assert "evaluated once" in (out / "report.md").read_text()


@pytest.mark.slow
def test_plots_exist_and_are_valid_pngs(analysed):
    from matplotlib.image import imread

    summary, out, _, _ = analysed
    names = ["learning_curves.png", "params_vs_val_mae.png", "text_scale.png", "parity_test.png",
             "diagnostics/fusion_summary.png"]
    names += ["importance.png"] if summary.importance.values else []
    names += [f"diagnostics/{f}" for d in summary.diagnostics.trials.values() for f in d["figures"]]
    for name in names:
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE, name
        assert imread(out / name).shape[0] > 100
    report = (out / "report.md").read_text()
    for name in names:
        assert f"]({name})" in report, name


@pytest.mark.slow
def test_importance_is_a_table_or_a_note(analysed):
    summary, out, _, _ = analysed
    values, note = summary.importance.values, summary.importance.note
    if values:
        assert sum(values.values()) == pytest.approx(1.0) and set(values) <= {"learning_rate", "use_middle_fusion",
                                                                              "middle_fusion_layers", "use_cross_modal",
                                                                              "cross_modal_num_heads"}
        assert (out / "importance.csv").is_file()
    else:
        assert "completed trials" in note
    assert note in (out / "report.md").read_text()


@pytest.mark.slow
def test_diagnostics_agree_with_a_hand_computation(fused_checkpoint):
    ckpt = load_checkpoint(fused_checkpoint)
    run = open_model(ckpt, fused_checkpoint, device="cpu")
    chosen = first_of_split(run.data, "val", 8)
    found = diagnose(run, chosen)
    batch = next(iter(make_loader(run.data, "val", 8, run.standardizer, text_vector=run.cfg.data.text_vector)))
    assert batch.index.tolist() == chosen.tolist()
    run.model.eval()
    run.model.set_record_diagnostics(True)
    with torch.no_grad():
        prediction = run.model(batch).prediction
    z = batch.atomic_numbers.numpy()
    assert found.summary["crystals"] == len(chosen) and found.summary["atoms"] == len(z)
    assert found.summary["val_mae"] == pytest.approx(
        float(((prediction - batch.target).abs() * run.standardizer.std).mean()), rel=1e-5)
    for name, module in run.model.middle_fusion_modules.items():
        d = module.last_diagnostics
        h, u, g, out = d["h_in"], d["u"], d["gate"], d["h_out"]
        h_len, u_len, out_len = h.pow(2).sum(1).sqrt(), u.pow(2).sum(1).sqrt(), out.pow(2).sum(1).sqrt()
        layer = found.summary["layers"][name]
        assert h.shape[1] == run.cfg.model.hidden_features and len(h) == len(z)
        assert layer["norm_ratio"] == pytest.approx(float(h_len.mean() / u_len.mean()), rel=1e-5)
        assert layer["cos_before"] == pytest.approx(float(((h * u).sum(1) / (h_len * u_len)).mean()), abs=1e-5)
        assert layer["cos_after"] == pytest.approx(float(((out * u).sum(1) / (out_len * u_len)).mean()), abs=1e-5)
        assert layer["relative_change"] == pytest.approx(float(((out - h).pow(2).sum(1).sqrt() / h_len).mean()),
                                                         rel=1e-5)
        alpha = g.mean(1).numpy()
        assert layer["alpha"]["mean"] == pytest.approx(alpha.mean(), rel=1e-5)
        assert layer["alpha"]["std"] == pytest.approx(alpha.std(), rel=1e-4)
        assert layer["alpha"]["range"] == pytest.approx(alpha.max() - alpha.min(), rel=1e-5)
        assert layer["text_scale"] == pytest.approx(float(module.text_scale))
        for number in set(z.tolist()):
            element = layer["alpha_per_element"][atomic_numbers_to_symbols([number])[0]]
            assert element["mean"] == pytest.approx(alpha[z == number].mean(), rel=1e-5)
            assert element["atoms"] == (z == number).sum()
        np.testing.assert_allclose(found.arrays[f"alpha_{name}"], alpha, rtol=1e-6)
        crystal_alpha = [alpha[np.repeat(np.arange(len(chosen)), batch.atoms_per_crystal.numpy()) == i].mean()
                         for i in range(len(chosen))]
        np.testing.assert_allclose(found.arrays[f"crystal_alpha_{name}"], crystal_alpha, rtol=1e-5)


@pytest.mark.slow
def test_full_validation_diagnosis_reproduces_the_checkpoint_val_mae(analysed):
    summary, out, _, _ = analysed
    for trial_id, found in summary.diagnostics.trials.items():
        rows = [json.loads(line) for line in Path(found["checkpoint"]).parent.parent.joinpath("result.json")
                .read_text().splitlines()]
        assert found["val_mae"] == pytest.approx(min(r["val_mae"] for r in rows), rel=1e-5), trial_id
        arrays = np.load(out / "diagnostics" / found["arrays"])
        assert len(arrays["jid"]) == found["crystals"]


@pytest.mark.slow
def test_scale_text_multiplies_the_text_and_compare_sees_it(fused_checkpoint, tmp_path):
    result = scale_text(fused_checkpoint, 12.0, tmp_path, crystals=6, device="cpu")
    scaled = load_checkpoint(result.scaled_checkpoint)
    original = load_checkpoint(fused_checkpoint)["best_model"]
    keys = [k for k in scaled["model"] if ".text_transform.2." in k]
    assert keys and all(torch.allclose(scaled["model"][k], 12.0 * original[k]) for k in keys)
    for name, before in result.before["layers"].items():
        after = result.after["layers"][name]
        assert after["norm_ratio"] == pytest.approx(before["norm_ratio"] / 12.0, rel=1e-4)
        assert after["cos_before"] == pytest.approx(before["cos_before"], abs=1e-4)  # scaling keeps directions
    assert result.val_mae_after == result.after["val_mae"] != result.val_mae_before
    side_by_side = compare(fused_checkpoint, result.scaled_checkpoint, tmp_path / "cmp", crystals=6, device="cpu")
    assert side_by_side.crystals == 6
    assert side_by_side.a["val_mae"] == pytest.approx(result.val_mae_before)
    assert side_by_side.b["val_mae"] == pytest.approx(result.val_mae_after)
    assert (tmp_path / "cmp" / "compare_fusion.png").read_bytes()[:8] == PNG_SIGNATURE


PREDICT = """
import csv, gzip, json, sys
import numpy as np
from tune_fusion.config import SAMPLE_DATASET
from tune_fusion.export import load_model
model_path, predictions_csv, cache = sys.argv[1:4]
from tune_fusion.data import load
texts = load(cache).descriptions()
rows = list(csv.DictReader(open(predictions_csv)))
records = {r["jid"]: r for r in json.load(gzip.open(SAMPLE_DATASET, "rt"))}
items = [{**records[r["jid"]], "description": texts[r["jid"]]} for r in rows]
print(json.dumps(load_model(model_path).predict(items, batch_size=4).tolist()))
"""


@pytest.mark.slow
def test_export_reloads_in_a_fresh_process_and_reproduces_its_predictions(analysed, prepared):
    summary, out, export_dir, _ = analysed
    exported = torch.load(export_dir / "best_model.pt", weights_only=True)
    assert set(exported["model"]) == set(load_checkpoint(summary.best.checkpoint)["best_model"])
    assert exported["metrics"]["test_mae"] == summary.best.test_mae
    assert exported["dataset_fingerprint"] == prepared.fingerprint and exported["split_ids"] == prepared.split_ids()
    assert json.loads((export_dir / "config.json").read_text()) == exported["config"]
    done = subprocess.run([sys.executable, "-c", PREDICT, str(export_dir / "best_model.pt"),
                           str(out / "test_predictions.csv"), str(prepared.path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    predicted = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    with open(out / "test_predictions.csv") as handle:
        expected = np.array([float(r["prediction"]) for r in csv.DictReader(handle)])
    np.testing.assert_allclose(predicted, expected, atol=1e-5)


@pytest.mark.slow
def test_a_copy_reached_by_uri_gives_the_same_table(experiment, tmp_path):
    local = locate_experiment(f"file://{experiment}", copy_to=tmp_path / "copy")
    assert table_rows(read_trials(local)) == table_rows(read_trials(experiment))


def write_trial(folder: Path, rows: list[dict], error: str = "") -> None:
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps({"learning_rate": 1e-3}))
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if error:
        (folder / "error.txt").write_text(f"Failure # 1\nTraceback (most recent call last):\n  File x\n{error}\n")


def test_every_status_is_told_apart(tmp_path):
    def row(epoch, finished=0, done=False, reason="", val=0.5):
        return {"epoch": epoch, "training_iteration": epoch, "val_mae": val, "trial_finished": finished, "done": done,
                "stop_reason": reason, "trial_id": f"t{epoch}{finished}{done}{reason[:3]}"}

    write_trial(tmp_path / "trial_a", [row(1), row(2, 1, True)])
    write_trial(tmp_path / "trial_b", [row(1, 0, True)])
    write_trial(tmp_path / "trial_c", [row(1, 1, True, "nan_loss: the loss became nan", math.inf)])
    write_trial(tmp_path / "trial_d", [row(1, 1, True, "text_scale_exploded: {'layer_2': 60.0}")])
    write_trial(tmp_path / "trial_e", [row(1, 1, True, "early_stopping: no better val_mae for 5 epochs")])
    write_trial(tmp_path / "trial_f", [row(1)], error="RuntimeError: CUDA out of memory")
    write_trial(tmp_path / "trial_g", [row(3)])
    live = {t.path.name: (t.status, t.reason) for t in read_trials(tmp_path)}
    assert live["trial_a"] == ("completed", "")
    assert live["trial_b"][0] == "stopped_by_scheduler"
    assert live["trial_c"][0] == live["trial_d"][0] == "diverged" and live["trial_c"][1].startswith("nan_loss")
    assert live["trial_e"] == ("completed", "early_stopping: no better val_mae for 5 epochs")
    assert live["trial_f"] == ("errored", "RuntimeError: CUDA out of memory")
    assert live["trial_g"][0] == "running"
    old = time.time() - 7200
    for path in tmp_path.glob("*/result.json"):
        os.utime(path, (old, old))
    stale = {t.path.name: t.status for t in read_trials(tmp_path)}
    assert stale["trial_g"] == "interrupted" and stale["trial_b"] == "stopped_by_scheduler"


def test_an_epoch_reported_again_by_a_resumed_trial_counts_once(tmp_path):
    def row(epoch, val, resumed_from=0):  # a resumed trial retrains (or tells again) the epochs Ray's snapshot lacked
        return {"epoch": epoch, "training_iteration": epoch, "val_mae": val, METRIC: val, "trial_finished": int(
            epoch == 3), "done": epoch == 3, "stop_reason": "", "resumed_from_epoch": resumed_from, "trial_id": "t"}

    write_trial(tmp_path / "trial_t", [row(1, 0.6), row(2, 0.5), row(2, 0.45, 1), row(3, 0.4, 1), row(3, 0.4, 3)])
    (trial,) = read_trials(tmp_path)
    assert [(r["epoch"], r["val_mae"]) for r in trial.history] == [(1, 0.6), (2, 0.45), (3, 0.4)]  # the last holds
    assert (trial.status, trial.epochs, trial.history[-1]["resumed_from_epoch"]) == ("completed", 3, 3)


def test_confirmation_retrains_the_best_and_the_best_graph_only_beside_fused_ones():
    def trial(name, mae, graph_only=None):
        params = {} if graph_only is None else {"graph_only": graph_only}
        return TrialInfo(name, Path(name), params, [{"epoch": 1, METRIC: mae}], Status.COMPLETED, "",
                                  Path(name) / "checkpoint.pt")

    fused, fused_2, graph = trial("f1", 0.1, False), trial("f2", 0.2, False), trial("g1", 0.3, True)
    usable = usable_trials([graph, fused_2, fused, trial("no_value", math.nan)])
    assert usable == [fused, fused_2, graph]
    assert to_confirm(usable, 1, default_graph_only=False) == [fused, graph]  # the baseline beside it
    assert to_confirm(usable, 3, default_graph_only=False) == [fused, fused_2, graph]
    best_graph = trial("g0", 0.05, True)
    assert to_confirm([best_graph, fused], 1, default_graph_only=False) == [best_graph]  # nothing to add
    same_kind = [trial("a", 0.1), trial("b", 0.2)]  # graph_only fixed by the search: one kind only
    assert to_confirm(same_kind, 1, default_graph_only=True) == same_kind[:1]


@pytest.mark.slow
def test_confirm_retrains_the_best_trial_with_several_seeds(experiment, tmp_path):
    from tune_fusion.confirm import confirm

    copy = tmp_path / experiment.name  # beside a copy: the shared experiment keeps no -confirm sibling
    shutil.copytree(experiment, copy)
    best = best_trial(read_trials(copy), copy)
    folder = confirm(copy, top_k=1, seeds=2, verbose=False)
    retrained = read_trials(Path(folder), stale_after_s=0)
    config = load_checkpoint(best.checkpoint)["config"]
    assert sorted(t.params["job"]["config"]["random_seed"] for t in retrained) == [0, 1]
    assert all(t.params["job"] == {"config": {**config, "random_seed": t.params["job"]["config"]["random_seed"]},
                                   "confirms": best.trial_id} for t in retrained)
    summary = read_confirmation(copy)
    (row,) = summary.rows
    maes = [t.best_val_mae for t in retrained]
    assert (summary.best, row["seeds"]) == (best.trial_id, 2) and summary.fused_vs_graph is None
    assert row["mean_val_mae"] == pytest.approx(np.mean(maes)) and row["std_val_mae"] == pytest.approx(
        np.std(maes, ddof=1))


def cli(argv: list[str], capsys) -> str:
    spec = importlib.util.spec_from_file_location("analyze_trials", REPO / "analyze_trials.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from tune_fusion.cli import run

    with pytest.raises(SystemExit) as exit_info:
        run(module.main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


@pytest.mark.slow
def test_bad_inputs_give_one_line_errors(experiment, tmp_path, capsys):
    assert "does not exist" in cli([str(tmp_path / "missing")], capsys)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("not an experiment")
    assert "is not a tune-fusion experiment" in cli([str(tmp_path / "foreign")], capsys)
    write_trial(tmp_path / "unfinished" / "trial_x", [], error="ValueError: bad")
    assert "no trial with a validation MAE" in cli([str(tmp_path / "unfinished"), "--output", str(tmp_path / "o1")],
                                                   capsys)
    broken = tmp_path / "broken"
    shutil.copytree(experiment, broken)
    best = best_trial(read_trials(broken), broken).checkpoint
    best.write_bytes(best.read_bytes()[:1000])  # a checkpoint cut mid-write
    message = cli([str(broken), "--output", str(tmp_path / "o2")], capsys)
    assert str(best) in message and "cannot be read" in message
    torch.save({"config": {}, "model": {}}, best)
    assert "lacks" in cli([str(broken), "--output", str(tmp_path / "o3")], capsys)
    with pytest.raises(DataError, match="weights do not fit"):
        ckpt = load_checkpoint(best_trial(read_trials(experiment), experiment).checkpoint)
        ckpt["best_model"] = {k: v for k, v in list(ckpt["best_model"].items())[:-1]}
        open_model(ckpt, "edited.pt", device="cpu")


def test_a_checkpoint_opens_the_view_it_was_trained_on_when_an_earlier_version_prepared_it(prepared, cache_dir):
    """A view prepared under an earlier version's rules (its key differs from what the settings give now) still
    serves the checkpoints trained on it, as long as it is in the cache; without it, one line says what to do."""
    from tests.helpers import tiny_config
    from tune_fusion.checkpoint import run_state
    from tune_fusion.train import start_run

    ckpt = run_state(start_run(tiny_config(cache_dir), prepared))
    earlier = prepared.path.with_name(f"{prepared.path.name.rsplit('-', 1)[0]}-0123456789abcdef")
    shutil.copytree(prepared.path, earlier)
    meta = json.loads((earlier / "meta.json").read_text())
    (earlier / "meta.json").write_text(json.dumps({**meta, "key": "0123456789abcdef"}))
    ckpt["dataset_fingerprint"] = "0123456789abcdef"
    try:
        assert open_model(ckpt, "old.pt").data.path == earlier
    finally:
        shutil.rmtree(earlier)
    with pytest.raises(DataError, match="old.pt was trained on prepared data 0123456789abcdef.*or retrain it"):
        open_model(ckpt, "old.pt")
