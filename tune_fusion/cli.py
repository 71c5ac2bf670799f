"""Command-line plumbing shared by every entry point: flags derived from the config, errors as one line."""

from __future__ import annotations

import argparse
import difflib
import logging
import signal
import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from tune_fusion.config import FIELDS, KEY_ALIASES, option_help, option_type
from tune_fusion.errors import (
    EXIT_DISK_FULL,
    EXIT_INTERRUPTED,
    ConfigError,
    DiskFull,
    Interrupted,
    TuneFusionError,
    disk_full,
    is_disk_full,
)

__all__ = ["STOP_SIGNALS", "Parser", "add_config_options", "config_overrides", "console_warnings_only",
           "ignore_stop_signals", "run", "stop_early_on_signals"]


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are a ``ConfigError`` (one line under ``run``, no usage dump) and whose unknown flags get the nearest known
    one: ``error: unrecognized argument --num-sample; did you mean --num-samples?``. Abbreviations are off."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(allow_abbrev=False, **kwargs)

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            flags = [u for u in unknown if u.startswith("-")]
            if not flags:
                self.error(f"unexpected argument{'s' if len(unknown) > 1 else ''} {' '.join(unknown)}")
            name = flags[0].split("=", 1)[0]
            close = difflib.get_close_matches(name, self._flags(), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else f"; {self.prog} --help lists the flags"
            self.error(f"unrecognized argument {name}{hint}")
        return parsed

    def _flags(self) -> list[str]:
        """Every flag of this parser and of its subcommands' parsers."""
        flags = list(self._option_string_actions)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                flags += [f for sub in action.choices.values() for f in sub._option_string_actions]
        return flags

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message}")  # run() prints it as one line, exit status 2


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
                           help=option_help(name).replace("%", "%%"), **extra)  # help is a %-format


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line (raw strings; the config coerces and validates them)."""
    return {name: value for name, value in vars(args).items() if name in FIELDS and value is not None}


def run(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """Run ``main``; a TuneFusionError becomes one line on stderr and exit status 2, not a traceback; a clean stop
    by a signal (``Interrupted``) one line and EXIT_INTERRUPTED (75); a full disk one line naming it and
    EXIT_DISK_FULL (74)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_own_info_only)
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


def _own_info_only(record: logging.LogRecord) -> bool:
    """The console's INFO lines are this library's; other libraries' (sentence-transformers loading its model,
    matplotlib building its font cache) show from WARNING up."""
    return record.levelno >= logging.WARNING or record.name.startswith("tune_fusion")


def console_warnings_only() -> None:
    """The quiet console: log lines below WARNING (the library's INFO, and other libraries' such as
    sentence-transformers' or matplotlib's) leave the terminal; a log file may still take them
    (``tune_fusion.console.log_to_file``)."""
    for handler in logging.getLogger().handlers:
        if getattr(handler, "stream", None) in (sys.stderr, sys.stdout) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(max(handler.level, logging.WARNING))


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
