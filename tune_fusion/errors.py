"""Exceptions raised where bad input enters; the CLIs print them as one line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["EXIT_INTERRUPTED", "ConfigError", "DataError", "Interrupted", "TuneFusionError", "prefixed"]


class TuneFusionError(Exception):
    """Base class: the message names the input, the problem and the fix."""


class ConfigError(TuneFusionError, ValueError):
    """An option, YAML key or value is invalid."""


class DataError(TuneFusionError, ValueError):
    """A dataset, cache or checkpoint cannot be used."""


EXIT_INTERRUPTED = 75  # sysexits.h EX_TEMPFAIL: a run stopped by a signal with its state saved; run it again to go on


class Interrupted(BaseException):  # noqa: N818  (like KeyboardInterrupt: no ``except Exception`` swallows it)
    """A stop signal (SIGUSR1, SIGTERM) ended a command cleanly; the message says how to go on."""


@contextmanager
def prefixed(where: str) -> Iterator[None]:
    """Re-raise a ConfigError from the block with ``where`` in front, so the message names its input."""
    try:
        yield
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
