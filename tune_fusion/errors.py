"""Exceptions raised where bad input enters; the CLIs print them as one line."""

from __future__ import annotations


class TuneFusionError(Exception):
    """Base class: the message names the input, the problem and the fix."""


class ConfigError(TuneFusionError, ValueError):
    """An option, YAML key or value is invalid."""


class DataError(TuneFusionError, ValueError):
    """A dataset, cache or checkpoint cannot be used."""
