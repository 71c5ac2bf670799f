"""Files that are not what their name says: every kind of file the product reads, cut short, with bytes flipped
and (text files) wrongly encoded, by Hypothesis. Each reader answers with a correct read or one line that names the
file (a TuneFusionError); never a traceback, and nothing is written beside the file."""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import ALIGNN_FOLDER, REPO, make_description_csv, tiny_config
from tune_fusion.checkpoint import load_checkpoint, run_state, save_checkpoint
from tune_fusion.config import SAMPLE_DATASET, Config, read_config_file
from tune_fusion.data.records import build_records
from tune_fusion.data.sources import locate, read_entries, sidecar_path
from tune_fusion.data.text import read_descriptions
from tune_fusion.errors import TuneFusionError
from tune_fusion.experiment import open_study, read_space, read_trials, status_counts, study_storage
from tune_fusion.names import SPACE_FILE, STUDY_FILE
from tune_fusion.space import load_spec, space_summary
from tune_fusion.train import start_run


def read_dataset(path: Path, target: str = "formation_energy_peratom") -> None:
    source = locate(str(path), "/nonexistent")
    build_records(source, read_entries(source, target))


def read_experiment(path: Path) -> None:
    folder = path.parent if path.parent.name != "trial_a" else path.parent.parent
    status_counts(read_trials(folder))
    read_space(folder)
    open_study(folder)


# kind -> (the file to break, relative to its folder; how the product reads it; whether it is text)
READERS: dict[str, tuple[str, Callable[[Path], None], bool]] = {
    "search space": ("space.yaml", load_spec, True),
    "config file": ("config.json", lambda p: Config.from_dict(read_config_file(p), source=str(p)), True),
    "dataset .json": ("data.json", read_dataset, True),
    "dataset .json.gz": ("data.json.gz", read_dataset, False),
    "dataset .zip": ("data.zip", read_dataset, False),
    "ALIGNN id_prop.csv": ("id_prop.csv", lambda p: read_dataset(p.parent, "optb88vdw_bandgap"), True),
    "POSCAR": ("POSCAR-JVASP-10.vasp", lambda p: read_dataset(p.parent, "optb88vdw_bandgap"), True),
    "description.csv": ("description.csv", read_dataset, True),
    "CIF": ("cif/first.cif", lambda p: read_dataset(p.parent.parent / "description.csv"), True),
    "descriptions file": ("data.descriptions.csv.gz", read_descriptions, False),
    "checkpoint": ("checkpoint.pt", load_checkpoint, False),
    "result.json": ("trial_a/result.json", read_experiment, True),
    "search_space.json": (SPACE_FILE, read_experiment, True),
    "study journal": (STUDY_FILE, read_experiment, True),
}


@pytest.fixture(scope="module")
def originals(tmp_path_factory, sample_records, cache_dir, prepared) -> dict[str, Path]:
    """One real folder per kind, holding a good file of that kind (and what it needs beside it)."""
    root = tmp_path_factory.mktemp("originals")
    folders = {kind: root / f"k{i}" for i, kind in enumerate(READERS)}
    for folder in folders.values():
        folder.mkdir()
    shutil.copy(REPO / "search_spaces" / "quickstart.yaml", folders["search space"] / "space.yaml")
    (folders["config file"] / "config.json").write_text(json.dumps(tiny_config(cache_dir).to_dict()))
    records = json.dumps(sample_records[:4])
    (folders["dataset .json"] / "data.json").write_text(records)
    (folders["dataset .json.gz"] / "data.json.gz").write_bytes(gzip.compress(records.encode()))
    with zipfile.ZipFile(folders["dataset .zip"] / "data.zip", "w") as archive:
        archive.writestr("data.json", records)
    for kind in ("ALIGNN id_prop.csv", "POSCAR"):
        rows = (ALIGNN_FOLDER / "id_prop.csv").read_text().splitlines()[:4]
        (folders[kind] / "id_prop.csv").write_text("\n".join(rows) + "\n")
        for row in rows:
            shutil.copy(ALIGNN_FOLDER / row.split(",")[0], folders[kind])
    for kind in ("description.csv", "CIF"):
        made = make_description_csv(folders[kind] / "d", sample_records, n=3)
        for item in made.parent.iterdir():
            shutil.move(item, folders[kind])
        first = f"{sample_records[0]['jid']}.cif"  # the first crystal's CIF under a name the table below knows
        (folders[kind] / "cif" / first).rename(folders[kind] / "cif" / "first.cif")
        table = folders[kind] / "description.csv"
        table.write_text(table.read_text().replace(f",{first}", ",first.cif"))
    shutil.copy(sidecar_path(SAMPLE_DATASET), folders["descriptions file"] / "data.descriptions.csv.gz")
    save_checkpoint(run_state(start_run(tiny_config(cache_dir), prepared)), folders["checkpoint"] / "checkpoint.pt")
    for kind in ("result.json", "search_space.json", "study journal"):
        write_experiment(folders[kind])
    return folders


