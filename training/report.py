"""Which recurrent cell? rnn, lstm and gru measured side by side on what matters here.

Four questions decide the cell of a streaming detector: how well it predicts (validation
NLL on the same synthetic corpus), what it costs to run per reading (ONNX step latency
in onnxruntime through the daemon's own `StepModel`, at batch 1 and at a full wave of
256 streams), what it costs to keep per stream (state size), and how far back it can
remember (the long-lag task below). `streamer compare-cells --out reports/cells` writes
the answers as README.md and PNGs.

The long-lag task: a cue of +1 or -1 is shown (marked by +1 on the second input), then
k steps of unit noise follow, and at the step marked -1 the model must predict the cue.
Without memory the best prediction is N(0, 1); a cell "learns" lag k when its NLL at the
query beats that by `lag_margin` nats. Episodes are trained with full backpropagation
through all k steps, so what is measured is the cell, not the truncation length.
"""

from __future__ import annotations

import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch import Tensor

from streamer.model import CELLS, StepModel

from .data import synthetic
from .model import ModelConfig, StepRNN
from .train import TrainConfig, TrainResult, gaussian_nll, optimise, reproducible, train

LATENCY_BATCHES = (1, 256)
# The cue is +1 or -1 with equal odds, so without memory the best Gaussian is N(0, 1).
NO_MEMORY_NLL = 0.5 * (math.log(2 * math.pi) + 1.0)


@dataclass(frozen=True)
class CompareConfig:
    """The committed report's settings are these defaults (under 10 minutes on 2 cores)."""

    n_series: int = 128
    length: int = 3000
    seed: int = 0
    hidden_size: int = 64
    epochs: int = 25
    lags: tuple[int, ...] = (1, 4, 16, 64, 256)
    lag_updates: int = 500
    lag_batch: int = 64
    lag_margin: float = 0.5
    latency_runs: int = 1000
    cells: tuple[str, ...] = CELLS
    progress: bool = True

    def train_config(self, cell: str) -> TrainConfig:
        return TrainConfig(
            cell=cell,
            hidden_size=self.hidden_size,
            epochs=self.epochs,
            seed=self.seed,
            progress=self.progress,
        )


@dataclass
class LagResult:
    k: int
    nll: float
    learned: bool


@dataclass
class CellReport:
    cell: str
    result: TrainResult
    latency_us: dict[int, float]  # batch size -> median microseconds per step call
    lags: list[LagResult] = field(default_factory=list)

    @property
    def max_lag(self) -> int | None:
        learned = [r.k for r in self.lags if r.learned]
        return max(learned) if learned else None


