"""A real multi-node Ray cluster on this machine, built like separate machines: a head and worker nodes started with
``ray start``, token authentication on, each worker with its own HOME and in its own mount namespace where the
head's cache folder is hidden (an empty tmpfs over it), so the only folder all nodes share is the storage.
``run_search.py --address`` drives real searches on it: with the workers up, with workers joining after the search
started, with a worker killed mid-search, and as a Ray job (submitted, followed, stopped and resumed through the
head's dashboard on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, assert_search_whole, can_unshare, tiny_config, trial_rows, wait_for, write_space

if not can_unshare("ray"):
    pytest.skip("needs `unshare -m` and tmpfs mounts (root, as on this machine) to give worker nodes their own mounts",
                allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The head checks its nodes every second and calls one dead after 3 misses (Ray's defaults take several times longer)
DEATH_NOTICED_IN_3_S = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                        "RAY_health_check_failure_threshold": "3"}


class Cluster:
    """A head node (no CPUs: trials go to workers, as in cluster.yaml) and worker nodes added on demand."""

    HEAD_IP = "127.0.0.2"  # every node its own loopback address (127.0.0.1 itself Ray rewrites to the LAN address)

    def __init__(self, root: Path) -> None:
        self.root, self.port, dashboard_port = root, free_port(), free_port()
        self.address = f"{self.HEAD_IP}:{self.port}"
        self.dashboard = f"http://127.0.0.1:{dashboard_port}"  # Ray Jobs' address, on loopback only
        self.cache = root / "cache"  # the driver's cache_dir; hidden from every worker
        self.storage = root / "storage"  # shared by all nodes
        self.head_home = root / "head"
        for folder in (self.cache, self.storage, self.head_home):
            folder.mkdir(parents=True)
        self.workers: dict[str, subprocess.Popen] = {}
        self.started = 0
        # as the README's recipe: a token for the cluster, then the head in token mode
        subprocess.run(["ray", "get-auth-token", "--generate"], env=self.env(self.head_home), check=True,
                       capture_output=True, timeout=120)
        # --block keeps the head's processes in this test's own session, so stopping it touches no other Ray here
        self.head = subprocess.Popen(["ray", "start", "--head", f"--node-ip-address={self.HEAD_IP}",
                                      f"--port={self.port}", "--num-cpus=0", "--dashboard-host=127.0.0.1",
                                      f"--dashboard-port={dashboard_port}",
                                      "--disable-usage-stats", "--block"], env=self.env(self.head_home, **DEATH_NOTICED_IN_3_S),
                                     stdout=open(root / "head.log", "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.token = (self.head_home / ".ray" / "auth_token").read_text().strip()
        deadline = time.time() + 120
        while not self.answers():
            assert time.time() < deadline and self.head.poll() is None, (root / "head.log").read_text()[-2000:]
            time.sleep(0.5)
        self.node_names()  # the head is up and admits a driver with its token

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        return {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token", **extra}

    def add_worker(self, name: str) -> str:
        """Start worker node ``name`` and wait until it has joined; returns its node id."""
        home = self.root / name
        home.mkdir()
        self.started += 1
        script = (f"mount -t tmpfs tmpfs {self.cache} && exec ray start --address={self.address} "
                  f"--node-ip-address=127.0.0.{3 + self.started} --num-cpus=1 "
                  f"--resources='{{\"{name}\": 1}}' --disable-usage-stats --block")
        self.workers[name] = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script], env=self.env(home, RAY_AUTH_TOKEN=self.token),
            stdout=open(home / "ray.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)

        return self.wait_for(name)  # one at a time: raylets starting together on one machine race for socket files

    def kill_worker(self, name: str) -> None:
        """The node dies: every process in its mount namespace at once (the raylet, its workers, the trial there)."""
        namespace = os.readlink(f"/proc/{self.workers.pop(name).pid}/ns/mnt")
        kill_where(lambda proc: os.readlink(proc / "ns" / "mnt") == namespace)

    def answers(self) -> bool:
        try:
            socket.create_connection((self.HEAD_IP, self.port), timeout=1.0).close()
        except OSError:
            return False
        return True

    def node_names(self, alive_only: bool = False) -> dict[str, str]:
        """Node id -> worker name (dead nodes too, unless ``alive_only``), asked from the cluster itself (a driver
        with the head's token)."""
        script = (f"import json, ray; ray.init(address='{self.address}', logging_level='ERROR'); "
                  "print(json.dumps([[n['NodeID'], n['Alive'], [r for r in n['Resources'] if r.startswith('worker_')]]"
                  " for n in ray.nodes()]))")
        out = subprocess.run([sys.executable, "-c", script], env=self.env(self.head_home), capture_output=True,
                             text=True, timeout=120, check=True)
        nodes = json.loads([line for line in out.stdout.splitlines() if line.startswith("[")][-1])
        return {node: names[0] for node, alive, names in nodes if names and (alive or not alive_only)}

    def wait_for(self, name: str, timeout: float = 90.0) -> str:
        """Wait until worker ``name`` has joined; returns its node id."""
        deadline = time.time() + timeout
        while (node := next((n for n, found in self.node_names(alive_only=True).items() if found == name), None)) is None:
            assert time.time() < deadline, f"{name} did not join"
            time.sleep(1.0)
        return node

    def search(self, space: Path, name: str, **popen) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "run_search.py", "--space", str(space), "--address", self.address,
                                 "--storage", str(self.storage), "--name", name], cwd=REPO,
                                env=self.env(self.head_home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, **popen)

    def stop(self) -> None:
        """Every process of this cluster, and nothing else (another Ray on the machine keeps running)."""
        for name in list(self.workers):
            self.kill_worker(name)
        kill_where(lambda proc: os.getsid(int(proc.name)) == self.head.pid)  # its own session: sid = its pid


