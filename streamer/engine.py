"""The engine: one wave of readings (each stream at most once) through one model call.

Pure: no MQTT, no files, no HTTP. The daemon, the evaluator, the benchmarks and the
tests all drive this same `step`, so a score measured offline is a score of the
deployed code path. Per wave: drop what cannot be used (counted), gather each
stream's rows, score the reading against the prediction made at the stream's
previous step, advance all hidden states in one onnxruntime run, scatter back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .calibration import CalibrationConfig
from .model import StepModel
from .normalize import Scale
from .score import hysteresis, surprise
from .state import StateStore
from .waveops import Rows, every, gather, peek, row_array, scatter, some, wave_rows

# Readings by result: what /metrics shows as streamer_readings_total{result=...}.
TAKEN = ("scored", "warmup")
DROPPED = ("not_finite", "out_of_order", "duplicate")
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class EngineSettings:
    capacity: int = 100_000
    gap_reset: float = 20.0
    warmup: int = 0  # 0 = the model's declared warm-up
    enter: float = 0.999
    leave: float = 0.99


@dataclass(slots=True)
class Prior:
    """The prediction each stream's previous step made for this reading, gathered once per wave."""

    has: np.ndarray  # False: nothing predicted yet (a new stream, or reset after a gap)
    mean: np.ndarray
    log_var: np.ndarray
    complete: bool  # every stream has one: the steady state, where nothing needs masking


@dataclass
class Wave:
    """What one step did, for the sinks (alerts, latency) and for replay."""

    ids: list[str]  # readings taken, in the order given
    rows: np.ndarray
    ts: np.ndarray
    raw: np.ndarray  # NaN where the stream had no prediction yet
    score: np.ndarray
    anomalous: np.ndarray
    entered: np.ndarray
    left: np.ndarray


