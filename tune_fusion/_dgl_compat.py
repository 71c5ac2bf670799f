"""Make ``import dgl`` work where the installed DGL wheel has no GraphBolt library for the installed torch.

DGL 2.1.0 (the newest Linux wheel on PyPI) ships GraphBolt only for torch 2.0-2.2 and fails at import on newer
torch. GraphBolt (DGL's sampling layer) is not used here: DGLGraph, message passing, batching, line graphs and
readouts all work without it. Registering an empty ``dgl.graphbolt`` module before the first ``import dgl``
lets those load. With a DGL build that matches torch (a CUDA cluster), nothing is changed.

This module is imported by ``tune_fusion/__init__.py``, so the step is in effect in every process that imports
the package, Ray workers included.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import sys
import types
from pathlib import Path

__all__ = ["graphbolt_available", "install_graphbolt_stub"]

log = logging.getLogger(__name__)


def graphbolt_available() -> bool:
    """True when the installed DGL has a GraphBolt library built for the installed torch."""
    spec = importlib.util.find_spec("dgl")
    if spec is None or spec.origin is None:
        return True  # no DGL: nothing to patch (the import error will say so where dgl is used)
    version = _torch_version().split("+", maxsplit=1)[0]
    folder = Path(spec.origin).parent / "graphbolt"
    return any(folder.glob(f"*graphbolt_pytorch_{version}.*"))


def _torch_version() -> str:
    """The installed torch's version, read from its package metadata: importing the package imports no torch (the
    experiment reader and the analysis tables need none)."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:  # a torch without metadata (built in place): ask it
        import torch

        return torch.__version__


def install_graphbolt_stub() -> bool:
    """Register an empty ``dgl.graphbolt`` when needed; returns True when the stub is in place."""
    if "dgl.graphbolt" in sys.modules:
        return getattr(sys.modules["dgl.graphbolt"], "__tune_fusion_stub__", False)
    if "dgl" in sys.modules or graphbolt_available():
        return False
    stub = types.ModuleType("dgl.graphbolt")
    stub.__doc__ = "Empty stand-in installed by tune_fusion: this DGL wheel has no GraphBolt for this torch."
    stub.__tune_fusion_stub__ = True
    sys.modules["dgl.graphbolt"] = stub
    log.debug("installed the dgl.graphbolt stub (no GraphBolt library for this torch)")
    return True
