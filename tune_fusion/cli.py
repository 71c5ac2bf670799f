"""Command-line plumbing shared by every entry point: flags derived from the config, errors as one line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any

from tune_fusion.config import FIELDS, KEY_ALIASES, option_help, option_type
from tune_fusion.errors import TuneFusionError

__all__ = ["add_config_options", "config_overrides", "run"]


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
    """Run ``main``; a TuneFusionError becomes one line on stderr and exit status 2, not a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main(argv)
    except TuneFusionError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
