"""Helpers the test modules share (fixtures stay in conftest.py): paths, the tiny real setting and the tiny search
space, reading a search's reported rows, flags for the standalone CLI, edited copies of a valid space, a published
text+graph layout."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml
from jarvis.core.atoms import Atoms

import tune_fusion  # noqa: F401  (installs the DGL compatibility step before dgl is imported)
from tune_fusion.config import Config
from tune_fusion.experiment import open_study
from tune_fusion.names import LOST

REPO = Path(__file__).resolve().parent.parent
ALIGNN_FOLDER = REPO / "tests" / "data" / "alignn_sample_data"  # a copy of ../shared/data/alignn_sample_data (NIST)


def tiny_config(cache_dir: Path, **overrides) -> Config:
    """A small real setting: 60 sample crystals (shipped descriptions, no generation), a tiny model."""
    values = {"cache_dir": str(cache_dir), "max_structures": 60, "alignn_layers": 2, "gcn_layers": 1,
              "hidden_features": 16, "embedding_features": 8, "edge_input_features": 16,
              "triplet_input_features": 8, "text_projection_dim": 8, "middle_fusion_hidden_dim": 16,
              "cross_modal_hidden_dim": 16, "cross_modal_num_heads": 2, "batch_size": 16, "epochs": 2,
              "early_stopping_patience": 0, "middle_fusion_layers": "1"}
    values.update(overrides)
    return Config.from_dict(values, source="test")


TINY = ("cache_dir", "max_structures", "alignn_layers", "gcn_layers", "hidden_features", "embedding_features",
        "edge_input_features", "triplet_input_features", "text_projection_dim", "middle_fusion_hidden_dim",
        "cross_modal_hidden_dim", "batch_size", "early_stopping_patience")


def write_space(path: Path, cache_dir: Path, num_samples: int = 6, epochs: int = 3, fifo: bool = False,
                **fixed) -> Path:
    """The tiny search space (Optuna + ASHA; ``fifo``: every trial runs all its epochs) with ``fixed`` options."""
    base = tiny_config(cache_dir).to_dict()
    space = {
        "dataset": {"path": base["dataset"], "target": "formation_energy_peratom"},
        "fixed": {**{k: base[k] for k in TINY}, "epochs": epochs, **fixed},
        "search": {
            "learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
            "use_middle_fusion": {"type": "choice", "values": [True, False]},
            "middle_fusion_layers": {"type": "choice", "values": ["0", "1"], "when": {"use_middle_fusion": True}},
            "use_cross_modal": {"type": "choice", "values": [True, False]},
            "cross_modal_num_heads": {"type": "choice", "values": [1, 2], "when": {"use_cross_modal": True}},
        },
        "scheduler": {"type": "fifo"} if fifo else {"type": "asha", "max_t": epochs, "grace_period": 1,
                                                     "reduction_factor": 2},
        "searcher": {"type": "optuna", "sampler": "tpe", "seed": 0},
        "resources": {"cpu": 1, "gpu": 0},
        "num_samples": num_samples,
        "max_concurrent": 2,
    }
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def trial_rows(exp_dir: Path) -> dict[str, list[dict]]:
    """Every trial's reported results, read from its result.json."""
    rows = {}
    for result in sorted(exp_dir.glob("trial_*/result.json")):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        rows[result.parent.name] = lines
    return rows


def tiny_flags(cache_dir: Path) -> list[str]:
    """The tiny setting as flags of python -m tune_fusion.train (model sizes, data, cache)."""
    values = tiny_config(cache_dir).to_dict()
    keys = [k for k in TINY if k not in ("batch_size", "early_stopping_patience")]
    return [item for key in keys for item in (f"--{key}", str(values[key]))]


