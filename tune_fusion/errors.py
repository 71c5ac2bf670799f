"""Exceptions raised where bad input enters; the CLIs print them as one line."""

from __future__ import annotations

import csv
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["EXIT_INTERRUPTED", "ConfigError", "DataError", "Interrupted", "TuneFusionError", "first_line", "prefixed",
           "reading"]


class TuneFusionError(Exception):
    """Base class: the message names the input, the problem and the fix."""


class ConfigError(TuneFusionError, ValueError):
    """An option, YAML key or value is invalid."""


class DataError(TuneFusionError, ValueError):
    """A dataset, cache or checkpoint cannot be used."""


EXIT_INTERRUPTED = 75  # sysexits.h EX_TEMPFAIL: a run stopped by a signal with its state saved; run it again to go on


class Interrupted(BaseException):  # noqa: N818  (like KeyboardInterrupt: no ``except Exception`` swallows it)
    """A stop signal (SIGUSR1, SIGTERM) ended a command cleanly; the message says how to go on."""


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0][:160] if text else type(err).__name__)


@contextmanager
def reading(path: str | Path, what: str, fix: str, error: type[TuneFusionError] | None = None) -> Iterator[None]:
    """Around the decoding of one file: what a file that is not what its name says raises (cut short, corrupt
    bytes, not UTF-8, not the format) becomes one line naming ``what`` the file is, the file, what is wrong with
    it and the ``fix``; a DataError (or ``error``). Wrap the reading only, not the logic that follows it."""
    kind = error or DataError
    try:
        yield
    except TuneFusionError:
        raise
    except UnicodeDecodeError as err:
        raise kind(f"{what} {path} is not UTF-8 text (byte {err.start}: {err.reason}); {fix}") from None
    except (EOFError, zlib.error, zipfile.BadZipFile) as err:
        raise kind(f"{what} {path} is cut short or corrupt ({first_line(err)}); {fix}") from None
    except (OSError, ValueError, csv.Error, KeyError, TypeError, AttributeError) as err:
        raise kind(f"{what} {path} cannot be read ({type(err).__name__}: {first_line(err)}); {fix}") from None


@contextmanager
def prefixed(where: str) -> Iterator[None]:
    """Re-raise a ConfigError from the block with ``where`` in front, so the message names its input."""
    try:
        yield
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
