"""One driver per experiment: the lease a running driver holds and renews, refused to a second driver, taken over
from a dead one; on a local folder and through a URI (pyarrow's file system, as for s3:// and gs://). And a real
second driver started beside a running search."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, assert_search_whole, run_search_cli, trial_rows, wait_for, write_space
from tune_fusion import lease
from tune_fusion.errors import ConfigError
from tune_fusion.names import LEASE_FILE


def write_lease(exp_dir: Path, **fields) -> None:
    """A lease as another driver would have written it."""
    now = time.time()
    holder = {"host": "gpu-node-7", "pid": 4242, "pid_started": now - 100, "since": now - 100, "renewed": now,
              "token": "theirs", "job": "", **fields}
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / LEASE_FILE).write_text(json.dumps(holder))


def test_a_live_driver_elsewhere_is_named_and_its_experiment_refused(tmp_path):
    write_lease(tmp_path / "exp")
    with pytest.raises(ConfigError) as refused:
        with lease.hold(str(tmp_path / "exp")):
            pass
    said = str(refused.value)
    assert "in use by another driver" in said and "host gpu-node-7, PID 4242, since " in said and "\n" not in said
    assert json.loads((tmp_path / "exp" / LEASE_FILE).read_text())["token"] == "theirs"  # left as it was


@pytest.mark.parametrize("gone", ["not renewed", "dead process here", "earlier run of this job"])
def test_the_lease_of_a_driver_that_is_gone_is_taken_over(tmp_path, monkeypatch, gone):
    exp_dir = tmp_path / "exp"
    if gone == "not renewed":  # elsewhere, silent for longer than the stale rule
        write_lease(exp_dir, renewed=time.time() - lease.STALE_AFTER_S - 1)
    elif gone == "dead process here":  # on this host, its PID no longer the process that wrote it
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        write_lease(exp_dir, host=socket.gethostname(), pid=dead.pid)
    else:  # SLURM runs one run of a job at a time: the requeued run takes its own job's lease
        monkeypatch.setenv("SLURM_JOB_ID", "1234")
        write_lease(exp_dir, job="1234")
    with lease.hold(str(exp_dir)) as me:
        assert lease.holder_of(str(exp_dir)) == me and me.pid == os.getpid()
    assert not (exp_dir / LEASE_FILE).exists()  # given back at the end


def test_a_live_driver_on_this_host_keeps_its_lease(tmp_path):
    write_lease(tmp_path / "exp", host=socket.gethostname(), pid=os.getppid(),
                pid_started=__import__("psutil").Process(os.getppid()).create_time())
    with pytest.raises(ConfigError, match="in use by another driver"):
        lease.refuse_if_held(str(tmp_path / "exp"))


def test_the_holder_renews_its_lease_and_a_second_holder_is_refused_meanwhile(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "RENEW_EVERY_S", 0.2)
    exp_dir = str(tmp_path / "exp")
    with lease.hold(exp_dir) as me:
        time.sleep(1.0)
        renewed = lease.holder_of(exp_dir)
        assert renewed.token == me.token and renewed.renewed > me.renewed and renewed.since == me.since
        # another driver: another process (this one's token is its own)
        other = subprocess.run([sys.executable, "-c", f"from tune_fusion import lease; lease.refuse_if_held({exp_dir!r})"],
                               capture_output=True, text=True, cwd=REPO, timeout=60)
        assert other.returncode != 0 and f"PID {os.getpid()}" in other.stderr


def test_the_lease_works_through_a_uri(tmp_path):
    uri = f"file://{tmp_path}/exp"  # what s3:// and gs:// go through: pyarrow's file systems
    (tmp_path / "exp").mkdir()
    with lease.hold(uri) as me:
        assert json.loads((tmp_path / "exp" / LEASE_FILE).read_text())["token"] == me.token
        assert lease.holder_of(uri) == me
    assert not (tmp_path / "exp" / LEASE_FILE).exists()
    write_lease(tmp_path / "exp")
    with pytest.raises(ConfigError, match="gpu-node-7"):
        lease.refuse_if_held(uri)


@pytest.mark.slow
def test_a_second_driver_is_refused_while_the_first_runs_and_takes_over_once_it_died(tmp_path, cache_dir, prepared):
    trials = 3
    space = write_space(tmp_path / "two.yaml", cache_dir, num_samples=trials, epochs=60, fifo=True, batch_size=4)
    storage, exp_dir = tmp_path / "results", tmp_path / "results" / "two"
    args = ["--space", str(space), "--storage", str(storage)]
    first = run_search_cli(*args, stderr=subprocess.PIPE)
    wait_for(lambda: sum(len(r) for r in trial_rows(exp_dir).values()) >= 2, 300, "two epochs")

    second = run_search_cli(*args, "--resume", stderr=subprocess.PIPE)  # a second shell on the head, a reconnecting laptop
    _, said = second.communicate(timeout=120)
    assert second.returncode == 2 and said.strip().count("\n") == 0, said[-2000:]
    assert f"in use by another driver (host {socket.gethostname()}, PID {first.pid}, since " in said
    analysis = subprocess.run([sys.executable, "analyze_trials.py", str(exp_dir)], capture_output=True, text=True,
                              cwd=REPO, timeout=300)
    assert analysis.returncode == 0, analysis.stderr[-2000:]  # reading a running experiment still works

    assert first.poll() is None, first.communicate()[0][-2000:]  # still running
    os.killpg(first.pid, signal.SIGKILL)  # the first driver dies hard: its lease stays behind
    first.wait()
    assert (exp_dir / LEASE_FILE).exists()
    before = trial_rows(exp_dir)
    third = run_search_cli(*args, "--resume", stderr=subprocess.PIPE)  # takes the dead driver's experiment over
    out, err = third.communicate(timeout=600)
    assert third.returncode == 0, (out + err)[-3000:]
    assert "this one takes it over" in out
    assert_search_whole(exp_dir, trials, before)  # the trials asked for, no more
    assert not (exp_dir / LEASE_FILE).exists()
