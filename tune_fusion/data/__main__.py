"""``python -m tune_fusion.data prepare --dataset PATH --target NAME [--cache-dir DIR] [...]``

Prepares the cache (or reports the existing one) and prints what was kept, dropped and skipped, the split
sizes, the cache's path and size, and the time taken.
"""

from __future__ import annotations

import json
import time

from tune_fusion.cli import Parser, add_config_options, config_overrides, run
from tune_fusion.config import Config

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="python -m tune_fusion.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    prepare_parser = commands.add_parser("prepare", help="build (or report) the prepared cache")
    add_config_options(prepare_parser, ["data"])
    args = parser.parse_args(argv)

    from tune_fusion.data import prepare, summary
    from tune_fusion.data.pool import process_map

    cfg = Config.from_dict(config_overrides(args), source="command line")
    start = time.perf_counter()
    data, built = prepare(cfg.data, process_map)  # local processes: no Ray
    report = {"status": "built" if built else "already prepared", "seconds": round(time.perf_counter() - start, 2),
              **summary(data)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    run(main)
