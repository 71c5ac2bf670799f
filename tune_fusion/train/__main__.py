"""``python -m tune_fusion.train``: one training run without Ray, with the original research scripts' flags.

Writes to ``<output_dir>/<target>/``: ``config.json``, ``best_val_model.pt`` (best-by-validation weights under
``model``), ``last_checkpoint.pt`` (to ``--resume``), ``history_train.json`` / ``history_val.json``, and, after
training, ``test_predictions.csv`` and ``metrics.json`` from the best checkpoint evaluated once on the test split.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from tune_fusion.checkpoint import load_checkpoint, save_checkpoint, standalone_best
from tune_fusion.cli import Parser, add_config_options, config_overrides, run
from tune_fusion.config import Config, check_same_run, read_config_file
from tune_fusion.data import prepare
from tune_fusion.data.pool import process_map
from tune_fusion.data.sources import published_layout
from tune_fusion.errors import ConfigError, DataError
from tune_fusion.names import BEST_VAL_MODEL, HISTORY_TRAIN, HISTORY_VAL, LAST_CHECKPOINT, RUN_CONFIG, RUN_METRICS
from tune_fusion.train import fit, test_once
from tune_fusion.units import unit, with_unit

__all__ = ["main", "parse_args"]

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    parser = Parser(prog="python -m tune_fusion.train", description=__doc__)
    parser.add_argument("--config", help="JSON or YAML file of options; command-line flags override it")
    parser.add_argument("--root_dir", "--root-dir", help="with --dataset jarvis: folder of the published layout")
    parser.add_argument("--resume", nargs="?", const="True", default="False",
                        help="continue from <output_dir>/<target>/last_checkpoint.pt")
    add_config_options(parser, ["data", "model", "train"])
    args = parser.parse_args(argv)
    values = read_config_file(args.config) if args.config else {}
    values.update(config_overrides(args))
    cfg = Config.from_dict(values, source=args.config or "command line")
    if args.root_dir or cfg.data.dataset in {"jarvis", "mp"}:
        if not args.root_dir:
            raise ConfigError("--dataset jarvis needs --root_dir DIR holding jarvis/<property>/description.csv")
        cfg = cfg.replace({"dataset": published_layout(args.root_dir, cfg.data.target)})
    return cfg, args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg, args = parse_args(argv)
    out = Path(cfg.train.output_dir).expanduser() / cfg.data.target
    resume = None
    if str(args.resume).lower() in {"true", "1", "yes"}:
        last = out / LAST_CHECKPOINT
        if not last.is_file():
            raise DataError(f"--resume: {last} does not exist; run once without --resume first")
        resume = load_checkpoint(last)
        check_same_run(cfg, resume["config"], last)
    data, _ = prepare(cfg.data, process_map)  # local processes: no Ray
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2))

    def on_epoch(metrics: dict[str, Any], state) -> None:
        ckpt = state.checkpoint()
        save_checkpoint(ckpt, out / LAST_CHECKPOINT)
        if state.best_epoch == state.epoch:
            save_checkpoint(standalone_best(ckpt), out / BEST_VAL_MODEL)

    trained = fit(cfg, data, on_epoch=on_epoch, checkpoint=resume)
    history = trained.history
    (out / HISTORY_TRAIN).write_text(json.dumps([{k: v for k, v in h.items() if not k.startswith("val")}
                                                        for h in history], indent=1))
    (out / HISTORY_VAL).write_text(json.dumps([{"epoch": h["epoch"], "val_mae": h["val_mae"],
                                                       "val_rmse": h["val_rmse"]} for h in history], indent=1))
    metrics = {"target": cfg.data.target, "unit": unit(cfg.data.target), "best_epoch": trained.best_epoch,
               "val_mae": trained.best_val_mae, "stop_reason": trained.stop_reason, "epochs_run": trained.epoch}
    test = test_once(trained.best(), out)  # once, with the best-by-validation weights
    metrics.update({k: v for k, v in test.items() if k.startswith("test_")})
    (out / RUN_METRICS).write_text(json.dumps(metrics, indent=2))
    log.info("best validation MAE %s at epoch %d; test MAE (evaluated once) %s; outputs in %s",
             with_unit(trained.best_val_mae, cfg.data.target), trained.best_epoch,
             with_unit(metrics.get("test_mae"), cfg.data.target), out)
    return metrics


if __name__ == "__main__":
    run(main)
