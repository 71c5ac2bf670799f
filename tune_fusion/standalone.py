"""``python -m tune_fusion.train``: one training run without Ray, with the original research scripts' flags.

Writes to ``<output_dir>/<target>/``: ``config.json``, ``best_val_model.pt`` (best-by-validation weights under
``model``), ``last_checkpoint.pt`` (to ``--resume``), ``history_train.json`` / ``history_val.json``, and, after
training, ``predictions_test.csv`` and ``metrics.json`` from the best checkpoint evaluated once on the test split.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path
from typing import Any

import torch
import yaml

from tune_fusion.cli import add_config_options, config_overrides
from tune_fusion.config import TARGET_ALIASES, Config
from tune_fusion.data import prepare
from tune_fusion.errors import ConfigError, DataError
from tune_fusion.train import evaluate, fit, save_checkpoint

log = logging.getLogger(__name__)


def read_config_file(path: str) -> dict[str, Any]:
    """Options from a JSON or YAML file of flat keys (like the original ``config_improved_fusion.json``)."""
    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle)  # YAML is a superset of JSON
    except OSError as err:
        raise ConfigError(f"--config {path}: cannot read it ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: not valid JSON/YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a mapping of option: value")
    return values


def published_layout(root_dir: str, target: str) -> str:
    """``ROOT/jarvis/<property>/description.csv`` of the published text+graph datasets (either name form)."""
    names = [target] + [short for short, full in TARGET_ALIASES.items() if full == target]
    for name in names:
        candidate = Path(root_dir).expanduser() / "jarvis" / name / "description.csv"
        if candidate.is_file():
            return str(candidate)
    raise DataError(f"--dataset jarvis --root_dir {root_dir}: no jarvis/<property>/description.csv for "
                    f"{' or '.join(names)} under {root_dir}")


def parse_args(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m tune_fusion.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
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


# Options that may differ between a run and its resumption: where and how it runs, not what it computes.
RUN_ONLY_OPTIONS = {"output_dir", "device", "num_workers", "cache_dir", "dataset"}


def check_same_run(cfg: Config, stored: dict[str, Any], path: Path) -> None:
    """Resuming continues the same run: every option that shapes it (epochs included) must match."""
    differ = sorted(k for k, v in cfg.to_dict().items() if k not in RUN_ONLY_OPTIONS and stored.get(k) != v)
    if differ:
        raise ConfigError(f"--resume: {path} was made with other settings for {', '.join(differ)} "
                          f"({', '.join(f'{k}={stored.get(k)!r}' for k in differ)}); pass the same values, "
                          "or start a new run in another --output_dir")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg, args = parse_args(argv)
    out = Path(cfg.train.output_dir).expanduser() / cfg.data.target
    resume = None
    if str(args.resume).lower() in {"true", "1", "yes"}:
        last = out / "last_checkpoint.pt"
        if not last.is_file():
            raise DataError(f"--resume: {last} does not exist; run once without --resume first")
        resume = torch.load(last, map_location="cpu", weights_only=True)
        check_same_run(cfg, resume["config"], last)
    data, _ = prepare(cfg.data)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    def on_epoch(metrics: dict[str, Any], run) -> None:
        ckpt = run.checkpoint()
        save_checkpoint(ckpt, out / "last_checkpoint.pt")
        if run.best_epoch == run.epoch:
            save_checkpoint({**ckpt, "model": ckpt["best_model"]}, out / "best_val_model.pt")

    run = fit(cfg, data, on_epoch=on_epoch, checkpoint=resume)
    history = run.history
    (out / "history_train.json").write_text(json.dumps([{k: v for k, v in h.items() if not k.startswith("val")}
                                                        for h in history], indent=1))
    (out / "history_val.json").write_text(json.dumps([{"epoch": h["epoch"], "val_mae": h["val_mae"],
                                                       "val_rmse": h["val_rmse"]} for h in history], indent=1))
    metrics = {"best_epoch": run.best_epoch, "val_mae": run.best_val_mae, "stop_reason": run.stop_reason,
               "epochs_run": run.epoch}
    if len(data.split("test")):
        test = evaluate(run, "test")  # once, with the best-by-validation weights
        write_predictions(out / "predictions_test.csv", [data.ids[i] for i in test["index"]], test["target"],
                          test["prediction"])
        metrics.update(test_mae=test["mae"], test_rmse=test["rmse"], test_crystals=test["crystals"])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("best val_mae %.4f at epoch %d; test (evaluated once) %s; outputs in %s", run.best_val_mae,
             run.best_epoch, metrics.get("test_mae"), out)
    return metrics


def write_predictions(path: Path, ids: list[str], targets, predictions) -> None:
    """CSV ``jid,target,prediction`` in the target's units, unclamped."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["jid", "target", "prediction"])
        writer.writerows(zip(ids, (float(t) for t in targets), (float(p) for p in predictions)))
