"""Searches on a real SLURM cluster on this machine (tests/slurm_cluster.py: munged, slurmctld, two slurmd nodes, the
second in its own mount namespace without the driver's cache), submitted with a copy of slurm/search.sbatch edited
on its marked lines as a user would: a search that runs out of time and goes on in the job's next run, and a search
cancelled with scancel and resubmitted with --resume. Each ends with every trial finished once, no epoch trained
twice and each trial once in the study."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, assert_search_whole, trial_rows, wait_for, write_space
from tests.slurm_cluster import SlurmCluster, why_not_available

pytestmark = pytest.mark.slow

if (reason := why_not_available()) is not None:
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory, cache_dir, prepared):
    """The cluster; node n2 cannot see ``cache_dir`` (the tiny setting's prepared cache, which the driver on n1 has)."""
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), hidden=cache_dir)
    try:
        yield cluster
    finally:
        cluster.stop()


def job_script(slurm: SlurmCluster, storage: Path, minutes: int, warning_s: int, stop_within_s: int) -> Path:
    """slurm/search.sbatch with its marked lines edited for this cluster (each edit must find its line once)."""
    text = (REPO / "slurm" / "search.sbatch").read_text()
    node_ip = "node_ip() { case $SLURMD_NODENAME in " + " ".join(
        f"{node}) echo {ip} ;;" for node, ip in SlurmCluster.NODE_IPS.items()) + " esac; }"
    edits = {
        r"#SBATCH --cpus-per-task=\d+.*": "#SBATCH --cpus-per-task=1",
        r"#SBATCH --gpus-per-node=.*\n": "",
        r"#SBATCH --time=\S+.*": f"#SBATCH --time={minutes}",
        r"#SBATCH --signal=B:USR1@\d+.*": f"#SBATCH --signal=B:USR1@{warning_s}",
        r"#SBATCH --output=\S+": f"#SBATCH --output={slurm.root}/tune-fusion-%j.log",
        r"(?m)^STORAGE=.*$": f"STORAGE={storage}",
        r"(?m)^TUNE_FUSION_DIR=.*$": f"TUNE_FUSION_DIR={REPO}",
        r"(?m)^STOP_WITHIN=.*$": f"STOP_WITHIN={stop_within_s}",
        r"(?m)^node_ip\(\).*$": node_ip.replace("\\", "\\\\"),
    }
    for pattern, new in edits.items():
        text, count = re.subn(pattern, new, text)
        assert count == 1, f"slurm/search.sbatch has no single line matching {pattern!r}"
    path = slurm.root / f"search-{minutes}.sbatch"
    path.write_text(text)
    return path


def log_of(slurm: SlurmCluster, job: str) -> str:
    return (slurm.root / f"tune-fusion-{job}.log").read_text()


def epochs_reported(exp_dir: Path) -> int:
    return sum(len(rows) for rows in trial_rows(exp_dir).values())


def boundary(log: str) -> tuple[dict[str, float], dict[str, float]]:
    """The time lost between two runs of the job, from its log: seconds from the time-limit warning to the driver's
    exit, to Ray stopped, to the next run's start, to Ray up again, and to its first trial started (the console's
    own clock, which starts with the driver); and each run's wall time."""
    stamps: dict[str, float] = {}
    marks = {"warning": "SIGUSR1: the time limit is near", "driver_exited": "the driver has ended (exit 75)",
             "ray_stopped": "Ray stopped on", "next_run": "run 2:", "ray_up_again": "Ray is up on",
             "first_run": "run 1:", "ended": "the search has ended"}
    for line in log.splitlines():
        found = re.match(r"\[(\d\d):(\d\d):(\d\d)\] slurm: (.*)", line)
        if found:
            h, m, sec, text = found.groups()
            for mark, words in marks.items():
                if words in text and mark not in stamps and (mark != "ray_up_again" or "next_run" in stamps):
                    stamps[mark] = 3600 * int(h) + 60 * int(m) + int(sec)
        elif "ray_up_again" in stamps and "first_trial" not in stamps:
            trial = re.match(r"\[\s*(\d+):(\d\d)\] trial \S+ started", line)
            if trial:
                stamps["first_trial"] = stamps["ray_up_again"] + 60 * int(trial.group(1)) + int(trial.group(2))
    order = ["warning", "driver_exited", "ray_stopped", "next_run", "ray_up_again", "first_trial"]
    lost = {f"{a}->{b}_s": stamps[b] - stamps[a] for a, b in zip(order, order[1:]) if a in stamps and b in stamps}
    walls = {"run_1_s": stamps.get("ray_stopped", 0) - stamps.get("first_run", 0),
             "run_2_s": stamps.get("ended", 0) - stamps.get("next_run", 0)}
    return lost, walls


