"""The benchmark scripts' plumbing at tiny sizes (their figures come from full runs, see benchmarks/RESULTS.md)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, write_space

pytestmark = pytest.mark.slow


def bench(*args: str, timeout: int = 600) -> str:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_throughput_plumbing(cache_dir, prepared):
    impls = "ours,fused" + (",reference" if importlib.util.find_spec("alignn") else "")
    stdout = bench("benchmarks/throughput.py", "--max-structures", "60", "--batches", "1", "--repeats", "1",
                   "--batch-size", "8", "--cache-dir", str(cache_dir), "--impls", impls)
    summary = json.loads(stdout[: stdout.rindex("}") + 1])
    assert summary["fused"]["params"] > summary["ours"]["params"] > 0
    assert all(r["crystals_per_s"] > 0 and r["peak_mb"] > 0 for r in summary.values())
    assert "step time fused / graph-only" in stdout


def test_data_prep_plumbing():
    stdout = bench("benchmarks/data_prep.py", "--sizes", "12", "--describe", "0")
    rows = json.loads(stdout[: stdout.rindex("]") + 1])
    assert rows[0]["crystals"] == 12 and rows[0]["cold_build_s"] > rows[0]["warm_load_s"] > 0
    assert "dft_3d (55713 crystals)" in stdout


def test_search_efficiency_plumbing(tmp_path, cache_dir, prepared):
    space = write_space(tmp_path / "tiny.yaml", cache_dir, num_samples=2, epochs=2)
    stdout = bench("benchmarks/search_efficiency.py", "--space", str(space), "--num-samples", "2", "--output",
                   str(tmp_path / "curve.png"))
    runs = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert [r["name"] for r in runs] == ["asha_tpe", "fifo_random"]
    assert all(0 < r["slot_utilisation"] <= 1 and r["epochs"] >= 2 for r in runs)
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
