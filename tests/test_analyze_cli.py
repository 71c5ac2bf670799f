"""What ``analyze_trials.py`` prints for one checkpoint, two compared and a text scaling: a short summary with
units (validation MAE, text_scale, node/text ratio, cosines, alpha, the guide's checks) and where the files went,
on a real tiny standalone run (2 epochs, two fused layers)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import analyze_trials
from tests.helpers import tiny_flags
from tune_fusion.config import SAMPLE_DATASET
from tune_fusion.train.__main__ import main as train_main

FUSED = ["--use_middle_fusion", "True", "--middle_fusion_layers", "0,1", "--middle_fusion_use_gate_norm", "True",
         "--middle_fusion_use_learnable_scale", "True", "--middle_fusion_initial_scale", "12.0", "--batch_size", "16",
         "--epochs", "2"]


@pytest.fixture(scope="module")
def run_folder(prepared, cache_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train_main(["--dataset", str(SAMPLE_DATASET), "--output_dir", str(out), *tiny_flags(cache_dir), *FUSED])
    return out / "formation_energy_peratom"


def printed(argv: list[str], capsys) -> list[str]:
    analyze_trials.main(argv)
    return capsys.readouterr().out.strip().splitlines()


def assert_diagnosis(lines: list[str]) -> None:
    text = "\n".join(lines)
    assert re.search(r"validation MAE 0\.\d{4} eV/atom on \d+ validation crystals", text), text
    for layer in ("layer_0", "layer_1"):
        assert re.search(rf"{layer}: text_scale \d+(\.\d+)?, node/text norm ratio [\d.]+, cos\(h, text\) -?[\d.]+ "
                         r"before / -?[\d.]+ after fusion, alpha [\d.]+ ± [\d.]+ \(mean ± std over atoms", text), text


@pytest.mark.slow
def test_checkpoint_prints_its_diagnosis_and_where_the_files_went(run_folder, tmp_path, capsys):
    lines = printed(["--checkpoint", str(run_folder / "best_val_model.pt"), "--output", str(tmp_path), "--crystals",
                     "6", "--permutations", "2"], capsys)
    assert len(lines) < 15, lines
    assert_diagnosis(lines)
    assert any("checks of the original guide" in line or " check: " in line for line in lines)
    assert any(line.startswith("checkpoint: ") and "eV/atom" in line for line in lines)  # the ablation verdict
    assert lines[-2] == f"files (tables, figures, diagnostics): {tmp_path}" and lines[-1].endswith("report.md")


@pytest.mark.slow
def test_compare_and_scale_text_print_their_numbers_and_the_scaled_checkpoint(run_folder, tmp_path, capsys):
    best = str(run_folder / "best_val_model.pt")
    lines = printed(["--scale-text", "12", "--checkpoint", best, "--output", str(tmp_path / "s"), "--crystals", "6"],
                    capsys)
    assert len(lines) < 15, lines
    assert re.match(r"text_transform x12: validation MAE 0\.\d{4} eV/atom before, 0\.\d{4} eV/atom after, on 6 "
                    r"crystals", lines[0]), lines
    assert any(line.startswith("  before layer_0: text_scale") for line in lines)
    assert any(line.startswith("  x12 layer_1: text_scale") for line in lines)
    scaled = tmp_path / "s" / "scaled_x12.pt"
    assert f"scaled checkpoint: {scaled}" in lines and scaled.is_file()
    lines = printed(["--compare", best, str(scaled), "--output", str(tmp_path / "c"), "--crystals", "6"], capsys)
    assert len(lines) < 15, lines
    assert re.match(r"compared on the same 6 validation crystals: MAE of B minus A -?\d\.\d{4} eV/atom", lines[0])
    assert_diagnosis([line for line in lines if line.startswith(("A ", "  "))][:3])
    assert any(line.startswith(f"B {scaled}: validation MAE") for line in lines)


@pytest.mark.slow
def test_more_crystals_than_the_split_holds_says_so(run_folder, tmp_path, capsys, caplog):
    lines = printed(["--checkpoint", str(run_folder / "best_val_model.pt"), "--output", str(tmp_path), "--crystals",
                     "500", "--permutations", "2"], capsys)
    assert re.search(r"500 crystals asked for \(--crystals\), but the val split holds (\d+): all \1 are used",
                     caplog.text), caplog.text
    assert any("validation crystals" in line for line in lines)


def _no_generation(*args, **kwargs):
    raise AssertionError("a description was generated for a structure whose description is known")


@pytest.mark.slow
def test_predict_reads_known_descriptions_instead_of_generating_them(run_folder, sample_records, tmp_path,
                                                                     monkeypatch):
    from jarvis.core.atoms import Atoms

    from tune_fusion.data import text
    from tune_fusion.data.sources import sidecar_path
    from tune_fusion.data.text import DescriptionStore, read_descriptions, structure_hash
    from tune_fusion.export import load_model

    model = load_model(run_folder / "best_val_model.pt")
    assert re.fullmatch(r"FusionPredictor\(target='formation_energy_peratom', unit='eV/atom', model: middle fusion at "
                        r"layers 0,1 \(0-based\), cross-modal attention, [\d,]+ parameters, device=cpu\)", repr(model)), repr(model)
    records = sample_records[:5]  # dft_3d records: no description of their own
    for name in ("describe_chunk", "robocrys_text", "jarvis_text"):
        monkeypatch.setattr(text, name, _no_generation)
    monkeypatch.setattr("tune_fusion.export.process_map", _no_generation, raising=False)
    model.cfg = model.cfg.replace({"cache_dir": str(tmp_path)})  # an empty cache: the sample data's file answers
    shipped = model.predict(records)
    moved = Atoms.from_dict(records[0]["atoms"])
    coords = moved.frac_coords.copy()
    coords[0, 0] += 0.01  # a structure the sample data does not describe, but the prepared cache's store does
    moved = Atoms(lattice_mat=moved.lattice_mat, coords=coords, elements=moved.elements, cartesian=False)
    store = DescriptionStore(tmp_path / "descriptions.csv.gz")
    store.add(structure_hash(moved), "moved-1", "robocrys", "A described structure.")
    store.save()
    assert model.predict([moved]).shape == (1,)
    shipped_texts = read_descriptions(sidecar_path(SAMPLE_DATASET))
    with_text = model.predict([{**r, "description": shipped_texts[structure_hash(Atoms.from_dict(r["atoms"]))][2]}
                               for r in records])
    assert np.allclose(shipped, with_text)  # the shipped descriptions are the ones used
    monkeypatch.setattr(text, "describe_chunk", lambda chunk: [("An unknown structure.", "robocrys")] * len(chunk))
    monkeypatch.setattr("tune_fusion.export.process_map", lambda fn, items, desc: [fn(i) for i in items])
    coords[0, 0] += 0.01
    model.predict([Atoms(lattice_mat=moved.lattice_mat, coords=coords, elements=moved.elements, cartesian=False)])
    assert len(DescriptionStore(tmp_path / "descriptions.csv.gz").entries) == 2  # generated once, kept for next time
