"""Training a StepRNN to predict each stream's next normalised reading, read top to bottom.

The model must behave in training as it will in service, where it runs forever on one
stream from a zero state. So every series is encoded by `streamer.normalize.encode_series`
(the daemon's own normaliser, fed reading by reading), kept whole, and trained with
truncated BPTT: the state is carried from one chunk of a series to the next, detached.

Validation is the last `val_fraction` of every series, reached by running the model
over the series' start first: it measures how well the model predicts the future of
streams it has been following, which is what the daemon asks of it.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

import streamer
from streamer.model import ModelInfo
from streamer.normalize import GapConfig, NormalizerConfig, encode_series

from .data import DataError, Series, data_fingerprint
from .export import ParityReport, check_parity, export_onnx
from .model import ModelConfig, StepRNN, save_checkpoint

LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; saved as the run's config.json."""

    cell: str = "gru"
    hidden_size: int = 64
    layers: int = 1
    epochs: int = 30
    batch_size: int = 32  # series per batch
    chunk: int = 256  # truncated-BPTT length, in readings
    lr: float = 3e-3
    clip_grad: float = 1.0
    val_fraction: float = 0.2
    patience: int = 4  # epochs without a validation gain of min_delta before stopping
    min_delta: float = 1e-3
    seed: int = 0
    threads: int = 1  # the recurrences are small and sequential: more threads mostly add overhead
    warmup: int = 100  # readings before a stream may alert, written into the model
    normalizer: NormalizerConfig = field(default_factory=NormalizerConfig)
    gap: GapConfig = field(default_factory=GapConfig)
    progress: bool = True
    export: bool = True  # write model.onnx into the run folder and check it against torch
    parity_steps: int = 1000

    def model_config(self, n_channels: int) -> ModelConfig:
        return ModelConfig(self.cell, self.hidden_size, self.layers, n_channels + 1, n_channels)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["normalizer"] = self.normalizer.to_dict()
        d["gap"] = self.gap.to_dict()
        return d


@dataclass
class EpochMetrics:
    epoch: int
    train_nll: float
    val_nll: float
    lr: float
    seconds: float


@dataclass
class TrainResult:
    """The best model (by validation NLL) and how it got there. NLLs are nats per reading."""

    model: StepRNN
    info: ModelInfo
    history: list[EpochMetrics]
    best_epoch: int
    val_nll: float
    baseline_nll: float  # predicting 0 with unit variance (the normaliser's own guess)
    n_params: int
    seconds: float
    run_dir: Path | None = None
    onnx_path: Path | None = None
    parity: ParityReport | None = None

    @property
    def epoch_seconds(self) -> float:
        return float(np.mean([m.seconds for m in self.history]))


@dataclass
class Encoded:
    """A corpus as padded arrays: inputs [N, T, F], next-step targets [N, T, C] and masks [N, T]."""

    x: np.ndarray
    y: np.ndarray
    train: np.ndarray
    val: np.ndarray
    channels: list[str]


def gaussian_nll(mean: Tensor, log_var: Tensor, target: Tensor) -> Tensor:
    """Elementwise Gaussian negative log-likelihood in nats, the constant included,
    so figures compare with baselines and across models."""
    return 0.5 * (log_var + (target - mean).square() * torch.exp(-log_var) + LOG_2PI)


@contextmanager
def reproducible(seed: int, threads: int) -> Iterator[np.random.Generator]:
    """Same seed and thread count, same run: seeds torch, turns on deterministic kernels and
    yields a numpy Generator; the process's thread count and kernel choice are restored after."""
    was_threads, was_deterministic = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
    )
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield np.random.default_rng(seed)
    finally:
        torch.set_num_threads(was_threads)
        torch.use_deterministic_algorithms(was_deterministic)


