"""tune-fusion: hyperparameter search for graph + text fusion models of crystal properties.

Importing the package makes DGL importable on any torch (see ``_dgl_compat``); everything else is imported
from its own module (``tune_fusion.config``, ``tune_fusion.data``, ``tune_fusion.train``, ...).
"""

import os

from tune_fusion._dgl_compat import install_graphbolt_stub

os.environ.setdefault("DGLBACKEND", "pytorch")  # DGL's only backend here; unset, DGL prints a notice in every process
install_graphbolt_stub()

__version__ = "0.1.0"
__all__ = ["__version__"]
