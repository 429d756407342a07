"""The engine alone, no MQTT: stream-steps/s of `StreamEngine.step`, its ceiling and the naive way.

Four ways to advance streams by one reading each, with the same weights:

    engine   StreamEngine.step on a wave of B streams: the daemon's whole per-wave path
             (lookup, drop checks, normalise, score, calibrate, one session.run, scatter),
             the same streams in the same order every wave (a fleet reporting in step,
             so the state store's rows are one run and the last wave's rows are reused)
    shuffled the same, each wave in a new order: the rows are scattered and no wave
             repeats the last, as when streams report at their own times
    session  onnxruntime session.run of the same file at batch B, the state fed back:
             the ceiling, what the network alone costs
    naive    the torch module one reading at a time, per-stream states in a dict:
             what a user writes first

The models are untrained GRUs (speed does not depend on the weights), exported with
`training.export.export_onnx`, run as the daemon runs them: one onnxruntime thread,
and one torch thread for the naive loop. Engine, shuffled and session alternate in short slices,
so a change of load on a shared machine hits both alike, and a rate is steps per
second of this process's CPU time: on a busy machine wall time measures the neighbours.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer.calibration import CalibrationConfig
from streamer.engine import EngineSettings, StreamEngine
from streamer.model import ModelInfo, StepModel

T0 = 1_700_000_000.0


@dataclass
class EngineRow:
    hidden: int
    batch: int
    engine: float  # stream-steps per CPU second
    shuffled: float  # the engine, each wave in a new order
    session: float
    naive: float  # readings per CPU second, one at a time (independent of the batch)

    @property
    def vs_session(self) -> float:
        return self.engine / self.session

    @property
    def shuffled_vs_session(self) -> float:
        return self.shuffled / self.session

    @property
    def vs_naive(self) -> float:
        return self.engine / self.naive

    def to_dict(self) -> dict[str, float]:
        ratios = {k: getattr(self, k) for k in ("vs_session", "shuffled_vs_session", "vs_naive")}
        return {**self.__dict__, **ratios}


def export_gru(hidden: int, directory: Path):
    """An untrained GRU step model file and its torch module (torch is imported only here)."""
    import torch

    from training.export import export_onnx
    from training.model import ModelConfig, StepRNN

    torch.manual_seed(hidden)
    module = StepRNN(ModelConfig(cell="gru", hidden_size=hidden)).eval()
    info = ModelInfo("gru", 1, hidden, ["value", "log_gap"], ["value"])
    return export_onnx(module, info, directory / f"gru{hidden}.onnx"), module


def cpu_rate(step: Callable[[], int], slice_s: float) -> float:
    """Steps per CPU second of `step()` (which returns the steps it made) over one slice."""
    steps, start = 0, time.process_time()
    while True:
        steps += step()
        spent = time.process_time() - start
        if spent >= slice_s:
            return steps / spent


class EngineDriver:
    """Waves of the same B streams, one reading each, 1 s apart: a fleet reporting in step.

    `shuffled`: each wave lists the streams in another order (one of 64 permutations)."""

    def __init__(
        self, model: StepModel, batch: int, calibration: str = "", shuffled: bool = False
    ) -> None:
        self.engine = StreamEngine(
            model, EngineSettings(capacity=batch), CalibrationConfig().with_overrides(calibration)
        )
        self.ids = [f"plant{i % 7}/line{i % 13:02d}/sensor-{i:07d}" for i in range(batch)]
        rng = np.random.default_rng(batch)
        phase = rng.uniform(0, 6.3, batch)
        t = np.arange(64)[:, None]
        self.values = (
            20 + np.sin(t / 5.0 + phase)[..., None] + 0.1 * rng.normal(size=(64, batch, 1))
        )
        orders = [rng.permutation(batch) if shuffled else np.arange(batch) for _ in range(64)]
        self.waves = [([self.ids[i] for i in o], o) for o in orders]
        self.t = 0

    def __call__(self) -> int:
        self.t += 1
        ids, order = self.waves[self.t % len(self.waves)]
        ts = np.full(len(ids), T0 + self.t)
        self.engine.step(ids, ts, self.values[self.t % len(self.values)][order])
        return len(ids)


class SessionDriver:
    def __init__(self, model: StepModel, batch: int) -> None:
        rng = np.random.default_rng(batch)
        self.session = model.session
        self.x = rng.normal(size=(batch, model.info.n_inputs)).astype(np.float32)
        self.h = np.zeros((batch, model.state_size), np.float32)

    def __call__(self) -> int:
        _, _, self.h = self.session.run(["mean", "log_var", "h_next"], {"x": self.x, "h": self.h})
        return len(self.x)


class NaiveDriver:
    """One torch call per reading, states in a dict by stream id."""

    def __init__(self, module, streams: int = 1000) -> None:
        import torch

        self.torch = torch
        self.module = module
        self.ids = [f"sensor-{i}" for i in range(streams)]
        self.states: dict[str, object] = {}
        self.zero = module.zero_state(1)
        self.i = 0

    def __call__(self) -> int:
        torch = self.torch
        with torch.inference_mode():
            for _ in range(100):
                sid = self.ids[self.i % len(self.ids)]
                x = torch.tensor([[float(self.i % 17), 0.0]])
                _, _, self.states[sid] = self.module.step(x, self.states.get(sid, self.zero))
                self.i += 1
        return 100


def measure(
    hidden_sizes: Sequence[int] = (32, 64, 128),
    batches: Sequence[int] = (1, 64, 1024, 8192),
    slice_s: float = 0.2,
    rounds: int = 5,
    calibration: str = "",
) -> list[EngineRow]:
    """One row per (hidden, batch): medians over `rounds` alternating slices.

    `calibration` (JSON, as the daemon's `engine.calibration`) measures the engine with
    scoring terms changed, e.g. '{"seasonal_harmonics": 0}' without the time-of-day profile.
    """
    import torch

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        for hidden in hidden_sizes:
            path, module = export_gru(hidden, Path(tmp))
            model = StepModel(path)
            naive = NaiveDriver(module)
            naive_rate = float(np.median([cpu_rate(naive, slice_s) for _ in range(rounds)]))
            for batch in batches:
                drivers = (
                    EngineDriver(model, batch, calibration),
                    EngineDriver(model, batch, calibration, shuffled=True),
                    SessionDriver(model, batch),
                )
                for warm in drivers:
                    warm()
                slices = [[cpu_rate(d, slice_s) for d in drivers] for _ in range(rounds)]
                e, shuffled, s = np.median(slices, axis=0)
                rows.append(
                    EngineRow(hidden, batch, float(e), float(shuffled), float(s), naive_rate)
                )
    return rows
