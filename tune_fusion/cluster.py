"""Connecting to Ray and sharing work over it: the one place that starts or joins a Ray session, and the checks of
what its nodes offer (resources for a trial, shared storage)."""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from tune_fusion.errors import ConfigError, TuneFusionError
from tune_fusion.names import is_uri

if TYPE_CHECKING:
    from tune_fusion.space import SearchSpec

__all__ = ["TOKEN_HELP", "check_resources", "check_shared", "connect", "parallel_map"]

log = logging.getLogger(__name__)


def connect(address: str | None = None, num_cpus: int | None = None, verbose: bool = True) -> bool:
    """Start a fresh local Ray (``address`` None) or join a running cluster; True when this call started it.

    A fresh local instance never joins a stale one left by a killed driver (``address="local"``) and runs on the
    loopback address. Joining a cluster uses Ray's token authentication (unless ``RAY_AUTH_MODE`` says otherwise):
    the driver needs the cluster's token, like every node. The dashboard, when Ray runs one, binds to 127.0.0.1.
    ``verbose`` False keeps Ray's warnings and the workers' output off the console (they stay in Ray's logs).
    """
    import ray

    if ray.is_initialized():
        return False
    # quiet: Ray's own warnings and the trials' log lines stay in Ray's log files (verbose brings them back)
    kwargs: dict[str, Any] = {"configure_logging": True, "logging_level": logging.WARNING if verbose else logging.ERROR,
                              "log_to_driver": verbose}
    if not verbose:
        logging.getLogger("ray").setLevel(logging.ERROR)
    if address is None:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", **kwargs)
        return True
    _check_answers(address)
    _use_token_auth()
    with _stderr_captured() as captured:  # Ray's C++ client logs every refused attempt; the user gets one line
        try:
            ray.init(address=address, **kwargs)
        except ray.exceptions.AuthenticationError:
            raise TuneFusionError(f"the Ray cluster at {address} needs its token and this machine has none: "
                                  f"{TOKEN_HELP}") from None
        except (ConnectionError, RuntimeError, ValueError) as err:
            if "InvalidAuthToken" in captured():
                raise TuneFusionError(f"the Ray cluster at {address} refused this driver's token: {TOKEN_HELP}"
                                      ) from None
            raise TuneFusionError(f"cannot join the Ray cluster at address {address}: "
                                  f"{str(err).strip().splitlines()[0]}") from None
    return True


@contextmanager
def _stderr_captured() -> Iterator[Callable[[], str]]:
    """Send this process's standard error (file descriptor 2, where C++ libraries write) to a temporary file for the
    block; yields a function that returns what was written. On success the text is passed on unchanged."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        failed = False

        def text() -> str:
            sink.flush()
            sink.seek(0)
            return sink.read().decode(errors="replace")

        try:
            yield text
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if not failed:
                sys.stderr.write(text())


TOKEN_HELP = ("export RAY_AUTH_MODE=token and the head's token (`ray get-auth-token` on the head prints it) as "
              "RAY_AUTH_TOKEN, or copy it to ~/.ray/auth_token, as on every node")


def _use_token_auth() -> None:
    """Token mode for this driver when it has a token and ``RAY_AUTH_MODE`` is unset (Ray's own rule for a driver;
    a Ray 2.60 cluster has token mode on by default); a cluster started without authentication still admits it."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    try:  # Ray's own switch: sets the variable and refreshes Ray's cached configuration
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # another Ray: it reads RAY_AUTH_MODE itself
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _check_answers(address: str, timeout_s: float = 3.0) -> None:
    """Fail within seconds, not minutes, when nothing listens at ``HOST:PORT`` (Ray itself waits for long)."""
    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as err:
        raise TuneFusionError(
            f"no Ray cluster answers at address {address} ({err}); start one with `ray start --head` "
            "(or `ray up cluster.yaml`) and pass its address, or give no address for a local run"
        ) from None


def parallel_map(fn: Callable[[Any], Any], items: Sequence[Any], desc: str) -> list[Any]:
    """``[fn(x) for x in items]`` as Ray tasks (every node of a cluster helps), with a progress bar.

    ``fn`` must be a module-level function of ``tune_fusion`` so workers can import it. One item runs inline.
    """
    if len(items) <= 1:
        return [fn(item) for item in items]
    import ray

    started = connect()
    try:
        task = ray.remote(fn)
        refs = [task.remote(item) for item in items]
        pending = list(refs)
        with tqdm(total=len(refs), desc=desc, unit="task") as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                bar.update(len(done))
        return ray.get(refs)
    finally:
        if started:
            ray.shutdown()


def _alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def check_resources(spec: SearchSpec, local: bool) -> None:
    """A trial must fit on some node: on a local Ray that is an error (Ray would wait forever), on a cluster a
    warning (an autoscaler may still add such nodes)."""
    need = {"CPU": spec.resources.cpu, "GPU": spec.resources.gpu}
    nodes = [n["Resources"] for n in _alive_nodes()]
    if any(all(node.get(k, 0) >= v for k, v in need.items()) for node in nodes):
        return
    have = ", ".join(f"{n.get('CPU', 0):g} CPU / {n.get('GPU', 0):g} GPU" for n in nodes)
    flags = [spec.origin(key) for key in ("resources.cpu", "resources.gpu") if key in spec.from_flags]
    fix = (f"pass a smaller {' or '.join(flags)}" if flags else
           f"ask for fewer per trial in {spec.source}, e.g. resources: {{cpu: 1, gpu: 0}}")
    message = (f"each trial asks for {need['CPU']:g} CPU ({spec.origin('resources.cpu')}) and {need['GPU']:g} GPU "
               f"({spec.origin('resources.gpu')}) but no node has that ({have}); {fix}")
    if local:
        raise ConfigError(message)
    log.warning("%s; waiting for the autoscaler to add such a node", message)


def check_shared(path: str, what: str) -> None:
    """On a multi-node cluster a local ``path`` must be shared storage: every node must see the same folder."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = _alive_nodes()
    if len(nodes) <= 1 or is_uri(path):
        return
    folder = Path(path).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f".shared-check-{uuid.uuid4().hex}"
    marker.write_text("tune-fusion")
    try:
        probe = ray.remote(num_cpus=0)(os.path.exists)
        seen = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                        .remote(str(marker)) for n in nodes])
    finally:
        marker.unlink(missing_ok=True)
    blind = [n["NodeManagerAddress"] for n, ok in zip(nodes, seen) if not ok]
    if blind:
        raise ConfigError(f"{what} {folder} is not visible from node(s) {', '.join(blind)}: on a multi-node cluster "
                          "put it on shared storage (NFS) or use an s3:// or gs:// URI")