def kill_where(chosen) -> None:
    """SIGKILL every process for which ``chosen(Path('/proc/<pid>'))`` holds."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int(proc.name) != os.getpid() and chosen(proc):
                os.kill(int(proc.name), signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError, PermissionError, OSError):
            continue  # it ended meanwhile


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    found = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield found
    finally:
        found.stop()


def cluster_space(cluster: Cluster, epochs: int, trials: int) -> Path:
    """A tiny search whose cache_dir is the head's (hidden on the workers); the driver prepares it."""
    path = write_space(cluster.root / f"space_{epochs}.yaml", cluster.cache, num_samples=trials, epochs=epochs,
                       fifo=True, batch_size=4)  # every trial runs all its epochs
    assert tiny_config(cluster.cache).data.cache_dir == str(cluster.cache)
    return path


@pytest.fixture(scope="module")
def space(cluster) -> Path:
    return cluster_space(cluster, epochs=3, trials=4)


@pytest.fixture(scope="module")
def long_space(cluster) -> Path:
    """Trials long enough (16 epochs) to be cut mid-way by a dying node, on a fast machine too; one per worker."""
    return cluster_space(cluster, epochs=16, trials=2)


def finished(cluster: Cluster, name: str, driver: subprocess.Popen, trials: int) -> dict[str, list[dict]]:
    output, _ = driver.communicate(timeout=400)
    assert driver.returncode == 0, output[-4000:]
    rows = trial_rows(cluster.storage / name)
    assert len(rows) == trials and all(r[-1]["trial_finished"] for r in rows.values()), output[-4000:]
    return rows


def fetches_per_node(rows: dict[str, list[dict]], nodes: dict[str, str]) -> dict[str, list[float]]:
    """Node name -> the MB each trial attempt on it copied to get the cache (one attempt per node copies)."""
    out: dict[str, list[float]] = {}
    for trial in rows.values():
        for row in trial:
            if row.get("epoch") == row.get("resumed_from_epoch", 0) + 1:  # an attempt's first report
                out.setdefault(nodes[row["node_id"]], []).append(row["cache_fetch_mb"])
                if row["cache_fetch_mb"]:
                    print(f"{nodes[row['node_id']]} got the cache: {row['cache_fetch_mb']} MB in "
                          f"{row['cache_fetch_s']} s")
    return out


@pytest.mark.slow
def test_workers_with_token_auth_run_every_trial_and_fetch_the_cache_once_per_node(cluster, space):
    cluster.add_worker("worker_a")
    cluster.add_worker("worker_b")
    rows = finished(cluster, "up_front", cluster.search(space, "up_front"), trials=4)
    nodes = cluster.node_names()
    fetched = fetches_per_node(rows, nodes)
    assert set(fetched) <= {"worker_a", "worker_b"} and fetched  # every trial ran on a worker
    for node, sizes in fetched.items():
        assert sum(mb > 0 for mb in sizes) == 1, (node, sizes)  # the first trial there copied it, no trial rebuilt it
    assert (cluster.storage / "tune-fusion-cache").is_dir()


@pytest.mark.slow
def test_workers_that_join_later_and_a_worker_killed_mid_search(cluster, long_space):
    for name in list(cluster.workers):
        cluster.kill_worker(name)  # a fresh start: no node is up when the search begins
    deadline = time.time() + 120
    while cluster.node_names(alive_only=True):  # until the cluster has noticed (health checks, ~3 s)
        assert time.time() < deadline, "the killed workers are still listed alive"
        time.sleep(1.0)
    driver = cluster.search(long_space, "late_join")
    time.sleep(8)  # the search has started, published its cache, and waits for nodes
    assert driver.poll() is None
    joined = {cluster.add_worker("worker_c"): "worker_c", cluster.add_worker("worker_d"): "worker_d"}
    killed = victim = None
    seen: dict[str, list[dict]] = {}
    deadline = time.time() + 300
    while killed is None and time.time() < deadline and driver.poll() is None:
        seen = trial_rows(cluster.storage / "late_join")
        for trial in seen.values():
            if trial and trial[-1]["node_id"] in joined and trial[-1]["epoch"] <= 8:  # 8 or more epochs to go
                victim = joined[trial[-1]["node_id"]]
                cluster.kill_worker(victim)  # mid-trial: it has a checkpoint and more epochs to go
                killed = trial[-1]["trial_id"]
                break
        time.sleep(0.2)
    assert killed, (f"no trial was seen running early enough to be cut; driver exit {driver.poll()}, last epochs "
                    f"seen {({t: (r[-1]['epoch'], r[-1]['node_id'] in joined) for t, r in seen.items() if r})}")
    survivor = ({"worker_c", "worker_d"} - {victim}).pop()
    rows = finished(cluster, "late_join", driver, trials=2)
    moved = [joined[r["node_id"]] for r in rows[f"trial_{killed}"]]
    assert moved[0] == victim and moved[-1] == survivor  # resumed on the surviving node from its checkpoint
    assert rows[f"trial_{killed}"][-1]["resumed_from_epoch"] > 0
    fetched = fetches_per_node(rows, joined)
    assert all(sum(mb > 0 for mb in sizes) == 1 for sizes in fetched.values()), fetched