def make_description_csv(folder: Path, sample_records: list[dict], n: int = 6, header: bool = True) -> Path:
    (folder / "cif").mkdir(parents=True)
    with open(folder / "description.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(["id", "composition", "target", "description", "file"])
        for r in sample_records[:n]:
            atoms = Atoms.from_dict(r["atoms"])
            atoms.write_cif(str(folder / "cif" / f"{r['jid']}.cif"))
            writer.writerow([r["jid"], atoms.composition.reduced_formula, r["formation_energy_peratom"],
                             f"Description of {r['jid']}. It has {atoms.num_atoms} atoms.", f"{r['jid']}.cif"])
    return folder / "description.csv"


VALID = """
dataset: {path: data/jarvis_dft3d_800.json.gz, target: formation_energy_peratom}
fixed: {epochs: 30, batch_size: 64, use_middle_fusion: true}
search:
  middle_fusion_initial_scale: {type: loguniform, low: 1.0, high: 20.0}
  middle_fusion_layers: {type: choice, values: ["2", "3", "2,3"]}
  use_cross_modal: {type: choice, values: [true, false]}
  cross_modal_num_heads: {type: choice, values: [1, 2, 4, 8], when: {use_cross_modal: true}}
scheduler: {type: asha, max_t: 30, grace_period: 3, reduction_factor: 3}
searcher: {type: optuna, sampler: tpe, seed: 0}
resources: {cpu: 1, gpu: 0}
num_samples: 32
max_concurrent: 2
"""


def edit(change: str) -> str:
    """VALID with text replaced ('old => new', several joined by ' && ') or a line appended ('new')."""
    if " => " not in change:
        return VALID + change + "\n"
    text = VALID
    for part in change.split(" && "):
        old, new = part.split(" => ")
        assert old in text, old
        text = text.replace(old, new)
    return text


TRAINED = ("epoch", "train_loss", "train_mae", "val_mae", "best_val_mae", "trial_finished")


def nothing_trained_again(before: list[dict], after: list[dict]) -> bool:
    """A trial's rows ``after`` the resume hold the epochs it had ``before`` with the same values, and each row added
    since repeats one from the checkpoint's history (resumed_from_epoch >= its epoch): told again, not trained."""
    had = {r["epoch"]: {k: r[k] for k in TRAINED} for r in before}
    told = [r for r in after if r not in before]
    return {r["epoch"] for r in after} == set(had) and all(
        r["resumed_from_epoch"] >= r["epoch"] and {k: r[k] for k in TRAINED} == had[r["epoch"]] for r in told)


def continued_without_retraining(before: list[dict], after: list[dict]) -> bool:
    """A trial cut mid-way: its rows ``after`` keep every epoch it had ``before`` with the same values; each row
    added since is either an epoch told again from its checkpoint (resumed_from_epoch >= its epoch: one it had, or
    one trained just before the stop whose row the stopped driver never wrote) or a new epoch trained on from that
    checkpoint, never from an older one than it had reported, each new epoch once.

    An epoch's row may be there as told again only: when Ray's last snapshot predates the trial's first checkpoint
    (a driver stopped by a full disk cannot save it), Ray starts the trial's result.json afresh, and the trainable
    tells the epochs again from the checkpoint it finds on storage."""
    had = {r["epoch"]: {k: r[k] for k in TRAINED} for r in before}
    added = [r for r in after if r not in before]
    told = [r for r in added if r["resumed_from_epoch"] >= r["epoch"]]
    new = [r for r in added if r["resumed_from_epoch"] < r["epoch"]]
    start = new[0]["resumed_from_epoch"] if new else max(had, default=0)
    kept = [{k: r[k] for k in TRAINED} for r in after]
    return (all(values in kept for values in had.values())
            and all({k: r[k] for k in TRAINED} == had[r["epoch"]] for r in told if r["epoch"] in had)
            and start >= max(had, default=0)
            and [r["epoch"] for r in new] == list(range(start + 1, start + 1 + len(new))))


def can_unshare(*tools: str) -> bool:
    """Whether this machine lets a process take its own mount namespace and mount a tmpfs there (root, as here), with
    ``tools`` installed."""
    if any(shutil.which(tool) is None for tool in ("unshare", *tools)):
        return False
    with tempfile.TemporaryDirectory() as folder:
        probe = ["unshare", "-m", "--propagation", "private", "sh", "-c", f"mount -t tmpfs tmpfs {folder}"]
        return subprocess.run(probe, capture_output=True).returncode == 0


def run_search_cli(*args: str, stderr: int = subprocess.STDOUT) -> subprocess.Popen:
    """``python run_search.py ARGS`` from the repository, in a session of its own (``os.killpg`` stops all it
    started); its output as text, the errors with it unless ``stderr`` says otherwise."""
    return subprocess.Popen([sys.executable, "run_search.py", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=stderr,
                            text=True, start_new_session=True)


def finish(driver: subprocess.Popen, timeout: float) -> str:
    """The driver's output once it has exited by itself within ``timeout`` s (a hang fails the test)."""
    try:
        return driver.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        raise AssertionError(f"the driver hung: {driver.communicate()[0][-3000:]}") from None


def wait_for(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while not (value := condition()):
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(1)
    return value


def assert_search_whole(exp_dir: Path, trials: int, before: dict[str, list[dict]]) -> dict:
    """Every trial finished; those finished before an interruption were not run again; no epoch trained twice; each
    trial is in the study once, finished. (A trial lost at a hard stop may leave a folder with no epoch in it.)"""
    rows = {name: got for name, got in trial_rows(exp_dir).items() if got}
    assert len(rows) == trials and all(r[-1]["trial_finished"] for r in rows.values()), {
        k: [(x["epoch"], x["trial_finished"]) for x in r] for k, r in rows.items()}
    for trial, had in before.items():
        if not had and trial not in rows:  # begun but lost at the stop, before its first epoch: closed as lost below
            continue
        kept = nothing_trained_again if had and had[-1]["trial_finished"] else continued_without_retraining
        assert kept(had, rows[trial]), (trial, [(r["epoch"], r["resumed_from_epoch"]) for r in rows[trial]])
    for trial, got in rows.items():  # epochs told again after a resume are copies (resumed_from_epoch >= epoch)
        trained = [r["epoch"] for r in got if r["resumed_from_epoch"] < r["epoch"]]
        assert len(trained) == len(set(trained)), (trial, trained)  # no epoch trained twice
        assert {r["epoch"] for r in got} == set(range(1, got[-1]["epoch"] + 1)), trial  # and every one reported
    study = open_study(exp_dir)[0]
    # a trial begun within the second before a hard stop is in no snapshot of Ray's: closed as lost, not continued
    # (a tiny model may have told the study an epoch in that second, whose result files never reached storage)
    lost = [t for t in study.trials if LOST in t.user_attrs]
    assert all(t.state == optuna.trial.TrialState.FAIL and "ray_trial_id" not in t.user_attrs for t in lost), [
        (t.number, t.state, t.user_attrs, t.intermediate_values) for t in lost]
    ran = [t.user_attrs.get("ray_trial_id") for t in study.trials if t not in lost]
    assert sorted(ran) == sorted(name.removeprefix("trial_") for name in rows), ran  # each trial once
    assert all(t.state.is_finished() for t in study.trials)
    return rows
