"""Connecting to Ray and sharing work over it: the one place that starts or joins a Ray session."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm

from tune_fusion.errors import TuneFusionError

log = logging.getLogger(__name__)


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Start a fresh local Ray (``address`` None) or join a running cluster; True when this call started it.

    A fresh local instance never joins a stale one left by a killed driver (``address="local"``). The dashboard,
    when Ray runs one, binds to 127.0.0.1; Ray's token authentication stays as Ray sets it.
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"configure_logging": True, "logging_level": logging.WARNING, "log_to_driver": True}
    if address is None:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)
    else:
        _check_answers(address)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise TuneFusionError(
                f"cannot join the Ray cluster at address {address}: {err}. Start it with `ray start --head` "
                "(or `ray up cluster.yaml`) and check the address, or give no address for a local run"
            ) from None
    return True


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
