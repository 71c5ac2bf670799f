"""One driver per experiment: the driver of a search holds a lease on its experiment and renews it while it runs.

The lease is a small JSON file in the experiment (``names.LEASE_FILE``: host, PID, since when, last renewal),
written whole and renamed into place, so it works where experiments live: a local disk, NFS shared between nodes
(where ``flock`` is unreliable; a rename is atomic there) and ``s3://``/``gs://`` (one object, through pyarrow).
A second driver of the same experiment refuses to start with one line naming the holder. A holder that died stops
renewing: its lease is stale ``STALE_AFTER_S`` after its last renewal (at once when it ran on this host and its
process is gone, or when it was an earlier run of this same SLURM job, which SLURM runs one at a time), and the
next ``--resume`` takes the experiment over. Readers (the analysis) ignore the lease.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from tune_fusion.data.publish import filesystem_of
from tune_fusion.errors import ConfigError
from tune_fusion.names import LEASE_FILE, is_uri

log = logging.getLogger(__name__)

__all__ = ["RENEW_EVERY_S", "STALE_AFTER_S", "Holder", "hold", "holder_of", "refuse_if_held"]

RENEW_EVERY_S = 10.0
# a lease not renewed for this long belongs to a dead driver: well above the renewal period, and above NFS's
# attribute caching (acdirmax, 60 s by default), so that a live driver is never taken for a dead one
STALE_AFTER_S = 90.0


@dataclass(frozen=True)
class Holder:
    """The driver that holds an experiment."""

    host: str
    pid: int
    pid_started: float  # the process' start time, so that a reused PID is not taken for the holder
    since: float  # time.time() when it took the lease
    renewed: float
    token: str
    job: str = ""  # SLURM_JOB_ID of the holder, when it ran in a SLURM job

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        job = f", SLURM job {self.job}" if self.job else ""
        return f"host {self.host}, PID {self.pid}{job}, since {since}"

    def stale(self, now: float) -> bool:
        """Whether the holder is known to be gone: not renewed for STALE_AFTER_S, or its process on this host has
        ended, or it was an earlier run of the SLURM job this process runs in."""
        if now - self.renewed > STALE_AFTER_S:
            return True
        if self.job and self.job == os.environ.get("SLURM_JOB_ID"):
            return True
        if self.host == socket.gethostname():
            try:
                return abs(psutil.Process(self.pid).create_time() - self.pid_started) > 1
            except psutil.Error:
                return True
        return False


def _myself(token: str) -> Holder:
    now = time.time()
    return Holder(host=socket.gethostname(), pid=os.getpid(), pid_started=psutil.Process().create_time(), since=now,
                  renewed=now, token=token, job=os.environ.get("SLURM_JOB_ID", ""))


_me = _myself(uuid.uuid4().hex)  # this process, as it would write itself into a lease (its token is per process)


def _location(exp_dir: str) -> str:
    return f"{exp_dir.rstrip('/')}/{LEASE_FILE}"


def _read(location: str) -> bytes | None:
    if is_uri(location):
        filesystem, path = filesystem_of(location)
        try:
            with filesystem.open_input_stream(path) as stream:
                return stream.read()
        except (FileNotFoundError, OSError):
            return None
    try:
        return Path(location).read_bytes()
    except FileNotFoundError:
        return None


def _write(location: str, holder: Holder) -> None:
    data = json.dumps(asdict(holder)).encode()
    if is_uri(location):  # an object store writes an object whole
        filesystem, path = filesystem_of(location)
        with filesystem.open_output_stream(path) as stream:
            stream.write(data)
        return
    path = Path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{holder.token}")
    try:
        temporary.write_bytes(data)
    except OSError:  # a full disk: leave nothing behind
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)  # atomic, on NFS too


def _delete(location: str) -> None:
    if is_uri(location):
        filesystem, path = filesystem_of(location)
        try:
            filesystem.delete_file(path)
        except (FileNotFoundError, OSError):
            pass
        return
    Path(location).unlink(missing_ok=True)


def holder_of(exp_dir: str) -> Holder | None:
    """Who holds the experiment now (a lease written by a driver), or None; a lease file that is not one counts as
    none (it is replaced)."""
    data = _read(_location(exp_dir))
    if data is None:
        return None
    try:
        return Holder(**json.loads(data))
    except (ValueError, TypeError):
        log.warning("%s is not a driver's lease: it is replaced", _location(exp_dir))
        return None


def refuse_if_held(exp_dir: str) -> Holder | None:
    """A ConfigError when a live driver holds the experiment; else the stale holder whose lease a resume takes over
    (or None)."""
    holder = holder_of(exp_dir)
    if holder is None or holder.token == _me.token:
        return None
    if not holder.stale(time.time()):
        ago = time.time() - holder.renewed
        raise ConfigError(
            f"experiment {exp_dir} is in use by another driver ({holder.describe()}, last seen {ago:.0f} s ago): "
            f"wait for it to end or stop it; if it has died, its lease expires {STALE_AFTER_S:.0f} s after it was "
            f"last seen (or delete {_location(exp_dir)})")
    return holder


@contextmanager
def hold(exp_dir: str) -> Iterator[Holder]:
    """Take the experiment's lease (refused when a live driver holds it), renew it every RENEW_EVERY_S while the
    block runs, and give it back at the end."""
    refuse_if_held(exp_dir)
    location = _location(exp_dir)
    me = _myself(_me.token)
    _write(location, me)
    time.sleep(0.2)  # two drivers starting at once both write: the one whose lease was overwritten refuses
    if (now := holder_of(exp_dir)) is not None and now.token != me.token:
        refuse_if_held(exp_dir)
    done = threading.Event()

    def renew() -> None:
        while not done.wait(RENEW_EVERY_S):
            try:
                current = holder_of(exp_dir)
                if current is not None and current.token != me.token:
                    log.error("experiment %s was taken over by another driver (%s)", exp_dir, current.describe())
                    return
                _write(location, Holder(**{**asdict(me), "renewed": time.time()}))
            except OSError as err:  # a full disk or a storage hiccup: try again at the next renewal
                log.warning("could not renew the lease of %s: %s", exp_dir, err)

    renewer = threading.Thread(target=renew, name="lease-renewer", daemon=True)
    renewer.start()
    try:
        yield me
    finally:
        done.set()
        renewer.join(timeout=5)
        current = holder_of(exp_dir)
        if current is None or current.token == me.token:
            _delete(location)
