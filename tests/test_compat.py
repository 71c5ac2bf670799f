"""The DGL compatibility step: in effect in every process that imports tune_fusion, and only where needed."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO


def test_dgl_imports_after_tune_fusion_and_the_stub_only_when_graphbolt_is_missing():
    code = ("import sys, tune_fusion, dgl, torch; from tune_fusion._dgl_compat import graphbolt_available; "
            "stub = getattr(sys.modules['dgl.graphbolt'], '__tune_fusion_stub__', False); "
            "g = dgl.graph(([0, 1], [1, 0])); g.ndata['x'] = torch.ones(2, 1); "
            "g.update_all(dgl.function.copy_u('x', 'm'), dgl.function.sum('m', 'y')); "
            "print(stub, graphbolt_available(), float(g.ndata['y'].sum()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    stub, available, total = out.stdout.split()
    assert stub == str(available == "False")  # stubbed exactly when this DGL has no GraphBolt for this torch
    assert float(total) == 2.0  # message passing works either way