class StreamEngine:
    """Per-stream state for one step model, advanced a wave at a time."""

    def __init__(
        self,
        model: StepModel,
        settings: EngineSettings | None = None,
        calibration: CalibrationConfig | None = None,
    ) -> None:
        self.model = model
        self.settings = settings or EngineSettings()
        info = model.info
        self.channels = info.n_outputs
        self.warmup = self.settings.warmup or info.warmup
        self.calibration = calibration or CalibrationConfig.from_dict(
            info.extra.get("calibration", {})
        )
        self.store = self._new_store()
        self.counts: Counter[str] = Counter()

    def _new_store(self) -> StateStore:
        info = self.model.info
        return StateStore(
            self.settings.capacity,
            info.state_size,
            info.n_outputs,
            info.normalizer,
            info.gap,
            self.calibration,
        )

    def reset(self) -> None:
        """Forget every stream (a cold start)."""
        self.store = self._new_store()

    def swap_model(self, model: StepModel) -> bool:
        """Serve with a new model; True when per-stream state was kept.

        State carries over only when the new model reads it the same way: same state
        size, channels and input normalisation. Otherwise every stream starts afresh
        (a hidden state means nothing to a different network shape).
        """
        old, new = self.model.info, model.info
        same = (old.state_size, old.n_outputs, old.normalizer, old.gap) == (
            new.state_size,
            new.n_outputs,
            new.normalizer,
            new.gap,
        )
        self.model = model
        self.warmup = self.settings.warmup or new.warmup
        if not same:
            self.channels = new.n_outputs
            self.reset()
        return same

    def step(self, ids: Sequence[str], ts: Sequence[float], values: np.ndarray) -> Wave:
        """Score and learn one reading per stream. `ids` must be distinct; values [B, channels]."""
        ids = list(ids)
        ts = np.asarray(ts, np.float64)
        values = np.asarray(values, np.float64).reshape(len(ids), self.channels)
        # Beyond float32's range a value is as useless as inf (and would overflow the statistics).
        in_range, ts_finite = np.abs(values) <= FLOAT32_MAX, np.isfinite(ts)
        if not (every(in_range) and every(ts_finite)):  # whole-array checks first: the common case
            finite = in_range.all(axis=1) & ts_finite
            ids, ts, values = self._keep(finite, "not_finite", ids, ts, values)

        store = self.store
        rows, _ = store.lookup(ids)
        dt = ts - store.last_ts.take(rows)
        stale = dt <= 0  # NaN (a stream's first reading) is fresh
        if some(stale):
            fresh = ~stale
            self.counts["out_of_order"] += int((dt < 0).sum())
            self.counts["duplicate"] += int((dt == 0).sum())
            ids, ts, values, rows, dt = (_take(a, fresh) for a in (ids, ts, values, rows, dt))

        at = wave_rows(rows)  # where the wave's state is: a slice when the rows are one run
        self._reset_after_gaps(at, dt)
        has = gather(store.has_pred, at)
        prior = Prior(
            has,
            gather(store.pred_mean, at),
            gather(store.pred_log_var, at),
            every(has),
        )
        scale = store.normalizer.scale(at)
        z = store.normalizer.step(at, values, scale)
        warmup = store.normalizer.config.warmup
        novelty = store.envelope.step(at, values, scale, warmup)
        seasonal = None
        if store.seasonal.enabled:
            seasonal = store.seasonal.step(at, values, ts, dt, scale, warmup)
        gap = store.gaps.step(at, dt)
        raw, score, contrib = self._score(at, rows, ts, z, prior, novelty, seasonal)

        seen = gather(store.seen, at) + 1
        may_alert = prior.has & (seen > self.warmup)
        flags, entered, left = hysteresis(
            gather(store.anomalous, at), score, self.settings.enter, self.settings.leave, may_alert
        )
        self._expect(at, values, scale, prior)

        x = np.concatenate([z, gap[:, None]], axis=1)
        mean, log_var, h_next = self.model.step(x, peek(store.h, at))  # session.run only reads it
        store.h[at] = h_next
        scatter(store.pred_mean, at, mean)
        scatter(store.pred_log_var, at, log_var)
        if not prior.complete:
            store.has_pred[at] = True
        store.last_ts[at] = ts
        store.seen[at] = seen
        scatter(store.value, at, values)
        store.raw[at] = raw
        store.score[at] = score
        store.contrib[at] = contrib
        store.anomalous[at] = flags
        n_entered = int(np.count_nonzero(entered))
        if n_entered:
            store.anomalies[rows[entered]] += 1

        n_scored = int(np.count_nonzero(may_alert))
        self.counts["scored"] += n_scored
        self.counts["warmup"] += len(ids) - n_scored
        self.counts["anomalies"] += n_entered
        return Wave(ids, rows, ts, raw, score, flags, entered, left)

    def _keep(self, mask: np.ndarray, reason: str, ids: list[str], *arrays: np.ndarray):
        """The readings in `mask`; the others are counted as dropped for `reason`."""
        self.counts[reason] += int((~mask).sum())
        return (_take(ids, mask), *(a[mask] for a in arrays))

    def _reset_after_gaps(self, rows: Rows, dt: np.ndarray) -> None:
        """After a long silence the old context misleads more than it helps: start the state afresh."""
        period = self.store.gaps.period(rows)
        gone = dt > self.settings.gap_reset * period  # NaN (no period yet) compares False
        if some(gone):
            reset = row_array(rows)[gone]
            self.store.h[reset] = 0.0
            self.store.has_pred[reset] = False
            self.counts["gap_resets"] += int(gone.sum())

    def _score(
        self,
        at: Rows,
        rows: np.ndarray,
        ts: np.ndarray,
        z: np.ndarray,
        prior: Prior,
        novelty: np.ndarray,
        seasonal: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        has = prior.has
        total, contrib = surprise(z, prior.mean, prior.log_var, seasonal)
        context = None
        if seasonal is not None and self.calibration.context_weight:
            evidence = seasonal[3]
            context = evidence[:, 0] if evidence.shape[1] == 1 else evidence.sum(axis=1)
        calibrator = self.store.calibrator
        if prior.complete:  # the steady state: no masked copies
            raw = total.astype(np.float32, copy=False)
            score = calibrator.step(at, total, novelty, context, ts)
        else:
            raw = np.where(has, total, np.nan).astype(np.float32)
            score = np.zeros(len(rows), np.float32)
            if has.any():
                part = None if context is None else context[has]
                score[has] = calibrator.step(rows[has], total[has], novelty[has], part, ts[has])
        return raw, score, contrib.astype(np.int16)

    def _expect(self, rows: Rows, values: np.ndarray, scale: Scale, prior: Prior) -> None:
        """Expected value and 2-sigma band in sensor units: the previous step's prediction, denormalised."""
        expected = scale.mean + scale.std * prior.mean
        band = 2.0 * scale.std * np.exp(0.5 * prior.log_var)
        if not prior.complete:
            has = prior.has[:, None]
            expected = np.where(has, expected, values)
            band = np.where(has, band, 0.0)
        scatter(self.store.expected, rows, expected)
        scatter(self.store.band, rows, band)


def _take(seq, mask: np.ndarray):
    """`seq[mask]` for arrays and lists alike."""
    if isinstance(seq, np.ndarray):
        return seq[mask]
    return [s for s, keep in zip(seq, mask, strict=True) if keep]
