"""The benchmark scripts' plumbing at tiny sizes (their figures come from full runs, see benchmarks/RESULTS.md)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys

import pytest

from tests.helpers import REPO


def bench(*args: str, timeout: int = 600) -> str:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
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


def test_search_efficiency_replay_plumbing(tmp_path):
    """The replay over a recorded table (here a synthetic one: each configuration's curve depends on its learning
    rate) runs every arm with its own seeds and writes the keys RESULTS.md quotes."""
    spec_module = importlib.import_module("benchmarks.search_efficiency")
    from tune_fusion.space import parse_spec

    spec = parse_spec(spec_module.bench_space("formation_energy_peratom", 60, 3, 4, 2), "bench.yaml")
    for target in spec_module.TARGETS:
        table = {}
        for config in spec_module.configurations(spec):
            floor = 0.2 + abs(config["learning_rate"] - 0.002) * 50 + 0.01 * config["use_cross_modal"]
            table[spec_module.key_of(config)] = {"params": config, "val_mae": [floor + 0.3, floor + 0.1, floor],
                                                 "seconds": [1.0, 1.0, 1.0]}
        (tmp_path / f"search_table_{target}.json").write_text(json.dumps(
            {"target": target, "epochs": 3, "max_structures": 60, "configurations": table}))
    assert len(table) == 4 * (1 + 3 * 2) * 2  # every configuration of the discrete space
    out = tmp_path / "result.json"
    bench("benchmarks/search_efficiency.py", "replay", "--tables", str(tmp_path), "--seeds", "3", "--num-samples", "8",
          "--output", str(out))
    result = json.loads(out.read_text())
    assert set(result["arms"]) == {"random_fifo", "random_asha", "tpe_asha", "tpe_asha_warm"}
    assert all(len(arm["epochs_to_target"]) == 3 for arm in result["arms"].values())
    assert result["arms"]["random_fifo"]["epochs_budget_used"] == [24, 24, 24]  # 8 trials x 3 epochs, no stopping
    assert result["tpe_asha_over_random_fifo"] > 0


@pytest.mark.slow
def test_gpu_bench_dry_run_writes_every_figure_of_the_gpu_check(cache_dir, prepared, tmp_path):
    """The GPU check's measurements at the smallest size, on the CPU: every figure issue 21 names has its key (model x
    batch x precision x mode with peak memory and share of the bf16 peak, the packing curve, batch assembly with 1
    and 4 workers); what the CPU cannot measure is recorded as skipped with its reason."""
    out = tmp_path / "gpu_check.json"
    stdout = bench("benchmarks/gpu_bench.py", "--dry-run", "--cache-dir", str(cache_dir), "--max-structures", "60",
                   "--output", str(out))
    doc = json.loads(out.read_text())
    assert doc["dry_run"] and doc["params"]["fused"] > doc["params"]["graph_only"] > 0
    for model in ("graph_only", "fused"):
        for batch in ("batch_64", "batch_256"):
            assert doc["flops_per_step"][model][batch] > 0
            cells = doc["throughput"][model][batch]
            for precision in ("fp32", "bf16"):
                eager = cells[precision]["eager"]
                assert eager["status"] == "measured", eager
                assert eager["crystals_per_s"] > 0 and eager["peak_memory_mb"] > 0 and eager["step_s"] > 0
                assert 0 < eager["bf16_peak_share"] < 1 and eager["tflop_per_s"] > 0
            assert cells["tf32"]["eager"] == {"status": "skipped", "reason": "TF32 is a CUDA matrix mode; this device is a CPU"}
            for precision in ("fp32", "tf32", "bf16"):
                assert cells[precision]["compile"]["status"] == "skipped" and cells[precision]["compile"]["reason"]
    for n in (1, 2, 4, 8):
        row = doc["packing"][str(n)]
        assert row["status"] == "measured", row
        assert len(row["per_process_crystals_per_s"]) == len(row["peak_memory_mb"]) == n
        assert row["total_crystals_per_s"] == pytest.approx(sum(row["per_process_crystals_per_s"]))
        assert row["slowest_vs_alone"] > 0
    for batch in ("batch_64", "batch_256"):
        for workers in ("workers_1", "workers_4"):
            assert doc["batch_assembly"][batch][workers]["s_per_batch"] > 0
    assert "packing 8: total" in stdout and "batch assembly batch_256" in stdout