def optimise(model: StepRNN, opt: torch.optim.Optimizer, loss: Tensor, clip_grad: float) -> None:
    """One update with the gradient norm clipped: a rare spike in a long series must not
    throw the recurrent weights off in one step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    opt.step()


def common_channels(series: Sequence[Series]) -> list[str]:
    """The channel names every series shares; one model has one input layout."""
    layouts = {tuple(s.channels) for s in series}
    if len(layouts) != 1:
        raise DataError(
            f"series have different channels {sorted(layouts)}; one model needs one layout "
            "(train on each channel as its own stream with --univariate)"
        )
    return list(layouts.pop())


def encode(series: Sequence[Series], cfg: TrainConfig) -> Encoded:
    """Encode each series with the daemon's normaliser and split it in time (train, then val)."""
    if not series:
        raise DataError("no series to train on")
    channels = common_channels(series)
    steps = [len(s.ts) - 1 for s in series]
    n, width, c = len(series), max(steps), len(channels)
    enc = Encoded(
        x=np.zeros((n, width, c + 1), np.float32),
        y=np.zeros((n, width, c), np.float32),
        train=np.zeros((n, width), bool),
        val=np.zeros((n, width), bool),
        channels=channels,
    )
    for i, (s, t) in enumerate(zip(series, steps, strict=True)):
        if t < 1:
            continue
        inputs = encode_series(s.values, s.ts, cfg.normalizer, cfg.gap)
        enc.x[i, :t] = inputs[:-1]
        enc.y[i, :t] = inputs[1:, :c]
        split = round(t * (1.0 - cfg.val_fraction))
        enc.train[i, :split] = True
        enc.val[i, split:t] = True
    if not enc.train.any() or not enc.val.any():
        raise DataError("the series are too short to give both training and validation steps")
    return enc


def _chunks(length: int, chunk: int) -> range:
    return range(0, length, chunk)