def write_experiment(folder: Path) -> None:
    """A small finished experiment as a search writes it: a trial's rows and params, the space, the study."""
    trial = folder / "trial_a"
    trial.mkdir()
    rows = [{"epoch": e, "training_iteration": e, "val_mae": 0.5 / e, "trial_id": "a", "trial_finished": e == 3,
             "done": e == 3} for e in (1, 2, 3)]
    (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (trial / "params.json").write_text(json.dumps({"learning_rate": 0.001}))
    spec = load_spec(REPO / "search_spaces" / "quickstart.yaml")
    (folder / SPACE_FILE).write_text(json.dumps(space_summary(spec)))
    study = optuna.create_study(study_name=folder.name, storage=study_storage(folder / STUDY_FILE))
    rate = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    for value in (0.3, 0.2):
        study.add_trial(optuna.trial.create_trial(params={"learning_rate": 0.001}, distributions={"learning_rate": rate},
                                                  value=value, intermediate_values={1: value}))


def broken(data: bytes, text: bool, choice: st.DataObject) -> bytes:
    """The file cut short, with bytes flipped, or (text) in another encoding or with bytes that are not UTF-8."""
    ways = ["cut", "flip"] + (["utf16", "latin1", "invalid"] if text else [])
    way = choice.draw(st.sampled_from(ways), label="way")
    if way == "cut":
        return data[:choice.draw(st.integers(0, max(len(data) - 1, 0)), label="keep")]
    if way == "flip":
        out = bytearray(data)
        for _ in range(choice.draw(st.integers(1, 8), label="flips")):
            i = choice.draw(st.integers(0, len(out) - 1), label="at")
            out[i] ^= choice.draw(st.integers(1, 255), label="xor")
        return bytes(out)
    if way == "invalid":
        i = choice.draw(st.integers(0, len(data)), label="at")
        return data[:i] + b"\xff\xfe\xc3" + data[i:]
    decoded = data.decode("utf-8")
    return decoded.encode("utf-16") if way == "utf16" else decoded.encode("latin-1", errors="replace").replace(
        b"a", "\u00e9".encode("latin-1"))


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


@pytest.mark.parametrize("kind", list(READERS))
def test_a_broken_file_is_read_or_refused_in_one_line_naming_it(kind, originals, tmp_path):
    name, read, text = READERS[kind]
    original = originals[kind]
    good = (original / name).read_bytes()
    read(original / name)  # the good file reads

    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(choice=st.data())
    def one(choice):
        folder = Path(tempfile.mkdtemp(dir=tmp_path))
        shutil.copytree(original, folder, dirs_exist_ok=True)
        target = folder / name
        target.write_bytes(broken(good, text, choice))
        before = snapshot(folder)
        try:
            read(target)
        except TuneFusionError as err:
            said = str(err)
            assert "\n" not in said and (str(target) in said or str(target.parent) in said), said
        after = snapshot(folder)
        assert after == before, sorted(set(after) ^ set(before))  # nothing written
        shutil.rmtree(folder)

    one()
