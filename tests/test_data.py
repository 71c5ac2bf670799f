"""The data pipeline on real JARVIS data: every input format, accounting, split, cache, batching, errors."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from jarvis.core.atoms import Atoms

from tests.helpers import ALIGNN_FOLDER, REPO, make_description_csv, tiny_config
from tune_fusion.config import DEFAULT_TEXT_ENCODER, SAMPLE_DATASET, DataConfig
from tune_fusion.data import cache as cache_mod
from tune_fusion.data import make_loader, prepare
from tune_fusion.data.batching import Standardizer
from tune_fusion.data.embed import embed_texts, split_sentences
from tune_fusion.data.records import build_records
from tune_fusion.data.sources import locate, read_entries, sidecar_path
from tune_fusion.data.split import split_indices
from tune_fusion.data.text import clean_text, jarvis_text, read_descriptions
from tune_fusion.errors import DataError


def records_of(dataset: str, target: str = "formation_energy_peratom", cache_dir: str = "/nonexistent", n: int = 0):
    source = locate(dataset, cache_dir)
    return source, *build_records(source, read_entries(source, target), n)


def write_json(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records))
    return path


# --- input formats -------------------------------------------------------------------------------------------

def test_dft3d_json_plain_gz_zip_and_by_name_agree(tmp_path, sample_records):
    subset = sample_records[:25]
    plain = write_json(tmp_path / "sub.json", subset)
    gz = tmp_path / "sub.json.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    from jarvis.db.figshare import get_db_info

    js_tag = get_db_info()["dft_3d"][1]
    store = tmp_path / "cache" / "jarvis_data"
    store.mkdir(parents=True)
    with zipfile.ZipFile(store / f"{js_tag}.zip", "w") as archive:
        archive.writestr(js_tag, plain.read_text())
    results = [records_of(str(p), cache_dir=str(tmp_path / "cache")) for p in (plain, gz, store / f"{js_tag}.zip")]
    results.append(records_of("dft_3d", cache_dir=str(tmp_path / "cache")))
    for source, records, report in results:
        assert source.format == "dft3d_json"
        assert [r.jid for r in records] == [r["jid"] for r in subset]
        assert [r.target for r in records] == [float(r["formation_energy_peratom"]) for r in subset]
        assert all(isinstance(r.atoms, Atoms) and r.atoms.num_atoms >= 1 for r in records)
        assert report.kept == 25


def test_jarvis_name_without_zip_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match=r"jarvis_data/.*\.zip.*place it there"):
        locate("dft_3d", tmp_path)


def test_alignn_folder(tmp_path):
    source, records, report = records_of(str(ALIGNN_FOLDER), target="optb88vdw_bandgap")
    assert source.format == "alignn_folder"
    rows = list(csv.reader(open(ALIGNN_FOLDER / "id_prop.csv")))
    assert len(records) == len(rows) == 33
    by_id = {r.jid: r.target for r in records}
    assert by_id[Path(rows[2][0]).stem] == pytest.approx(float(rows[2][1]))
    assert all(r.text is None for r in records)


def test_description_csv_texts_come_from_the_file(tmp_path, sample_records):
    path = make_description_csv(tmp_path / "fe", sample_records)
    for dataset in (path, path.parent):
        source, records, _ = records_of(str(dataset))
        assert source.format == "description_csv"
        assert [r.jid for r in records] == [r["jid"] for r in sample_records[:6]]
        assert records[0].text == f"Description of {sample_records[0]['jid']}. It has {records[0].atoms.num_atoms} atoms."
        original = Atoms.from_dict(sample_records[0]["atoms"])
        assert records[0].atoms.num_atoms == original.num_atoms
        assert records[0].atoms.volume == pytest.approx(original.volume, rel=1e-3)


# --- accounting ----------------------------------------------------------------------------------------------

def test_na_targets_dropped_and_corrupt_structures_skipped_by_id(tmp_path, sample_records):
    rows = [dict(r) for r in sample_records[:12]]
    rows[0]["formation_energy_peratom"] = "na"
    rows[1]["formation_energy_peratom"] = float("nan")
    rows[2]["atoms"] = {**rows[2]["atoms"], "lattice_mat": [[0, 0, 0], [0, 0, 0], [0, 0, 0]]}
    rows[3]["atoms"] = {"elements": ["Si"]}
    path = write_json(tmp_path / "bad.json", rows)
    shutil.copy(sidecar_path(SAMPLE_DATASET), sidecar_path(path))  # descriptions of these structures, as shipped
    _, records, report = records_of(str(path))
    assert report.dropped_target == [rows[0]["jid"], rows[1]["jid"]]
    assert set(report.skipped_structure) == {rows[2]["jid"], rows[3]["jid"]}
    assert report.kept == len(records) == 8
    data, _ = prepare(DataConfig(dataset=str(path), cache_dir=str(tmp_path / "c"), n_test=1, n_val=1))
    log = json.loads((data.path / "prepare_log.json").read_text())
    assert set(log["skipped_structure_ids"]) == {rows[2]["jid"], rows[3]["jid"]}
    assert data.meta["counts"]["dropped_target"] == 2 and len(data.ids) == 8


def test_a_repeated_id_keeps_its_first_entry_in_every_format(tmp_path, sample_records):
    rows = [dict(r) for r in sample_records[:8]]
    again = {**rows[5], "jid": rows[2]["jid"], "formation_energy_peratom": 9.0}  # a second entry of one id
    _, records, report = records_of(str(write_json(tmp_path / "rep.json", [*rows, again])))
    assert [r.jid for r in records] == [r["jid"] for r in rows] and report.repeated_id == [rows[2]["jid"]]
    assert next(r.target for r in records if r.jid == rows[2]["jid"]) == rows[2]["formation_energy_peratom"]

    folder = tmp_path / "alignn"  # an ALIGNN folder listing one structure file twice
    shutil.copytree(ALIGNN_FOLDER, folder)
    lines = (folder / "id_prop.csv").read_text().splitlines()
    (folder / "id_prop.csv").write_text("\n".join([*lines, lines[0].split(",")[0] + ",1.5"]) + "\n")
    _, records, report = records_of(str(folder), target="optb88vdw_bandgap")
    assert len(records) == len(lines) and report.repeated_id == [Path(lines[0].split(",")[0]).stem]

    path = make_description_csv(tmp_path / "fe", sample_records)  # a description.csv naming one id twice
    with open(path, newline="") as handle:
        table = list(csv.reader(handle))
    with open(path, "a", newline="") as handle:
        csv.writer(handle).writerow([table[1][0], *table[2][1:]])
    _, records, report = records_of(str(path))
    assert len(records) == 6 and report.repeated_id == [table[1][0]]


def test_one_structure_under_several_ids_is_counted_and_kept_in_one_split(tmp_path, sample_records):
    rows = [dict(r) for r in sample_records[:40]]
    copies = [{**rows[i], "jid": f"{rows[i]['jid']}-copy{k}"} for i in (0, 3, 7) for k in (1, 2)]
    path = write_json(tmp_path / "same.json", rows + copies + [{**rows[1], "jid": rows[1]["jid"]}])
    shutil.copy(sidecar_path(SAMPLE_DATASET), sidecar_path(path))
    data, _ = prepare(DataConfig(dataset=str(path), cache_dir=str(tmp_path / "c"), n_val=8, n_test=8))
    assert data.meta["counts"]["same_structure"] == 9 and data.meta["counts"]["repeated_id"] == 1
    log = json.loads((data.path / "prepare_log.json").read_text())
    assert sorted(map(sorted, log["same_structure_ids"])) == sorted(
        sorted([rows[i]["jid"], f"{rows[i]['jid']}-copy1", f"{rows[i]['jid']}-copy2"]) for i in (0, 3, 7))
    assert log["repeated_id_ids"] == [rows[1]["jid"]]
    split_of = {jid: name for name, ids in data.split_ids().items() for jid in ids}
    for group in log["same_structure_ids"]:
        assert len({split_of[jid] for jid in group}) == 1, group  # no copy of a training crystal in val or test


def test_the_split_of_distinct_structures_is_unchanged_by_grouping():
    plain = split_indices(50, (0.8, 0.1, 0.1), (0, 0, 0), seed=3)
    grouped = split_indices(50, (0.8, 0.1, 0.1), (0, 0, 0), seed=3, groups=[f"s{i}" for i in range(50)])
    assert all(np.array_equal(plain[k], grouped[k]) for k in plain)
    together = split_indices(50, (0.8, 0.1, 0.1), (0, 0, 0), seed=3, groups=[i // 5 for i in range(50)])
    assert sum(map(len, together.values())) == 50
    assert all(len({i // 5 for i in together[k]} & {i // 5 for i in together[o]}) == 0
               for k in together for o in together if k != o)


# --- split ---------------------------------------------------------------------------------------------------

def test_split_reproducible_disjoint_and_sized():
    a = split_indices(100, (0.8, 0.1, 0.1), (0, 0, 0), seed=123)
    b = split_indices(100, (0.8, 0.1, 0.1), (0, 0, 0), seed=123)
    c = split_indices(100, (0.8, 0.1, 0.1), (0, 0, 0), seed=7)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["train"], c["train"])
    assert [len(a[k]) for k in ("train", "val", "test")] == [80, 10, 10]
    assert len(set(a["train"]) | set(a["val"]) | set(a["test"])) == 100
    d = split_indices(100, (0.5, 0.2, 0.1), (30, 0, 0), seed=1)
    assert [len(d[k]) for k in ("train", "val", "test")] == [30, 20, 10]
    with pytest.raises(DataError, match="only 10 are usable"):
        split_indices(10, (0.8, 0.1, 0.1), (20, 0, 0), seed=1)


# --- cache ---------------------------------------------------------------------------------------------------

def test_prepared_cache_contents(prepared):
    n = len(prepared)
    assert n == 60 and len(prepared.ids) == n and prepared.targets.dtype == torch.float64
    assert prepared.atom_feature_dim == 92 and prepared.text_dim == 384
    assert sum(len(prepared.split(s)) for s in ("train", "val", "test")) == n
    graph_shards, text_shards = prepared.meta["graph_shards"], prepared.meta["text_shards"]
    assert all(p.startswith("graphs-") for p in graph_shards) and all(p.startswith("texts-") for p in text_shards)
    assert sum(len(prepared.graphs[s]) for s in range(len(graph_shards))) >= n
    text = prepared.texts[0]
    offsets = text.arrays["sentence_offsets"]
    assert offsets[0] == 0 and offsets[-1] == len(text.arrays["sentences"]) and (np.diff(offsets) >= 1).all()
    assert isinstance(prepared.arrays["targets"], np.memmap)  # mapped, not read into the process
    assert prepared.meta["counts"]["text"]["stored"] == n  # the shipped descriptions: nothing generated
    texts = prepared.descriptions()
    assert "np.int64" not in " ".join(texts.values()) and len(texts) == n


def test_batches_are_the_jarvis_graphs_bit_for_bit(prepared, sample_records):
    """What a batch holds is exactly what jarvis-tools builds for those crystals (float32, as the model reads it)."""
    from jarvis.core.graphs import Graph

    loader = make_loader(prepared, "val", batch_size=6, standardizer=Standardizer(0.0, 1.0))
    batch = next(iter(loader))
    by_id = {r["jid"]: r for r in sample_records}
    atom, bond, pair = 0, 0, 0
    for i in batch.index.tolist():
        g, lg = Graph.atom_dgl_multigraph(Atoms.from_dict(by_id[str(prepared.ids[i])]["atoms"]), cutoff=8.0,
                                          max_neighbors=12, atom_features="cgcnn", compute_line_graph=True)
        n, e, t = g.num_nodes(), g.num_edges(), lg.num_edges()
        assert torch.equal(batch.atom_features[atom : atom + n], g.ndata["atom_features"].float())
        assert torch.equal(batch.bond_vectors[bond : bond + e], g.edata["r"].float())
        assert torch.equal(batch.angle_cosines[pair : pair + t], lg.edata["h"].float())
        src, dst = g.edges()
        assert torch.equal(batch.edge_src[bond : bond + e], src + atom)
        assert torch.equal(batch.edge_dst[bond : bond + e], dst + atom)
        lsrc, ldst = lg.edges()
        assert torch.equal(batch.angle_src[pair : pair + t], lsrc + bond)
        assert torch.equal(batch.angle_dst[pair : pair + t], ldst + bond)
        atom, bond, pair = atom + n, bond + e, pair + t
    assert (atom, bond, pair) == (len(batch.atom_features), len(batch.edge_src), len(batch.angle_src))


def test_second_prepare_builds_nothing_and_settings_change_the_key(prepared, cache_dir):
    cfg = tiny_config(cache_dir).data
    again, built = prepare(cfg)
    assert not built and again.path == prepared.path
    other = cache_mod.cache_path(tiny_config(cache_dir, split_seed=5).data)
    assert other != prepared.path
    assert cache_mod.cache_path(tiny_config(cache_dir, cutoff=6.0).data) not in (other, prepared.path)


def test_a_second_target_reuses_every_graph_and_embedding(prepared, cache_dir):
    shards_before = sorted(p.name for p in cache_dir.glob("*/shard-*"))
    other, built = prepare(tiny_config(cache_dir, target="optb88vdw_bandgap").data)
    assert built and other.path != prepared.path
    assert other.meta["counts"]["text"]["embedded_now"] == 0
    assert other.meta["graph_shards"] == prepared.meta["graph_shards"]
    assert sorted(p.name for p in cache_dir.glob("*/shard-*")) == shards_before  # nothing new was stored


def test_a_description_seen_twice_is_embedded_once(tmp_path, sample_records):
    rows = [{**r, "description": "Si is diamond structured." if i < 3 else f"Crystal {i} is cubic."}
            for i, r in enumerate(sample_records[:8])]
    data, _ = prepare(DataConfig(dataset=str(write_json(tmp_path / "d.json", rows)), cache_dir=str(tmp_path / "c"),
                                 n_val=1, n_test=1))
    text = data.meta["counts"]["text"]
    assert text["distinct"] == text["embedded_now"] == 6 and len(data) == 8
    refs = data.arrays["text_ref"]
    assert (refs[0] == refs[1]).all() and (refs[1] == refs[2]).all() and not (refs[2] == refs[3]).all()


def test_an_old_cache_is_refused_in_one_line(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"version": 1, "key": "abc"}))
    with pytest.raises(DataError, match="cache version 1, expected 2.*prepare it again"):
        cache_mod.load(tmp_path)


def test_concurrent_openers_read_the_same_batches(prepared):
    script = ("import sys, json; import tune_fusion; from tune_fusion.data import load, make_loader, Standardizer; "
              f"d = load({str(prepared.path)!r}); b = next(iter(make_loader(d, 'train', 16, Standardizer(0.0, 1.0)))); "
              "print(json.dumps([b.index.tolist(), float(b.angle_cosines.sum()), float(b.text.sum())]))")
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
             for _ in range(3)]
    outputs = {p.communicate(timeout=300)[0].strip().splitlines()[-1] for p in procs}
    assert len(outputs) == 1 and all(p.returncode == 0 for p in procs)


def test_concurrent_prepare_builds_once(tmp_path):
    script = (
        "import sys, json; import tune_fusion; from tune_fusion.config import DataConfig; "
        "from tune_fusion.data import prepare; "
        f"d, built = prepare(DataConfig(cache_dir={str(tmp_path)!r}, max_structures=20)); "
        "print(json.dumps({'built': built, 'path': str(d.path)}))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, cwd=REPO) for _ in range(2)]
    results = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    assert sorted(r["built"] for r in results) == [False, True]
    assert results[0]["path"] == results[1]["path"]
    assert not list(tmp_path.glob(".building-*"))


def test_crash_mid_build_leaves_no_cache(tmp_path, monkeypatch):
    cfg = DataConfig(cache_dir=str(tmp_path), max_structures=10)

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash while embedding")

    monkeypatch.setattr(cache_mod, "embed_texts", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare(cfg)
    path = cache_mod.cache_path(cfg)
    assert not path.exists() and not list(tmp_path.rglob(".building-*"))
    with pytest.raises(DataError, match="not a prepared cache"):
        cache_mod.load(path)


def test_a_crash_while_writing_a_shard_leaves_nothing_that_opens(tmp_path, monkeypatch):
    from tune_fusion.data.arrays import FlatArrays

    cfg = DataConfig(cache_dir=str(tmp_path), max_structures=10)
    real_save = FlatArrays.save

    def save_half_then_die(self, folder):
        real_save(self, folder)
        (folder / "keys.json").unlink()  # as if the process died before its last write
        raise RuntimeError("simulated crash while writing a shard")

    monkeypatch.setattr(FlatArrays, "save", save_half_then_die)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare(cfg)
    assert not list(tmp_path.rglob("shard-*")) and not list(tmp_path.rglob(".building-*"))
    monkeypatch.setattr(FlatArrays, "save", real_save)
    data, built = prepare(cfg)  # the next preparation builds everything and opens
    assert built and len(data) == 10


# --- batching ------------------------------------------------------------------------------------------------

def test_batches_and_train_only_standardisation(prepared):
    train = prepared.targets[prepared.split("train")]
    scaler = Standardizer.fit(train)
    assert scaler.mean == pytest.approx(float(train.mean()))
    loader = make_loader(prepared, "val", batch_size=4, standardizer=scaler)
    batch = next(iter(loader))
    assert len(batch.atoms_per_crystal) == len(batch) == 4
    assert int(batch.atoms_per_crystal.sum()) == len(batch.atom_features) == len(batch.atomic_numbers)
    assert batch.text.shape == (4, 384) and batch.sentences.shape[:2] == batch.sentence_mask.shape
    assert batch.sentence_mask.any(dim=1).all()
    truth = prepared.targets[batch.index]
    assert torch.allclose(scaler.inverse(batch.target.double()), truth, atol=1e-5)
    assert set(batch.index.tolist()) <= set(prepared.split("val").tolist())


# --- text ----------------------------------------------------------------------------------------------------

def test_text_cleaning_and_sentences():
    raw = "A sheet oriented in the (np.int64(1), np.int64(0), np.float64(-1.5)) direction. Bonds are 2.49 Å. Fe(1) is"
    cleaned = clean_text(raw)
    assert cleaned.startswith("A sheet oriented in the (1, 0, -1.5) direction.")
    assert split_sentences(cleaned) == ["A sheet oriented in the (1, 0, -1.5) direction.", "Bonds are 2.49 Å.",
                                        "Fe(1) is"]
    assert split_sentences("") == ["No description."]


def test_shipped_descriptions_cover_the_sample_and_come_from_robocrys():
    shipped = read_descriptions(sidecar_path(SAMPLE_DATASET))
    assert len(shipped) >= 790  # one per distinct structure
    methods = [method for _, method, _ in shipped.values()]
    assert methods.count("robocrys") > 0.9 * len(methods)
    assert all("np.int64" not in text for _, _, text in shipped.values())


def test_jarvis_describer_fallback_is_text(sample_records):
    text = jarvis_text(Atoms.from_dict(sample_records[0]["atoms"]))
    assert isinstance(text, str) and "crystallizes" in text


@pytest.mark.slow
def test_generation_with_robocrys_on_real_structures(tmp_path, sample_records):
    """Structures without stored text get robocrys descriptions (in Ray tasks), saved for the next prepare."""
    path = write_json(tmp_path / "two.json", sample_records[:3])
    data, _ = prepare(DataConfig(dataset=str(path), cache_dir=str(tmp_path / "c"), n_val=1, n_test=1))
    assert data.meta["counts"]["text"]["robocrys"] + data.meta["counts"]["text"]["jarvis"] == 3
    assert len(read_descriptions(tmp_path / "c" / "descriptions.csv.gz")) == 3


def test_embeddings_are_real_and_aligned():
    out = embed_texts(["NaCl is rock salt structured. Na(1) is bonded to six Cl(1) atoms.", "Si is diamond."],
                      "all-minilm-l6-v2").arrays
    assert out["text"].shape == (2, 384) and out["sentence_offsets"].tolist() == [0, 2, 3]
    np.testing.assert_allclose(np.linalg.norm(out["text"], axis=1), 1.0, atol=1e-4)
    assert not np.allclose(out["sentences"][0], out["sentences"][1])
    # the sentence-mean vector: the normalised mean of the text's own sentence vectors
    mean = out["sentences"][:2].mean(axis=0)
    np.testing.assert_allclose(out["text_mean"][0], mean / np.linalg.norm(mean), atol=1e-6)
    np.testing.assert_allclose(out["text_mean"][1], out["sentences"][2], atol=1e-6)  # one sentence: itself


# --- errors --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, match", [
    (lambda tmp: str(tmp / "missing.json"), "not found: no such file"),
    (lambda tmp: str((tmp / "data.parquet").touch() or tmp / "data.parquet"), "unknown file format"),
    (lambda tmp: str(tmp), "neither id_prop.csv nor description.csv"),
])
def test_bad_dataset_paths(tmp_path, make, match):
    with pytest.raises(DataError, match=match):
        locate(make(tmp_path), tmp_path)


def test_unknown_target_lists_the_available_ones():
    with pytest.raises(DataError, match="target 'band_gap' is not in .*available targets: .*optb88vdw_bandgap"):
        records_of(str(SAMPLE_DATASET), target="band_gap")


def test_all_na_is_an_error_that_says_why(tmp_path, sample_records):
    rows = [{**r, "mbj_bandgap": "na"} for r in sample_records[:5]]
    with pytest.raises(DataError, match="no usable records.*5 without a finite target"):
        records_of(str(write_json(tmp_path / "na.json", rows)), target="mbj_bandgap")


def test_csv_with_wrong_columns(tmp_path, sample_records):
    path = make_description_csv(tmp_path / "d", sample_records, n=2)
    path.write_text("id,composition,target\nJVASP-1,Si,0.1\n")
    with pytest.raises(DataError, match="has 3 column.*expected 5"):
        locate(str(path), tmp_path)
    folder = tmp_path / "alignn"
    shutil.copytree(ALIGNN_FOLDER, folder)
    (folder / "id_prop.csv").write_text("POSCAR-JVASP-10.vasp\n")
    with pytest.raises(DataError, match="has 1 column.*expected 2"):
        locate(str(folder), tmp_path)


def test_prepare_cli_summary_and_one_line_errors(prepared, cache_dir):
    ok = subprocess.run([sys.executable, "-m", "tune_fusion.data", "prepare", "--cache-dir", str(cache_dir),
                         "--max_structures", "60"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)
    assert summary["status"] == "already prepared" and summary["cache"] == str(prepared.path)
    assert summary["kept"] == 60 and summary["split"] == {"train": 48, "val": 6, "test": 6}
    bad = subprocess.run([sys.executable, "-m", "tune_fusion.data", "prepare", "--dataset", "nope.json"],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "not found" in bad.stderr


def test_embedding_shows_one_progress_bar(capsys):
    found = embed_texts(["A cubic crystal. It has two sentences.", "Another one."], DEFAULT_TEXT_ENCODER)
    assert found.dim > 0
    err = capsys.readouterr().err
    assert "Batches" not in err and "Loading weights" not in err  # the libraries' own bars
    assert "embedding descriptions and sentences" in err and "5/5" in err  # 2 descriptions + 3 sentences