def _batch(enc: Encoded, rows: np.ndarray, mask: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
    """Rows of the corpus, trimmed to the last step any of them uses under `mask`."""
    used = np.flatnonzero(mask[rows].any(axis=0))
    end = int(used[-1]) + 1 if used.size else 0
    return (
        torch.from_numpy(enc.x[rows, :end]),
        torch.from_numpy(enc.y[rows, :end]),
        torch.from_numpy(mask[rows, :end]),
    )


def train_epoch(
    model: StepRNN,
    enc: Encoded,
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    rng: np.random.Generator,
) -> float:
    """One pass over the training part of every series, in shuffled batches; mean train NLL."""
    model.train()
    order = rng.permutation(np.flatnonzero(enc.train.any(axis=1)))
    batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    total, count = 0.0, 0
    bar = tqdm(batches, desc="  batches", leave=False, disable=not cfg.progress)
    for rows in bar:
        x, y, m = _batch(enc, rows, enc.train)
        h = None
        for t in _chunks(x.shape[1], cfg.chunk):
            mean, log_var, h = model(x[:, t : t + cfg.chunk], h)
            mask = m[:, t : t + cfg.chunk]
            nll = gaussian_nll(mean, log_var, y[:, t : t + cfg.chunk]).mean(-1)[mask]
            optimise(model, opt, nll.mean(), cfg.clip_grad)
            h = h.detach()
            total += float(nll.detach().sum())
            count += nll.numel()
    return total / count


@torch.no_grad()
def evaluate(
    model: StepRNN, enc: Encoded, mask: np.ndarray, chunk: int = 1024, batch: int = 256
) -> float:
    """Mean NLL over the steps in `mask`, each series run from its start with state carried."""
    model.eval()
    rows = np.flatnonzero(mask.any(axis=1))
    total, count = 0.0, 0
    for i in range(0, len(rows), batch):
        x, y, m = _batch(enc, rows[i : i + batch], mask)
        h = None
        for t in _chunks(x.shape[1], chunk):
            mean, log_var, h = model(x[:, t : t + chunk], h)
            nll = gaussian_nll(mean, log_var, y[:, t : t + chunk]).mean(-1)
            sel = m[:, t : t + chunk]
            total += float(nll[sel].sum())
            count += int(sel.sum())
    return total / count


def baseline_nll(enc: Encoded, mask: np.ndarray) -> float:
    """NLL of predicting 0 with unit variance: what the normaliser alone already knows."""
    y = torch.from_numpy(enc.y[mask])
    zero = torch.zeros_like(y)
    return float(gaussian_nll(zero, zero, y).mean())


def fit(
    model: StepRNN, enc: Encoded, cfg: TrainConfig, rng: np.random.Generator
) -> list[EpochMetrics]:
    """Epochs until `cfg.epochs` or `cfg.patience` epochs without a validation gain; the model is
    left with the weights of its best epoch. The learning rate halves whenever validation stalls."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    history: list[EpochMetrics] = []
    best_state, best_val, stale = None, math.inf, 0
    bar = tqdm(
        range(1, cfg.epochs + 1), desc=f"{cfg.cell} h{cfg.hidden_size}", disable=not cfg.progress
    )
    for epoch in bar:
        t0 = time.perf_counter()
        lr = opt.param_groups[0]["lr"]
        train_nll = train_epoch(model, enc, opt, cfg, rng)
        val_nll = evaluate(model, enc, enc.val)
        history.append(EpochMetrics(epoch, train_nll, val_nll, lr, time.perf_counter() - t0))
        bar.set_postfix(train=f"{train_nll:.4f}", val=f"{val_nll:.4f}")
        sched.step(val_nll)
        stale = 0 if val_nll < best_val - cfg.min_delta else stale + 1
        if val_nll < best_val:
            best_state, best_val = copy.deepcopy(model.state_dict()), val_nll
        if stale >= cfg.patience:
            break
    if best_state is None:
        raise ValueError(f"training diverged: validation NLL {history[-1].val_nll}")
    model.load_state_dict(best_state)
    model.eval()
    return history


def train(
    series: Sequence[Series],
    cfg: TrainConfig,
    run_dir: Path | None = None,
    extra: dict | None = None,
) -> TrainResult:
    """Train, keep the best epoch by validation NLL, and (with `run_dir`) write the run folder.

    `extra` goes into the model's metadata next to what training records itself
    (data fingerprint, creation time, library versions, val_nll).
    """
    started = time.perf_counter()
    with reproducible(cfg.seed, cfg.threads) as rng:
        enc = encode(series, cfg)
        model = StepRNN(cfg.model_config(len(enc.channels)))
        history = fit(model, enc, cfg, rng)
    best = min(history, key=lambda m: m.val_nll)
    info = ModelInfo(
        cell=cfg.cell,
        layers=cfg.layers,
        hidden_size=cfg.hidden_size,
        input_features=[*enc.channels, "log_gap"],
        output_features=enc.channels,
        normalizer=cfg.normalizer,
        gap=cfg.gap,
        warmup=cfg.warmup,
        extra={
            "data_fingerprint": data_fingerprint(series),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": versions(),
            "val_nll": round(best.val_nll, 6),
            **(extra or {}),
        },
    )
    result = TrainResult(
        model=model,
        info=info,
        history=history,
        best_epoch=best.epoch,
        val_nll=best.val_nll,
        baseline_nll=baseline_nll(enc, enc.val),
        n_params=sum(p.numel() for p in model.parameters()),
        seconds=time.perf_counter() - started,
    )
    if run_dir is not None:
        write_run(result, cfg, Path(run_dir))
    return result


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {
        "python": platform.python_version(),
        "streamer": streamer.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def write_run(result: TrainResult, cfg: TrainConfig, run_dir: Path) -> None:
    """config.json, checkpoint.safetensors, metrics.json/csv, loss.png and model.onnx (parity-checked)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "train": cfg.to_dict(),
        "model": asdict(result.model.cfg),
        "model_info": result.info.to_metadata(),  # what `streamer export` writes into a model file
        "argv": sys.argv,
    }
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_checkpoint(result.model, run_dir / "checkpoint.safetensors")
    rows = [asdict(m) for m in result.history]
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = {
        "best_epoch": result.best_epoch,
        "val_nll": result.val_nll,
        "baseline_nll": result.baseline_nll,
        "n_params": result.n_params,
        "seconds": result.seconds,
        "epoch_seconds": result.epoch_seconds,
        "epochs": rows,
    }
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_losses(result, run_dir / "loss.png")
    if cfg.export:
        result.onnx_path = export_onnx(result.model, result.info, run_dir / "model.onnx")
        result.parity = check_parity(result.model, result.onnx_path, steps=cfg.parity_steps)
    result.run_dir = run_dir


def plot_losses(result: TrainResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m.epoch for m in result.history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [m.train_nll for m in result.history], label="train")
    ax.plot(epochs, [m.val_nll for m in result.history], label="validation")
    ax.axhline(result.baseline_nll, color="grey", ls="--", label="predict 0, unit variance")
    ax.axvline(result.best_epoch, color="grey", ls=":", label="best epoch")
    ax.set(xlabel="epoch", ylabel="NLL (nats per reading)", title="Gaussian NLL")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
