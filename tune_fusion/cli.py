"""Command-line plumbing shared by every entry point: flags derived from the config, errors as one line."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Iterable
from typing import Any

from tune_fusion.config import FIELDS, KEY_ALIASES, option_help, option_type
from tune_fusion.errors import (
    EXIT_DISK_FULL,
    EXIT_INTERRUPTED,
    DiskFull,
    Interrupted,
    TuneFusionError,
    disk_full,
    is_disk_full,
)

__all__ = ["STOP_SIGNALS", "add_config_options", "config_overrides", "ignore_stop_signals", "run", "stop_early_on_signals"]


def add_config_options(parser: argparse.ArgumentParser, sections: Iterable[str]) -> None:
    """One flag per option of ``sections`` (``--batch_size`` and ``--batch-size`` both work; booleans take
    ``True``/``False`` like the original scripts, or nothing for True). Defaults stay in the config."""
    aliases = {name: alias for alias, name in KEY_ALIASES.items()}
    group = parser.add_argument_group("options (see tune_fusion/config.py)")
    for name, (section, _field, _type) in FIELDS.items():
        if section not in sections:
            continue
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        flags += [f"--{aliases[name]}"] if name in aliases else []
        extra: dict[str, Any] = {"nargs": "?", "const": "True"} if option_type(name) is bool else {}
        group.add_argument(*flags, dest=name, default=None, metavar=option_type(name).__name__.upper(),
                           help=option_help(name), **extra)


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line (raw strings; the config coerces and validates them)."""
    return {name: value for name, value in vars(args).items() if name in FIELDS and value is not None}


def run(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """Run ``main``; a TuneFusionError becomes one line on stderr and exit status 2, not a traceback; a clean stop
    by a signal (``Interrupted``) one line and EXIT_INTERRUPTED (75); a full disk one line naming it and
    EXIT_DISK_FULL (74)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main(argv)
    except DiskFull as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_DISK_FULL)
    except TuneFusionError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if not is_disk_full(err):
            raise
        print(f"error: {disk_full(err, err.filename or '.', 'while writing')}", file=sys.stderr)
        sys.exit(EXIT_DISK_FULL)
    except Interrupted as stop:
        print(f"interrupted: {stop}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)  # SLURM's time-limit warning; preemption, scancel, ray job stop


def stop_early_on_signals(what: str) -> None:
    """Until ``what`` starts, SIGUSR1 and SIGTERM end the command with ``Interrupted`` (exit 75: nothing to save
    yet, so running it again loses nothing)."""

    def stop(signum: int, frame: Any) -> None:
        raise Interrupted(f"stopped by {signal.Signals(signum).name} before {what} started; nothing to save: run the "
                          "same command again")

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)


def ignore_stop_signals() -> None:
    """After the work has ended, a late SIGUSR1 or SIGTERM has nothing left to stop."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