def lag_episodes(k: int, batch: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Inputs [B, k+1, 2] (value, marker) and the query targets [B, 1]: the cue, k steps back."""
    cue = torch.randint(0, 2, (batch, 1), generator=gen).float() * 2 - 1
    x = torch.zeros(batch, k + 1, 2)
    x[:, :, 0] = torch.randn(batch, k + 1, generator=gen)
    x[:, 0, 0] = cue[:, 0]
    x[:, 0, 1] = 1.0
    x[:, k, 1] = -1.0
    return x, cue


def lag_nll(cell: str, k: int, cfg: CompareConfig) -> float:
    """Query NLL of one cell trained on lag k, on held-out episodes."""
    test_x, test_y = lag_episodes(k, 1024, torch.Generator().manual_seed(cfg.seed + 10_000 + k))
    with reproducible(cfg.seed + k, threads=1):
        train_gen = torch.Generator().manual_seed(cfg.seed + k)
        model = StepRNN(ModelConfig(cell, cfg.hidden_size, 1, 2, 1))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(cfg.lag_updates):
            x, y = lag_episodes(k, cfg.lag_batch, train_gen)
            mean, log_var, _ = model(x)
            loss = gaussian_nll(mean[:, -1], log_var[:, -1], y).mean()
            optimise(model, opt, loss, clip_grad=1.0)
        with torch.no_grad():
            mean, log_var, _ = model(test_x)
            return float(gaussian_nll(mean[:, -1], log_var[:, -1], test_y).mean())


def lag_capacity(cell: str, cfg: CompareConfig) -> list[LagResult]:
    """Lags from short to long, stopping at the first one the cell fails (longer ones would too)."""
    results = []
    for k in sorted(cfg.lags):
        nll = lag_nll(cell, k, cfg)
        results.append(LagResult(k, nll, nll < NO_MEMORY_NLL - cfg.lag_margin))
        if not results[-1].learned:
            break
    return results


def step_latency_us(path: Path, batch: int, runs: int) -> float:
    """Median wall time of one `StepModel.step` call, single-threaded, after a warm-up."""
    model = StepModel(path, threads=1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, model.info.n_inputs)).astype(np.float32)
    h = (0.1 * rng.standard_normal((batch, model.state_size))).astype(np.float32)
    for _ in range(20):
        model.step(x, h)
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        model.step(x, h)
        times[i] = time.perf_counter() - t0
    return float(np.median(times) * 1e6)


def compare_cells(cfg: CompareConfig, out: Path, command: str) -> list[CellReport]:
    """Train and measure every cell, then write `out`/README.md and its figures."""
    corpus = synthetic(cfg.n_series, cfg.length, cfg.seed)
    reports = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for cell in cfg.cells:
            result = train(corpus, cfg.train_config(cell), run_dir=Path(tmp) / cell)
            latency = {
                b: step_latency_us(result.onnx_path, b, cfg.latency_runs) for b in LATENCY_BATCHES
            }
            reports.append(CellReport(cell, result, latency, lag_capacity(cell, cfg)))
    out.mkdir(parents=True, exist_ok=True)
    plot_validation(reports, out / "validation.png")
    plot_lags(reports, cfg, out / "long_lag.png")
    plot_latency(reports, out / "latency.png")
    readme = render_readme(reports, cfg, command, time.perf_counter() - started, len(corpus))
    (out / "README.md").write_text(readme)
    return reports


def _fmt_lag(r: CellReport) -> str:
    return "none" if r.max_lag is None else str(r.max_lag)


def render_readme(
    reports: list[CellReport], cfg: CompareConfig, command: str, seconds: float, n_streams: int
) -> str:
    steps = n_streams * (cfg.length - 1)
    lines = [
        "# Recurrent cells compared: rnn, lstm, gru",
        "",
        "Produced by:",
        "",
        "```",
        command,
        "```",
        "",
        f"in {seconds / 60:.1f} min on {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()},"
        f" {platform.platform()}), torch {torch.__version__} with 1 thread,"
        f" onnxruntime {onnxruntime.__version__} with 1 thread.",
        "",
        f"Corpus: `streamer.sim` synthetic fleet, {cfg.n_series} sensors x {cfg.length} readings, seed"
        f" {cfg.seed}, each channel its own stream ({n_streams} streams, {steps} prediction steps);"
        " the last 20% of every stream is validation. Every cell: 1 layer,"
        f" hidden {cfg.hidden_size}, the same `TrainConfig` otherwise (at most {cfg.epochs} epochs,"
        " early stopping on validation NLL). NLL is in nats per reading, lower is better;"
        " 'predict 0' is the normaliser alone (mean 0, unit variance).",
        "",
        "| cell | parameters | state floats | val NLL | predict 0 | s / epoch | best epoch"
        " | ONNX step b=1 (us) | b=256 (us) | b=256 per stream (us) | longest lag learned |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in reports:
        res = r.result
        lines.append(
            f"| {r.cell} | {res.n_params} | {res.info.state_size} | {res.val_nll:.4f}"
            f" | {res.baseline_nll:.4f} | {res.epoch_seconds:.1f} | {res.best_epoch}/{len(res.history)}"
            f" | {r.latency_us[1]:.1f} | {r.latency_us[256]:.1f} | {r.latency_us[256] / 256:.2f}"
            f" | {_fmt_lag(r)} |"
        )
    lines += [
        "",
        "## Long-lag capacity",
        "",
        f"Query NLL after {cfg.lag_updates} updates of {cfg.lag_batch} episodes (full BPTT),"
        f" on 1024 held-out episodes. No memory reaches {NO_MEMORY_NLL:.3f};"
        f" a lag counts as learned below that minus {cfg.lag_margin}. A cell stops at its"
        " first failed lag ('-': not run).",
        "",
        "| cell | " + " | ".join(f"k={k}" for k in cfg.lags) + " |",
        "|---|" + "---:|" * len(cfg.lags),
    ]
    for r in reports:
        by_k = {x.k: x for x in r.lags}
        cells = [
            f"{by_k[k].nll:.3f}{'' if by_k[k].learned else ' (no)'}" if k in by_k else "-"
            for k in cfg.lags
        ]
        lines.append(f"| {r.cell} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## How to read it",
        "",
        "- One seed per cell: the ranking by validation NLL is one draw, not an average.",
        "- s / epoch is torch training on 1 CPU thread; what the daemon pays is the ONNX step."
        " At b=256 the per-stream cost is what a full wave of streams costs each of them.",
        "- State floats are what the daemon stores per stream (an LSTM keeps h and c).",
        "- The long-lag task isolates memory: next-reading prediction on sensors mostly needs"
        " the recent past, so a cell can lose here and still predict sensors best.",
        "",
        "## Figures",
        "",
        "![validation NLL per epoch](validation.png)",
        "",
        "![long-lag task](long_lag.png)",
        "",
        "![ONNX step latency](latency.png)",
        "",
    ]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_validation(reports: list[CellReport], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in reports:
        ax.plot(
            [m.epoch for m in r.result.history],
            [m.val_nll for m in r.result.history],
            marker="o",
            label=r.cell,
        )
    ax.set(xlabel="epoch", ylabel="validation NLL (nats per reading)", title="Validation NLL")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_lags(reports: list[CellReport], cfg: CompareConfig, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in reports:
        ax.plot([x.k for x in r.lags], [x.nll for x in r.lags], marker="o", label=r.cell)
    ax.axhline(NO_MEMORY_NLL, color="grey", ls="--", label="no memory")
    ax.axhline(NO_MEMORY_NLL - cfg.lag_margin, color="grey", ls=":", label="learned below")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="lag k (steps)", ylabel="query NLL (nats)", title="Long-lag task")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_latency(reports: list[CellReport], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(LATENCY_BATCHES), figsize=(8, 3.5))
    for ax, batch in zip(axes, LATENCY_BATCHES, strict=True):
        ax.bar([r.cell for r in reports], [r.latency_us[batch] for r in reports])
        ax.set(title=f"batch {batch}", ylabel="median us per step call")
    fig.suptitle("ONNX step latency (onnxruntime, 1 thread)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
