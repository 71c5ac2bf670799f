"""Exceptions raised where bad input enters; the CLIs print them as one line."""

from __future__ import annotations

import csv
import errno
import os
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["EXIT_DISK_FULL", "EXIT_INTERRUPTED", "ConfigError", "DataError", "DiskFull", "Interrupted",
           "TuneFusionError", "disk_full", "disk_full_cause", "first_line", "is_disk_full", "prefixed", "reading"]


class TuneFusionError(Exception):
    """Base class: the message names the input, the problem and the fix."""


class ConfigError(TuneFusionError, ValueError):
    """An option, YAML key or value is invalid."""


class DataError(TuneFusionError, ValueError):
    """A dataset, cache or checkpoint cannot be used."""


class DiskFull(TuneFusionError):
    """A write the storage refused for want of space (``disk_full`` says where and the fix); exit EXIT_DISK_FULL."""


EXIT_INTERRUPTED = 75  # sysexits.h EX_TEMPFAIL: a run stopped by a signal with its state saved; run it again to go on
EXIT_DISK_FULL = 74  # sysexits.h EX_IOERR: the storage filled up; free space, then run it again (not requeued)


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


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` is a write refused for want of space: no space left on the device, or the quota reached."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_cause(err: BaseException) -> OSError | None:
    """The full-disk error behind ``err`` (itself, or what it was raised from, as Ray wraps what fails inside it)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if is_disk_full(err):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__ or getattr(err, "cause", None)
    return None


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def disk_full(err: OSError, path: str | Path, doing: str) -> str:
    """The one line a write that found the disk full ends with: what was being written where, the file system that
    is full (its mount point, free and total space), and the fix."""
    where = str(path)
    if "://" not in where:
        mount = Path(where).expanduser().absolute()
        while not mount.exists() or not os.path.ismount(mount):
            mount = mount.parent
        try:
            stat = os.statvfs(mount)
            where += (f" (file system {mount}: {_size(stat.f_bavail * stat.f_frsize)} free of "
                      f"{_size(stat.f_blocks * stat.f_frsize)})")
        except OSError:
            where += f" (file system {mount})"
    return (f"the disk is full ({os.strerror(err.errno or errno.ENOSPC)}) {doing} {where}: free space there, then "
            "continue with the same command plus --resume")
