"""Data preparation: cold cache build vs warm open, per stage, for growing dataset sizes.

    python benchmarks/data_prep.py                  # 100, 400 and 800 crystals; about 5 minutes on 2 cores
    python benchmarks/data_prep.py --sizes 100,800 --describe 4

The bundled descriptions are used (as in a user's first run); ``--describe N`` also times robocrystallographer on
N structures, the cost of a dataset that ships no text. Each size is built in a fresh temporary cache directory,
then loaded again the way every trial does; the last lines extrapolate to the 55,713 crystals of dft_3d.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import tempfile
import time

DFT_3D = 55_713


def describe_seconds(n: int) -> float:
    """Median robocrystallographer seconds per structure over ``n`` sample structures (one process)."""
    from jarvis.core.atoms import Atoms

    from tune_fusion.config import SAMPLE_DATASET
    from tune_fusion.data.text import describe

    with gzip.open(SAMPLE_DATASET, "rt") as handle:
        records = json.load(handle)[:n]
    describe(records[0]["atoms"])  # imports robocrys/pymatgen once
    times = []
    for record in records:
        start = time.perf_counter()
        describe(Atoms.from_dict(record["atoms"]).to_dict())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,400,800", help="numbers of crystals to prepare")
    parser.add_argument("--describe", type=int, default=4, help="structures to describe with robocrys (0 = skip)")
    args = parser.parse_args()

    import resource

    from tune_fusion.config import DataConfig
    from tune_fusion.data import load, prepare, summary

    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as cache_dir:
            start = time.perf_counter()
            data, built = prepare(DataConfig(cache_dir=cache_dir, max_structures=size))
            cold = time.perf_counter() - start
            start = time.perf_counter()
            load(data.path)
            warm = time.perf_counter() - start
            size_mb = summary(data)["size_mb"]  # the view and the graph and embedding shards it reads
            rows.append({"crystals": len(data.ids), "cold_build_s": round(cold, 2), "warm_load_s": round(warm, 3),
                         "cold/warm": round(cold / warm, 1), "crystals_per_s_cold": round(len(data.ids) / cold, 1),
                         **{k: round(v, 2) for k, v in data.meta["timings"].items()}, "cache_mb": round(size_mb, 1)})
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(rows, indent=2))
    last = rows[-1]
    per_crystal_load = last["warm_load_s"] / last["crystals"]
    per_crystal_mb = last["cache_mb"] / last["crystals"]
    print(f"warm load is {last['cold/warm']}x cheaper than a cold build at {last['crystals']} crystals")
    print(f"dft_3d ({DFT_3D} crystals), extrapolated linearly: cache ~{per_crystal_mb * DFT_3D / 1e3:.1f} GB on "
          f"disk (memory-mapped: shared by every trial on a node), cold build with the descriptions given "
          f"~{last['cold_build_s'] / last['crystals'] * DFT_3D / 60:.0f} min on this machine, of which embedding "
          f"~{last['embedding_s'] / last['crystals'] * DFT_3D / 60:.0f} min; opening costs milliseconds at any size "
          f"(measured at 55,000 crystals by benchmarks/scale.py); {per_crystal_load * 1e3:.3f} ms per crystal here")
    if args.describe:
        seconds = describe_seconds(args.describe)
        print(f"robocrystallographer: {seconds:.2f} s per structure (median of {args.describe}); dft_3d would need "
              f"~{seconds * DFT_3D / 3600:.0f} CPU-hours, spread over every core of the Ray cluster")
    print(f"peak memory of this process: {rss:.0f} MB")


if __name__ == "__main__":
    main()
