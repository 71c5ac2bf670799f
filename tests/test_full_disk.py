"""A search whose storage fills up mid-search: a real small tmpfs as the storage, in a private mount namespace (as the
cluster tests give each node its own mounts), filled to the last byte while trials train. The search stops cleanly
with one line naming the full file system, every checkpoint left on the disk loads, and once space is freed
``--resume`` finishes the search with nothing trained twice."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, assert_search_whole, can_unshare, finish, trial_rows, wait_for, write_space
from tune_fusion.checkpoint import load_checkpoint
from tune_fusion.errors import EXIT_DISK_FULL, is_disk_full
from tune_fusion.experiment import open_study
from tune_fusion.names import STUDY_FILE
from tune_fusion.storage import whole_files

pytestmark = pytest.mark.skipif(not can_unshare("nsenter"), reason="needs `unshare -m`, `nsenter` and tmpfs mounts (root, as "
                                "on this machine) to give the search a small disk of its own")


class SmallDisk:
    """A tmpfs of ``size`` at ``folder``, seen only by the processes run through ``run``/``start`` (a private mount
    namespace, held by a sleeping process); the test reads it through ``view`` (/proc/<holder>/root)."""

    def __init__(self, folder: Path, size: str) -> None:
        folder.mkdir()
        self.folder = folder
        self.holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                                        f"mount -t tmpfs -o size={size} tmpfs {folder} && exec sleep 3600"])
        self.enter = ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", f"--wd={REPO}", "--"]
        self.view = self.seen(str(folder))
        wait_for(lambda: self.run("mountpoint", "-q", str(folder)).returncode == 0, 30, "the tmpfs")

    def seen(self, path: str) -> Path:
        """``path`` as the processes on the small disk see it."""
        return Path(f"/proc/{self.holder.pid}/root") / path.lstrip("/")

    def run(self, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.enter, *command], capture_output=True, text=True)

    def start(self, *command: str) -> subprocess.Popen:
        return subprocess.Popen([*self.enter, *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_a_file_the_full_disk_refuses_leaves_the_previous_version_and_nothing_else(tmp_path):
    import pyarrow.fs

    disk = SmallDisk(tmp_path / "small", "64k")
    try:
        folder = disk.seen(str(disk.folder))  # the test writes into the small disk through the holder's view
        (folder / "experiment_state.json").write_text('{"trials": 1}')
        big, small = tmp_path / "big.json", tmp_path / "small.json"
        big.write_bytes(b"x" * 200_000)
        small.write_text('{"trials": 2}')
        with pytest.raises(OSError) as refused:  # as Ray copies its state to storage
            pyarrow.fs.copy_files(str(big), str(folder / "experiment_state.json"),
                                  destination_filesystem=whole_files(str(folder)))
        assert is_disk_full(refused.value)
        assert [p.name for p in folder.iterdir()] == ["experiment_state.json"]  # no temporary file left
        assert (folder / "experiment_state.json").read_text() == '{"trials": 1}'
        pyarrow.fs.copy_files(str(small), str(folder / "experiment_state.json"),
                              destination_filesystem=whole_files(str(folder)))
        assert (folder / "experiment_state.json").read_text() == '{"trials": 2}'
    finally:
        disk.close()


def test_a_copy_whose_last_bytes_do_not_fit_fails_in_the_copy_not_silently_at_close(tmp_path):
    """pyarrow's copy_files ignores an error raised when it closes a Python file: the bytes a write leaves buffered
    for close (a tail smaller than the buffer, after a partial write filled the disk) must fail in the write."""
    import pyarrow.fs

    disk = SmallDisk(tmp_path / "small", "64k")
    try:
        folder = disk.seen(str(disk.folder))
        free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
        source = tmp_path / "checkpoint.pt"
        source.write_bytes(b"x" * (free + 2048))  # all but a 2 kB tail fits
        with pytest.raises(OSError) as refused:
            pyarrow.fs.copy_files(str(source), str(folder / "checkpoint.pt"),
                                  destination_filesystem=whole_files(str(folder)))
        assert is_disk_full(refused.value)
        assert list(folder.iterdir()) == []
    finally:
        disk.close()


@pytest.mark.slow
def test_a_full_disk_stops_the_search_cleanly_and_resume_finishes_it(tmp_path, cache_dir, prepared):
    space = write_space(tmp_path / "full.yaml", cache_dir, num_samples=3, epochs=6, fifo=True)
    disk = SmallDisk(tmp_path / "storage", "8m")  # a checkpoint of the tiny model is 0.5-0.7 MB
    filler = None
    try:
        exp_dir = disk.view / "full"
        args = [sys.executable, "run_search.py", "--space", str(space), "--storage", str(disk.folder), "--name", "full",
                "--stop-within", "30"]
        driver = disk.start(*args)
        wait_for(lambda: any(trial_rows(exp_dir).values()) or driver.poll() is not None, 240, "a trained epoch")
        assert driver.poll() is None, driver.communicate()[0][-3000:]
        # to the last byte, and kept there: Ray drops a trial's oldest checkpoint when a newer one is saved, which
        # frees space after a single fill
        filler = disk.start("sh", "-c", f"while :; do cat /dev/zero >> {disk.folder}/filler 2>/dev/null; sleep .05; done")
        wait_for(lambda: disk.run("df", "--output=avail", str(disk.folder)).stdout.split()[-1] == "0", 30,
                 "a full disk")

        output = finish(driver, 180)
        stop(filler)
        assert driver.returncode == EXIT_DISK_FULL, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        full = re.search(rf"trial (\w+) could not save its epoch: the disk is full \(No space left on device\) while "
                         rf"trial \1 wrote its checkpoint ({disk.folder}/full/trial_\1/checkpoint_\d+) \(file system "
                         rf"{disk.folder}: 0 B free", output)
        assert full, output[-3000:]
        last = output.strip().splitlines()[-1]
        assert last.startswith("error: the search stopped: the disk is full") and str(disk.folder) in last, last
        assert last.endswith("free space there, then continue with the same command plus --resume"), last

        # nothing on the disk is cut short: the failed checkpoint is gone, every other one loads, as does Ray's state
        trial = full.group(1)
        assert not disk.seen(full.group(2)).exists()
        saved = sorted(exp_dir.glob("trial_*/checkpoint_*/checkpoint.pt"))
        assert saved and all(load_checkpoint(path)["epoch"] >= 1 for path in saved)
        reported = {name: rows[-1]["epoch"] for name, rows in trial_rows(exp_dir).items() if rows}
        for name, epoch in reported.items():  # each trial's newest checkpoint holds its last reported epoch
            assert max(load_checkpoint(p)["epoch"] for p in exp_dir.glob(f"{name}/checkpoint_*/checkpoint.pt")) >= epoch
        for state in exp_dir.glob("experiment_state-*.json"):
            json.loads(state.read_text())
        before = trial_rows(exp_dir)
        assert sum(bool(rows and rows[-1]["trial_finished"]) for rows in before.values()) < 3  # really mid-search

        disk.run("rm", f"{disk.folder}/filler")
        resumed = disk.start(*args, "--resume")
        output = finish(resumed, 300)
        assert resumed.returncode == 0, output[-3000:]
        rows = assert_search_whole(exp_dir, 3, before)
        if before.get(f"trial_{trial}"):  # the trial that met the full disk went on from its previous checkpoint
            assert rows[f"trial_{trial}"][len(before[f"trial_{trial}"])]["resumed_from_epoch"] >= 1
    finally:
        if filler:
            stop(filler)
        disk.close()


@pytest.mark.slow
def test_a_full_disk_under_the_study_ends_the_driver_in_one_line_and_resume_finishes(tmp_path, cache_dir, prepared):
    """The driver's own write fails: the study journal sits on a one-page tmpfs (bound over the experiment's journal
    file), which fills after a few trials' records."""
    space = write_space(tmp_path / "journal.yaml", cache_dir, num_samples=3, epochs=2, fifo=True)
    storage, exp_dir = tmp_path / "results", tmp_path / "results" / "journal"
    exp_dir.mkdir(parents=True)
    (exp_dir / STUDY_FILE).touch()  # a new search (--resume auto, nothing to resume) over this empty study file
    journal = exp_dir / STUDY_FILE
    disk = SmallDisk(tmp_path / "small", "4k")
    try:
        bound = disk.run("sh", "-c", f"touch {disk.folder}/journal && mount --bind {disk.folder}/journal {journal}")
        assert bound.returncode == 0, bound.stderr
        args = [sys.executable, "run_search.py", "--space", str(space), "--storage", str(storage), "--name", "journal"]
        driver = disk.start(*args, "--resume", "auto")
        output = finish(driver, 240)
        assert driver.returncode == EXIT_DISK_FULL, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        last = output.strip().splitlines()[-1]
        assert last == (f"error: the disk is full (No space left on device) while the driver wrote to {journal} (file "
                        f"system {journal}: 0 B free of 4.1 kB): free space there, then continue with the same command "
                        "plus --resume"), last
        seen = disk.seen(str(exp_dir))
        assert disk.seen(str(journal)).read_bytes().endswith(b"\n")  # no record cut short
        before = trial_rows(exp_dir)
        assert len(open_study(seen)[0].trials) < 3 or not all(r and r[-1]["trial_finished"] for r in before.values())

        assert disk.run("mount", "-o", "remount,size=1m", str(disk.folder)).returncode == 0
        resumed = disk.start(*args, "--resume")
        output = finish(resumed, 300)
        assert resumed.returncode == 0, output[-3000:]
        assert_search_whole(seen, 3, before)
    finally:
        disk.close()
