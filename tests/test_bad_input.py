"""Bad input, table-driven: each row is one wrong input to one command; each must give a one-line error that names
the problem, exit with status 2, print no traceback and write nothing. Adding a case is adding a row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import ALIGNN_FOLDER, edit
from tune_fusion.cli import run
from tune_fusion.config import SAMPLE_DATASET


def prepare_main(argv):
    from tune_fusion.data.__main__ import main

    return main(["prepare", *argv])


def train_main(argv):
    from tune_fusion.train.__main__ import main

    return main(argv)


def search_main(argv):
    import run_search

    return run_search.main(argv)


def analyze_main(argv):
    import analyze_trials

    return analyze_trials.main(argv)


COMMANDS = {"prepare": prepare_main, "train": train_main, "search": search_main, "analyze": analyze_main}


def dft3d(tmp: Path, rows_from_sample, change) -> str:
    import gzip

    with gzip.open(SAMPLE_DATASET, "rt") as handle:
        rows = json.load(handle)[:rows_from_sample]
    path = tmp / "in" / "dataset.json"
    path.parent.mkdir()
    path.write_text(json.dumps([change(dict(r)) for r in rows]))
    return str(path)


def space(tmp: Path, change: str) -> str:
    path = tmp / "in" / "space.yaml"
    path.parent.mkdir()
    path.write_text(edit(change))
    return str(path)


def wrong_columns(tmp: Path) -> str:
    path = tmp / "in" / "description.csv"
    path.parent.mkdir()
    path.write_text("id,composition,target\nJVASP-1,Si,0.1\n")
    return str(path)


def no_structures(tmp: Path) -> str:
    folder = tmp / "in"
    folder.mkdir()
    (folder / "id_prop.csv").write_text("\n".join(f"missing-{i}.vasp,0.5" for i in range(3)))
    return str(folder)


# (command, arguments given the temporary folder, text the one-line error must hold)
CASES = [
    ("search", lambda t: ["--space", space(t, "search: [oops")], "is not valid YAML"),
    ("search", lambda t: ["--space", space(t, "num_sample: 4")], "Did you mean 'num_samples'?"),
    ("search", lambda t: ["--space", space(t, "max_t: 30 => max_t: three")], "max_t='three' must be a int"),
    ("search", lambda t: ["--space", space(t, "low: 1.0, high: 20.0 => low: 20.0, high: 1.0")], "low=20.0 must be < high"),
    ("search", lambda t: ["--space", space(t, 'values: ["2", "3", "2,3"] => values: []')], "non-empty list 'values'"),
    ("search", lambda t: ["--space", space(t, "when: {use_cross_modal: true} => when: {heads_on: true}")],
     "condition on unknown parameter 'heads_on'"),
    ("search", lambda t: ["--space", space(t, 'values: ["2", "3", "2,3"] => values: ["4"]')], "names layer(s) [4]"),
    ("search", lambda t: ["--space", str(t / "nope.yaml")], "not found"),
    ("search", lambda t: ["--space", space(t, ""), "--address", "127.0.0.1:9"], "no Ray cluster answers"),
    ("search", lambda t: ["--space", space(t, ""), "--resume", "--storage", str(t / "runs")], "no search to continue"),
    ("search", lambda t: ["--space", space(t, ""), "--num-samples", "0"], "num_samples=0 must be >= 1"),
    ("search", lambda t: ["--num-sample", "4"], "unrecognized argument --num-sample; did you mean --num-samples?"),
    ("search", lambda t: ["--space", space(t, "path: data/jarvis_dft3d_800 => path: data/jarvis_dft3d_8000")],
     "dataset 'data/jarvis_dft3d_8000.json.gz' not found; looked in "),
    ("search", lambda t: ["--space", space(t, ""), "--storage", earlier_search(t)],
     "already exists: continue it with --resume, or give the new search another name with --name"),
    ("train", lambda t: ["--use_middle_fusion", "True", "--middle_fusion_layers", "4", "--output_dir", str(t / "o")],
     "valid indices 0..3"),
    ("train", lambda t: ["--batch_size", "sixty", "--output_dir", str(t / "o")], "batch_size='sixty' is not a valid int"),
    ("train", lambda t: ["--resume", "--output_dir", str(t / "o")], "last_checkpoint.pt does not exist"),
    ("train", lambda t: ["--learing_rate", "0.1"], "unrecognized argument --learing_rate; did you mean --learning_rate?"),
    ("train", lambda t: ["--resume", "--output_dir", cut_last_checkpoint(t)], "cannot be read"),
    ("train", lambda t: ["--dataset", "jarvis", "--output_dir", str(t / "o")], "needs --root_dir"),
    ("train", lambda t: ["--config", str(t / "missing.json")], "cannot read it"),
    ("prepare", lambda t: ["--dataset", str(t / "missing.json"), "--cache_dir", str(t / "c")], "not found"),
    ("prepare", lambda t: ["--dataset", str((t / "d.parquet").touch() or t / "d.parquet"), "--cache_dir", str(t / "c")],
     "unknown file format"),
    ("prepare", lambda t: ["--dataset", str(SAMPLE_DATASET), "--target", "bandgap", "--cache_dir", str(t / "c")],
     "target 'bandgap' is not in"),
    ("prepare", lambda t: ["--dataset", dft3d(t, 6, lambda r: {**r, "ehull": "na"}), "--target", "ehull",
                           "--cache_dir", str(t / "c")], "6 without a finite target"),
    ("prepare", lambda t: ["--dataset", dft3d(t, 6, lambda r: {**r, "atoms": {"elements": ["Si"]}}),
                           "--cache_dir", str(t / "c")], "6 with a structure that cannot be parsed"),
    ("prepare", lambda t: ["--dataset", no_structures(t), "--cache_dir", str(t / "c")], "cannot be parsed"),
    ("prepare", lambda t: ["--dataset", wrong_columns(t), "--cache_dir", str(t / "c")], "has 3 column(s), expected 5"),
    ("prepare", lambda t: ["--dataset", str(ALIGNN_FOLDER), "--text_encoder", str(t / "MatSciBERT"),
                           "--cache_dir", str(t / "c")], "not found locally"),
    ("prepare", lambda t: ["--split_seed", "x"], "split_seed='x' is not a valid int"),
    ("prepare", lambda t: ["--max_structure", "5"], "unrecognized argument --max_structure; did you mean --max_structures?"),
    ("analyze", lambda t: [str(t / "missing_experiment")], "does not exist"),
    ("analyze", lambda t: [not_a_search(t)], "is not a tune-fusion experiment"),
    ("analyze", lambda t: ["--scale-text", "12", "--checkpoint", corrupt_checkpoint(t), "--output", str(t / "o")],
     "cannot be read"),
    ("analyze", lambda t: ["--scale-text", "12", "--checkpoint", foreign_checkpoint(t), "--output", str(t / "o")],
     "lacks"),
    ("analyze", lambda t: ["--compare", str(t / "a.pt"), str(t / "b.pt"), "--output", str(t / "o")],
     "does not exist"),
    ("prepare", lambda t: ["--train_ratio", "0.9", "--val_ratio", "0.2"], "must be <= 1"),
    ("analyze", lambda t: ["--checkpoint", str(t / "best_model.pt"), "--root_dir", "../dataset/"],
     "--root_dir ../dataset/: not needed"),
]


def earlier_search(tmp: Path) -> str:
    """Storage holding a search of the name the next one would take (``space``); returns the storage."""
    folder = tmp / "in" / "runs" / "space"
    folder.mkdir(parents=True)
    (folder / "tuner.pkl").write_bytes(b"an earlier search")
    return str(tmp / "in" / "runs")


def not_a_search(tmp: Path) -> str:
    folder = tmp / "in" / "photos"
    folder.mkdir(parents=True)
    (folder / "cat.jpg").write_bytes(b"not an experiment")
    return str(folder)


def corrupt_checkpoint(tmp: Path) -> str:
    path = tmp / "in" / "best_model.pt"
    path.parent.mkdir()
    path.write_bytes(b"PK\x03\x04 truncated")
    return str(path)


def cut_last_checkpoint(tmp: Path) -> str:
    """An output folder whose last_checkpoint.pt was cut mid-write; returns the --output_dir."""
    path = tmp / "in" / "formation_energy_peratom" / "last_checkpoint.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 truncated")
    return str(tmp / "in")


def foreign_checkpoint(tmp: Path) -> str:
    import torch

    path = tmp / "in" / "other_model.pt"
    path.parent.mkdir()
    torch.save({"model": {"fc.weight": torch.zeros(1, 4)}, "epoch": 3}, path)  # e.g. a plain ALIGNN checkpoint
    return str(path)


def files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))  # files, lock files and folders alike


@pytest.mark.parametrize("command, args, message", CASES, ids=[f"{c}:{m[:30]}" for c, _, m in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, command, args, message):
    argv = args(tmp_path)
    inputs = files_under(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        run(COMMANDS[command], argv)
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == 2
    assert err.startswith("error: ") and message in err and "\n" not in err and "Traceback" not in err
    assert files_under(tmp_path) == inputs  # nothing written


@pytest.mark.slow
def test_resources_a_flag_asked_for_name_the_flag(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a machine with a GPU can give a trial one")
    with pytest.raises(SystemExit) as stopped:
        run(search_main, ["--space", space(tmp_path, ""), "--gpus-per-trial", "1", "--storage", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and "\n" not in err, err
    assert "1 GPU (--gpus-per-trial) but no node has that" in err and err.endswith("pass a smaller --gpus-per-trial")
    assert "CPU (resources.cpu in " in err  # the CPUs still come from the file