def test_a_two_node_search_that_outlives_its_time_limit_goes_on_in_the_next_run(slurm, cache_dir, tmp_path):
    """The time limit is real: the job runs until some epochs are done, then its limit is cut to 2 minutes with
    `scontrol update` (SLURM checks limits every 30 s, so a limit set at submission would land the warning anywhere
    in the first minute, before or after the first epoch). SLURM sends the warning (USR1 to the batch shell),
    the driver lets the running epochs end, saves and exits 75, and the job requeues itself; its next run resumes
    with --resume auto and finishes. Trials ran on both nodes; n2, which cannot see the driver's cache, copied it."""
    storage, trials = tmp_path / "storage", 6
    # trials of 30-60 s (60 epochs of 48 crystals), three rounds of two: the warning comes 0-60 s after the limit is
    # cut, mid-search however fast the machine (at 30 epochs an idle machine finished the search before it)
    space = write_space(tmp_path / "outlive.yaml", cache_dir, num_samples=trials, epochs=60, fifo=True, batch_size=4)
    home = tmp_path / "home"
    home.mkdir()
    job = slurm.sbatch(job_script(slurm, storage, minutes=10, warning_s=90, stop_within_s=20), "--space", str(space),
                       "--name", "outlive", env={"HOME": str(home)})
    exp_dir = storage / "outlive"
    wait_for(lambda: epochs_reported(exp_dir) >= 3, 240, "three epochs in the first run")
    hours, minutes, _ = map(int, slurm.job(job)["RunTime"].split(":")[-3:])
    slurm.run("scontrol", "update", f"JobId={job}", f"TimeLimit={60 * hours + minutes + 2}")
    wait_for(lambda: "requeueing job" in log_of(slurm, job) or "not requeued" in log_of(slurm, job), 200,
             "the first run to stop and requeue")
    assert "requeueing job" in log_of(slurm, job), log_of(slurm, job)[-3000:]  # not: the search ended before the warning
    slurm.run("scontrol", "update", f"JobId={job}", "TimeLimit=10")  # the next run gets a whole limit again
    before = {k: r for k, r in trial_rows(exp_dir).items()}
    assert sum(bool(r and r[-1]["trial_finished"]) for r in before.values()) < trials  # really mid-search
    first_run = log_of(slurm, job)
    assert "SIGUSR1" in first_run and "stopped by SIGUSR1" in first_run, first_run[-3000:]
    info = slurm.wait_job(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 400)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", info
    log = log_of(slurm, job)
    assert "run 2" in log and "the search has ended: not requeued" in log, log[-3000:]
    rows = assert_search_whole(exp_dir, trials, before)
    lost, walls = boundary(log)
    assert len(lost) == 5 and all(0 <= v < 120 for v in lost.values()), lost
    print(f"job {job}: wall time per run {walls}; time lost at the boundary {lost}")  # shown by pytest -rP
    assert {row["node_ip"] for r in rows.values() for row in r} == set(SlurmCluster.NODE_IPS.values())  # both nodes
    fetched = {row["node_ip"] for r in rows.values() for row in r if row["cache_fetch_mb"] > 0}
    assert fetched == {SlurmCluster.NODE_IPS["n2"]}  # only n2, which cannot see the driver's cache, copied it
    # the job's own token: in no file of the job, its log, or the user's home
    assert not (home / ".ray").exists()
    assert "RAY_AUTH_TOKEN=" not in log and not re.search(r"\b[0-9a-f]{64}\b", log)


def test_a_cancelled_search_resubmitted_with_resume_finishes_with_nothing_run_twice(slurm, cache_dir, tmp_path):
    storage, trials = tmp_path / "storage", 4
    space = write_space(tmp_path / "cancel.yaml", cache_dir, num_samples=trials, epochs=4, fifo=True, batch_size=4)
    script = job_script(slurm, storage, minutes=10, warning_s=90, stop_within_s=20)
    exp_dir = storage / "cancel"
    job = slurm.sbatch(script, "--space", str(space), "--name", "cancel")
    wait_for(lambda: any(r and r[-1]["trial_finished"] for r in trial_rows(exp_dir).values()), 240,
             "a finished trial")
    slurm.run("scancel", job)
    info = slurm.wait_job(job, ("CANCELLED",), 120)
    time.sleep(2)
    before = trial_rows(exp_dir)
    assert sum(bool(r and r[-1]["trial_finished"]) for r in before.values()) < trials
    assert info["Restarts"] == "0"  # a cancelled job is not requeued
    again = slurm.sbatch(script, "--space", str(space), "--name", "cancel", "--resume")
    info = slurm.wait_job(again, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 400)
    assert info["JobState"] == "COMPLETED", log_of(slurm, again)[-3000:]
    assert_search_whole(exp_dir, trials, before)
