"""The training subcommands of `streamer`: train, export, compare-cells, train-default.

This module is imported whenever `streamer` builds its parser, on installs with or
without torch, so it imports nothing heavy at module level: each handler imports what
it needs, and says which extra to install when that is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from streamer.model import CELLS, DEFAULT_MODEL

TRAIN_EXTRA = ("torch", "onnx", "onnxscript", "matplotlib", "tqdm", "safetensors")
MISSING_EXTRA = "training needs the train extra: pip install 'sensor-streamer[train]'"

Handler = Callable[[argparse.Namespace], int]


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where there is none to show or the help says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def needs_train_extra(handler: Handler) -> Handler:
    """Run `handler` only when the train extra is installed; otherwise say how to get it, exit 2."""

    def run(args: argparse.Namespace) -> int:
        if any(importlib.util.find_spec(name) is None for name in TRAIN_EXTRA):
            print(MISSING_EXTRA, file=sys.stderr)
            return 2
        return handler(args)

    run.__doc__ = handler.__doc__
    return run


def command_line() -> str:
    """This invocation as a `streamer ...` command, recorded in what it produces."""
    return shlex.join(["streamer", *sys.argv[1:]])


@needs_train_extra
def cmd_train(args: argparse.Namespace) -> int:
    from .data import load_many, synthetic, univariate
    from .train import TrainConfig, train

    series = []
    if args.synthetic:
        series += synthetic(args.synthetic, args.length, args.seed)
    if args.sources:
        loaded, _ = load_many(args.sources, columns=args.columns, delimiter=args.sep)
        series += univariate(loaded) if args.univariate else loaded
    if not series:
        print("streamer train: give CSV files/folders or --synthetic N", file=sys.stderr)
        return 2
    cfg = TrainConfig(
        cell=args.cell,
        hidden_size=args.hidden,
        layers=args.layers,
        epochs=args.epochs,
        batch_size=args.batch_size,
        chunk=args.chunk,
        lr=args.lr,
        patience=args.patience,
        seed=args.seed,
        threads=args.threads,
        warmup=args.warmup,
        progress=not args.quiet,
    )
    result = train(series, cfg, run_dir=args.out, extra={"training_command": command_line()})
    print(
        f"{len(series)} series; best epoch {result.best_epoch}/{len(result.history)}:"
        f" val NLL {result.val_nll:.4f} (predict 0: {result.baseline_nll:.4f});"
        f" {result.n_params} parameters, {result.seconds:.0f} s"
    )
    print(f"run folder {result.run_dir}, model {result.onnx_path}")
    return 0


@needs_train_extra
def cmd_export(args: argparse.Namespace) -> int:
    import json

    from streamer.model import ModelInfo

    from .export import check_parity, export_onnx
    from .model import load_checkpoint

    config_path = args.checkpoint.parent / "config.json"
    if not config_path.is_file():
        print(
            f"streamer export: {config_path} not found (written by `streamer train`)",
            file=sys.stderr,
        )
        return 2
    info = ModelInfo.from_metadata(json.loads(config_path.read_text())["model_info"])
    model = load_checkpoint(args.checkpoint)
    path = export_onnx(model, info, args.out)
    parity = check_parity(model, path)
    print(
        f"wrote {path}; ONNX vs torch over {parity.steps} steps: max error {max(parity.max_abs_err.values()):.2e}"
    )
    return 0


@needs_train_extra
def cmd_compare_cells(args: argparse.Namespace) -> int:
    from .report import CompareConfig, compare_cells

    cfg = CompareConfig(
        n_series=args.series,
        length=args.length,
        epochs=args.epochs,
        hidden_size=args.hidden,
        seed=args.seed,
        lags=tuple(args.lags),
        lag_updates=args.lag_updates,
        progress=not args.quiet,
    )
    reports = compare_cells(cfg, args.out, command_line())
    for r in reports:
        print(f"{r.cell}: val NLL {r.result.val_nll:.4f}, longest lag learned {r.max_lag}")
    print(f"wrote {args.out / 'README.md'}")
    return 0


@needs_train_extra
def cmd_train_default(args: argparse.Namespace) -> int:
    from .default import train_default

    _, card = train_default(out=args.out, run_dir=args.run_dir)
    m = card["metrics"]
    print(
        f"wrote {args.out} (sha256 {card['sha256'][:12]}...): val NLL {m['val_nll']:.4f},"
        f" held-out NLL {m['heldout_nll']:.4f} (predict 0: {m['heldout_predict_zero_nll']:.4f}),"
        f" {m['train_seconds'] / 60:.1f} min"
    )
    return 0


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a step model on CSV files or the synthetic fleet",
        description="Train a step model (rnn/lstm/gru) to predict each stream's next reading, "
        "with inputs normalised by the daemon's own normaliser. Writes a run folder: "
        "config.json, checkpoint.safetensors, metrics.json/csv, loss.png and model.onnx "
        "(checked step by step against torch). Point the daemon at model.onnx.",
        epilog="CSV files: a timestamp column (timestamp/time/ts/date/datetime, else the first; "
        "ISO 8601 or epoch s/ms), numeric value columns, an optional label column "
        "(label/anomaly/is_anomaly). Rows with missing or bad cells or a timestamp not later "
        "than the previous one are dropped and counted per file. Example: "
        "streamer train data/ --univariate --cell gru --hidden 64 --out runs/mine",
        formatter_class=DefaultsHelp,
    )
    p.add_argument("sources", nargs="*", help="CSV files, folders (searched recursively) or globs")
    p.add_argument(
        "--synthetic",
        type=int,
        metavar="N",
        default=0,
        help="add N synthetic sensors (streamer.sim)",
    )
    p.add_argument("--length", type=int, default=4000, help="readings per synthetic sensor")
    p.add_argument(
        "--columns",
        type=lambda s: s.split(","),
        help="value columns, comma-separated (default: every numeric column)",
    )
    p.add_argument("--sep", help="CSV separator (default: sniffed among , ; tab)")
    p.add_argument(
        "--univariate",
        action="store_true",
        help="train on each channel as its own stream (how the daemon sees one topic per channel)",
    )
    p.add_argument("--cell", choices=CELLS, default="gru", help="recurrent cell")
    p.add_argument("--hidden", type=int, default=64, help="hidden size per layer")
    p.add_argument("--layers", type=int, default=1, help="stacked recurrent layers")
    p.add_argument(
        "--epochs", type=int, default=30, help="most epochs (early stopping may end sooner)"
    )
    p.add_argument("--batch-size", type=int, default=32, help="series per batch")
    p.add_argument("--chunk", type=int, default=256, help="truncated-BPTT length in readings")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument(
        "--patience", type=int, default=4, help="epochs without validation gain before stopping"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of weights, batch order and synthetic data"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument(
        "--warmup",
        type=int,
        default=100,
        help="readings per stream before it may alert (stored in the model)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the training subcommands to the `streamer` parser."""
    _add_train_parser(sub)

    p = sub.add_parser(
        "export",
        help="export a training checkpoint to a step-model .onnx file",
        description="Export CHECKPOINT (checkpoint.safetensors of a run folder; its config.json "
        "supplies the feature names and normaliser) as a step-model ONNX file, then check the "
        "file against the torch model step by step.",
        formatter_class=DefaultsHelp,
    )
    p.add_argument("checkpoint", type=Path, help="runs/NAME/checkpoint.safetensors")
    p.add_argument("--out", type=Path, default=Path("model.onnx"), help="ONNX file to write")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "compare-cells",
        help="train rnn, lstm and gru on one synthetic corpus and write a comparison report",
        description="Train each cell on the same synthetic corpus and measure validation NLL, "
        "parameters, time per epoch, ONNX step latency (batch 1 and 256) and the longest "
        "lag it can learn; writes OUT/README.md and PNGs. The defaults are the committed report's "
        "settings (under 10 minutes on 2 cores).",
        formatter_class=DefaultsHelp,
    )
    _add_compare_flags(p)
    p.set_defaults(func=cmd_compare_cells)

    p = sub.add_parser(
        "train-default",
        help="rebuild the shipped default model from its recipe",
        description="Rebuild streamer/models/default.onnx and its card default.json from the "
        "recipe in training/default.py: a small GRU trained only on the synthetic fleet.",
        formatter_class=DefaultsHelp,
    )
    p.add_argument("--out", type=Path, default=DEFAULT_MODEL, help="model file to write")
    p.add_argument("--run-dir", type=Path, default=Path("runs/default"), help="run folder")
    p.set_defaults(func=cmd_train_default)


def _add_compare_flags(p: argparse.ArgumentParser) -> None:
    # Defaults mirror training.report.CompareConfig, which cannot be imported here without torch.
    p.add_argument("--out", type=Path, default=Path("reports/cells"), help="report folder")
    p.add_argument("--series", type=int, default=128, help="synthetic sensors in the corpus")
    p.add_argument("--length", type=int, default=3000, help="readings per sensor")
    p.add_argument("--epochs", type=int, default=25, help="most epochs per cell")
    p.add_argument("--hidden", type=int, default=64, help="hidden size of every cell")
    p.add_argument("--seed", type=int, default=0, help="seed of corpus and training")
    p.add_argument(
        "--lags",
        type=int,
        nargs="+",
        default=[1, 4, 16, 64, 256],
        help="lags k of the long-lag task",
    )
    p.add_argument("--lag-updates", type=int, default=500, help="training updates per lag")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
