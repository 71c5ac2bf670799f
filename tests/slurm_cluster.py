"""A real SLURM cluster on this machine, started by the tests and stopped by the PIDs they started: its own munged
(private key and socket), one slurmctld and one slurmd per node (``slurmd -N n1``, ``-N n2``), each node with its
own port, every state, log and pid file in a temporary folder. Node ``n2`` runs in its own mount namespace where the
driver's cache folder is hidden under an empty tmpfs, so everything started there sees the machine as a separate
node would (only the storage is shared).

Debian's ``slurm-wlm`` and ``munge`` packages provide the daemons (``.ci/run`` installs them)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "unshare")


def why_not_available() -> str | None:
    """None when this machine can run the cluster, else the reason (a test skips with it)."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "the test SLURM cluster runs its daemons as root (SlurmUser=root), as CI does"
    with tempfile.TemporaryDirectory() as folder:
        probe = ["unshare", "-m", "--propagation", "private", "sh", "-c", f"mount -t tmpfs tmpfs {folder}"]
        if subprocess.run(probe, capture_output=True).returncode != 0:
            return "needs `unshare -m` and tmpfs mounts to give node n2 its own mounts"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """Nodes ``n1`` (the batch host: it runs the job script, Ray's head and the driver) and ``n2``, one CPU each."""

    NODES = ("n1", "n2")
    NODE_IPS = {"n1": "127.0.0.2", "n2": "127.0.0.3"}  # what each node's Ray listens on (node_ip in the job script)

    def __init__(self, root: Path, hidden: Path, cpus: int = 1) -> None:
        self.root, self.hidden = root, hidden
        self.procs: dict[str, subprocess.Popen] = {}
        for folder in ("munge", "state", "log", "spool"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.socket = root / "munge" / "munge.sock"
        self.conf = root / "slurm.conf"
        self.conf.write_text(self._conf(cpus))
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._start("munged", ["munged", "-F", "-f", f"--key-file={key}", f"--socket={self.socket}",
                               f"--pid-file={root / 'munge' / 'munged.pid'}", f"--log-file={root / 'log' / 'munged.log'}",
                               f"--seed-file={root / 'munge' / 'seed'}"])
        self._wait(lambda: self.socket.exists(), "munged")
        self._start("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._wait(lambda: self.run("scontrol", "ping", check=False).returncode == 0, "slurmctld")
        self._start("slurmd-n1", ["slurmd", "-D", "-f", str(self.conf), "-N", "n1"])
        # n2: its own mount namespace with the driver's cache hidden, like a machine of its own
        self._start("slurmd-n2", ["unshare", "-m", "--propagation", "private", "sh", "-c",
                                  f"mount -t tmpfs tmpfs {hidden} && exec slurmd -D -f {self.conf} -N n2"])
        self._wait(lambda: self.idle_nodes() == 2, "both nodes idle")

    def _conf(self, cpus: int) -> str:
        root = self.root
        nodes = "\n".join(f"NodeName={n} NodeHostname=localhost NodeAddr=127.0.0.1 Port={free_port()} CPUs={cpus} "
                          f"RealMemory=4000" for n in self.NODES)
        return f"""ClusterName=tunefusiontest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits this long (+1 s) before it may start again (Slurm's default, 120 s, on HPC)
AuthInfo=socket={self.socket},cred_expire=5
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=20
MinJobAge=600
{nodes}
PartitionName=test Nodes={','.join(self.NODES)} Default=YES MaxTime=INFINITE State=UP
"""

    def _start(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "w")
        self.procs[name] = subprocess.Popen(argv, env={**os.environ, "SLURM_CONF": str(self.conf)}, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def _wait(self, condition, what: str, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while not condition():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            assert not dead and time.time() < deadline, f"{what}: not ready ({dead} ended); see {self.root / 'log'}"
            time.sleep(0.5)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60, check=check)

    def idle_nodes(self) -> int:
        out = self.run("sinfo", "-h", "-o", "%T %D", check=False).stdout
        return sum(int(count) for state, count in (line.split() for line in out.splitlines()) if state == "idle")

    def sbatch(self, script: Path, *args: str, env: dict[str, str] | None = None) -> str:
        """Submit ``script`` with run_search.py's ``args``; returns the job id."""
        done = subprocess.run(["sbatch", "--parsable", str(script), *args], env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=60, cwd=self.root)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, ...)."""
        out = self.run("scontrol", "show", "job", job_id, check=False).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait_job(self, job_id: str, states: tuple[str, ...], timeout: float) -> dict[str, str]:
        deadline = time.time() + timeout
        while (info := self.job(job_id)).get("JobState") not in states:
            assert time.time() < deadline, f"job {job_id} still {info.get('JobState')} after {timeout} s"
            time.sleep(1)
        return info

    def stop(self) -> None:
        """Cancel every job, then stop the daemons this cluster started, by their PIDs."""
        self.run("scancel", "--full", "--partition=test", check=False)
        deadline = time.time() + 60
        while self.run("squeue", "-h", "-t", "running,completing", check=False).stdout.strip():
            if time.time() > deadline:
                break
            time.sleep(1)
        for name in ("slurmd-n2", "slurmd-n1", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