@pytest.mark.slow
def test_a_driver_without_the_token_gets_one_line_saying_what_to_do(cluster, space, tmp_path):
    stranger = tmp_path / "no_token_home"
    stranger.mkdir()
    # a refused token is refused at every one of the driver's attempts to reach the head: 3 of them, not Ray's 20
    for env in ({"HOME": str(stranger)}, {"HOME": str(stranger), "RAY_AUTH_TOKEN": "0" * 32,
                                          "RAY_gcs_server_port_wait_time_s": "3"}):
        done = subprocess.run([sys.executable, "run_search.py", "--space", str(space), "--address", cluster.address,
                               "--storage", str(tmp_path / "s"), "--name", "refused"], cwd=REPO,
                              env={**cluster.env(stranger), **env}, capture_output=True, text=True, timeout=180)
        assert done.returncode == 2, done.stderr[-2000:]
        assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert "token" in done.stderr and "RAY_AUTH_MODE=token" in done.stderr


def ray_job(cluster: Cluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The ``ray job`` CLI against the head's dashboard, with the cluster's token (as on a laptop after
    ``ray get-auth-token``)."""
    command, *rest = args
    return subprocess.run(["ray", "job", command, "--address", cluster.dashboard, *rest],
                          env=cluster.env(cluster.head_home), capture_output=True, text=True, timeout=timeout)


def submit_search(cluster: Cluster, space: Path, name: str, *flags: str) -> str:
    """``ray job submit --no-wait`` of the search; returns the job's id."""
    wait = json.dumps({"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "60"}})  # ray job stop's grace before SIGKILL
    search = (f"cd {REPO} && {sys.executable} run_search.py --address auto --storage {cluster.storage} --space {space} "
              f"--name {name} --stop-within 30 {' '.join(flags)}")
    done = ray_job(cluster, "submit", "--no-wait", "--runtime-env-json", wait, "--", "bash", "-c", search)
    assert done.returncode == 0, done.stdout + done.stderr
    return re.search(r"raysubmit_\w+", done.stdout + done.stderr).group(0)


def job_status(cluster: Cluster, job: str) -> str:
    out = ray_job(cluster, "status", job)
    said = out.stdout + out.stderr  # "Status for job '...': PENDING", "Job '...' was stopped", "... succeeded"
    found = re.findall(r"(?:Status for job '\w+': |Job '\w+' (?:was |is |has )?(?:currently )?)"
                       r"(pending|running|stopped|succeeded|failed)", said, flags=re.IGNORECASE)
    assert found, said
    return found[-1].upper()


def test_a_search_submitted_as_a_ray_job_is_followed_stopped_cleanly_and_resumed(cluster, tmp_path):
    if not cluster.node_names(alive_only=True):
        cluster.add_worker("worker_j")
    trials = 3
    space = write_space(cluster.root / "jobs.yaml", cluster.cache, num_samples=trials, epochs=30, fifo=True,
                        batch_size=4)  # trials of ~15 s: the stop lands mid-search
    exp_dir = cluster.storage / "jobs"
    job = submit_search(cluster, space, "jobs")
    follow = subprocess.Popen(["ray", "job", "logs", "--address", cluster.dashboard, "--follow", job],
                              env=cluster.env(cluster.head_home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    wait_for(lambda: sum(len(r) for r in trial_rows(exp_dir).values()) >= 3, 300, "three epochs")
    stopped = ray_job(cluster, "stop", job, timeout=180)  # SIGTERM to the driver; waits until the job has stopped
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    console = follow.communicate(timeout=120)[0]
    assert "stop asked by SIGTERM" in console and "stopped by SIGTERM; the search is saved" in console, console[-3000:]
    assert "== Status ==" not in console and "Traceback" not in console  # the quiet console, as in a shell
    assert job_status(cluster, job) == "STOPPED"
    before = trial_rows(exp_dir)
    assert sum(bool(r and r[-1]["trial_finished"]) for r in before.values()) < trials  # really mid-search

    again = submit_search(cluster, space, "jobs", "--resume")
    wait_for(lambda: job_status(cluster, again) in ("SUCCEEDED", "FAILED", "STOPPED"), 400, "the resumed job")
    logs = ray_job(cluster, "logs", again).stdout
    assert job_status(cluster, again) == "SUCCEEDED", logs[-3000:]
    assert "best validation MAE" in logs
    assert_search_whole(exp_dir, trials, before)
