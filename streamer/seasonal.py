"""The time of day: a per-stream profile of it, and what it explains of a reading's surprise.

Many sensors follow the clock (load, traffic, temperature). The one-step model is
surprised by every scheduled daily change, so a profile of the time of day, switched on
per stream only by out-of-sample evidence, explains that part of the surprise away, and
on strongly daily streams a sustained departure from it counts as evidence of its own.
"""

from __future__ import annotations

import numpy as np

from .calibration import EVIDENCE_CLIP, CalibrationConfig
from .normalize import Scale
from .waveops import Rows, every, gather, row_array, some

LOG_2PI = float(np.log(2.0 * np.pi))
LOG_2 = float(np.log(2.0))


def explained(
    z: np.ndarray, nll: np.ndarray, resid: np.ndarray, var: np.ndarray, gate: np.ndarray
) -> np.ndarray:
    """How much of the model's NLL and of 0.5 z**2 the seasonal expectation explains, per channel.

    Under the seasonal expectation the reading has the residual `resid` with variance
    `var` (normalised units): its Gaussian NLL and its 0.5 zs**2 replace the model's NLL
    and 0.5 z**2 where they are smaller, weighted by `gate` in [0, 1]. Never negative:
    the seasonal term only explains surprise away, it adds none.
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        v = np.maximum(var, Seasonal.VAR_FLOOR)
        zs2 = 0.5 * np.minimum(resid * resid / v, Seasonal.ZS2_CLIP)
        nll_seasonal = 0.5 * (LOG_2PI + np.log(v)) + zs2
        gain = np.maximum(nll - nll_seasonal, 0.0) + np.maximum(0.5 * z * z - zs2, 0.0)
    return np.where(gate > 0, gate * gain, 0.0).astype(nll.dtype, copy=False)


class Seasonal:
    """Per-stream, per-channel time-of-day profile: what a reading is expected to be at its hour.

    The profile predicts the reading's offset from the normaliser's mean as a truncated
    Fourier series of the UTC time of day (`ts` modulo 86,400 s; a stream whose day
    follows another time zone is only phase-shifted, which the series absorbs): a
    constant and `seasonal_harmonics` cosine/sine pairs, learned by least mean squares
    with a per-reading weight set by the time since the stream's previous reading (capped
    at `MAX_STEP`), so the memory is `seasonal_halflife` days whatever the sampling rate.
    A stream read many times a second learns almost nothing per reading (float32), so
    its profile stays flat and the gate off: harmless, by design.

    Evidence: EMAs (same memory) of the squared residual under the profile and under a
    local level (an EMA of the offset with `seasonal_baseline_halflife` hours), both out
    of sample, both clipped at 4 of the local level's standard deviations. The share of
    variance the profile explains beyond the local level, `1 - resid_var / base_var`,
    opens the gate between `seasonal_on` and `seasonal_full`. Nothing is learned and the
    gate stays shut while the normaliser warms up. One float32 table over stream rows
    (per channel: 2 * `seasonal_harmonics` + 1 coefficients, then the two variances and
    the local level; with `context_weight` > 0 then the EMA of the residual and its mean
    square, for the context evidence); with `seasonal_harmonics` 0 it is empty and `step`
    is not called.
    """

    FIELDS = ("table",)
    DAY = 86_400.0
    MAX_STEP = 3_600.0  # seconds one reading may stand for: a reading after a gap is one reading
    MIN_STEP = 60.0  # seconds: a stream learns from its first reading in each minute only
    CLIP = 4.0  # residuals are clipped at this many local-level standard deviations
    VAR_FLOOR = 1e-12  # normalised units
    ZS2_CLIP = 400.0  # 0.5 zs**2 beyond 20 standard deviations has long saturated

    def __init__(
        self, capacity: int, channels: int, config: CalibrationConfig | None = None
    ) -> None:
        self.config = cfg = config or CalibrationConfig()
        k = cfg.seasonal_harmonics
        self._terms = p = 2 * k + 1
        self._context = bool(k) and cfg.context_weight > 0
        # One table, so a wave is one gather and one scatter: per channel the profile's
        # coefficients (constant, cos 1..k, sin 1..k), then resid_var, base_var, level and,
        # with the context term, the residual's EMA and that EMA's mean square.
        width = p + 3 + 2 * self._context
        self.table = np.zeros((capacity, channels if k else 0, width), np.float32)
        self._context_rate = 1.0 - 2.0 ** (-1.0 / cfg.context_halflife)
        self._context_scale = 1.0 / (cfg.context_full - cfg.context_on)
        orders = np.arange(1, k + 1, dtype=np.float64)
        self._orders = np.concatenate([orders, orders])
        self._shift = np.concatenate(
            [np.zeros(k), np.full(k, -0.5 * np.pi)]
        )  # sin x = cos(x - pi/2)
        self._gain = np.concatenate([[1.0], np.full(2 * k, 2.0)])  # E[cos^2] = E[sin^2] = 1/2
        self._neg_rates = -LOG_2 / np.array(
            [cfg.seasonal_halflife * self.DAY, cfg.seasonal_baseline_halflife * 3_600.0]
        )
        self._gate_scale = 1.0 / (cfg.seasonal_full - cfg.seasonal_on)

    @property
    def enabled(self) -> bool:
        return self.config.seasonal_harmonics > 0

    @property
    def coef(self) -> np.ndarray:
        return self.table[..., : self._terms]

    def reset(self, rows: np.ndarray) -> None:
        self.table[rows] = 0

    def step(
        self,
        rows: Rows,
        x: np.ndarray,
        ts: np.ndarray,
        dt: np.ndarray,
        scale: Scale,
        warmup: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """(residual, its variance, gate, context evidence), each [B, C], of readings `x` [B, C]
        at times `ts` [B] under each stream's profile before them (residual and variance in the
        normaliser's standard deviations; context evidence in RMS of the residual's EMA beyond
        `context_level`, gated, 0 with the context term off), or None when no stream of the
        wave has its gate open; then learn them.

        `dt` [B] is the time since the stream's previous reading (NaN: none); `scale` is the
        normaliser's statistics before this reading. A profile of the day has nothing to
        learn from more than one reading a minute, so a stream learns only from its first
        reading in each minute of the clock (`MIN_STEP`), weighted as standing for a
        minute: a fast stream then costs almost nothing per reading and still learns in
        float32. The work is done only for the streams of the wave that learn or whose
        gate is open; on a stream read once a minute or slower that is every reading.
        """
        table = gather(self.table, rows)
        ready = scale.count >= warmup
        p = self._terms
        # Where the gate is open: the explained share 1 - resid_var / base_var above
        # `seasonal_on`, without dividing (both are >= 0; a base_var of 0 is never open).
        opened = table[..., p] < (1.0 - self.config.seasonal_on) * table[..., p + 1]
        opened = (opened.any(axis=1) if opened.shape[1] > 1 else opened[:, 0]) & ready
        # np.floor of a quotient, not //: a float floor_divide is 8x slower.
        minute = np.floor(ts / self.MIN_STEP)
        due = minute != np.floor((ts - dt) / self.MIN_STEP)  # a first reading (NaN) is due
        work = due | opened
        if not some(work):
            return None
        if every(work):
            return self._advance(rows, table, x, ts, dt, due, scale, ready, opened.any())
        idx = np.flatnonzero(work)
        part = self._advance(
            row_array(rows)[idx],
            table[idx],
            x[idx],
            ts[idx],
            dt[idx],
            due[idx],
            scale.take(idx),
            ready[idx],
            opened.any(),
        )
        if part is None:
            return None
        whole = np.zeros_like(x), np.ones_like(x), np.zeros_like(x), np.zeros_like(x)
        for out, value in zip(whole, part, strict=True):
            out[idx] = value
        return whole

    def _share(self, resid_var: np.ndarray, base_var: np.ndarray, ready: np.ndarray) -> np.ndarray:
        """[B, C]: the share of variance each channel's profile explains beyond the local level
        (0 before there is evidence)."""
        if ready.all() and (base_var > 0).all():
            return 1.0 - resid_var / base_var
        with np.errstate(divide="ignore", invalid="ignore"):
            share = 1.0 - resid_var / base_var
        return np.where(ready[:, None] & (base_var > 0), share, 0.0)

    @staticmethod
    def _ramp(share: np.ndarray, on: float, scale: float) -> np.ndarray:
        """A gate in [0, 1] from an explained share: 0 up to `on`, 1 from `on + 1 / scale`."""
        return np.minimum(np.maximum((share - on) * scale, 0.0), 1.0)

    def _advance(
        self,
        rows: Rows,
        table: np.ndarray,
        x: np.ndarray,
        ts: np.ndarray,
        dt: np.ndarray,
        due: np.ndarray,
        scale: Scale,
        ready: np.ndarray,
        wanted: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """`step` for the streams that have work: the result (when `wanted`), then learning
        for those `due`. The steady state (every stream past warm-up, with evidence) skips
        the masks."""
        mean, std = scale.mean, scale.std
        p = self._terms
        table = table.astype(np.float64)
        coef, resid_var, base_var, level = (
            table[..., :p],
            table[..., p],
            table[..., p + 1],
            table[..., p + 2],
        )
        # fmod, not mod: the same phase for a time before 1970, and faster. The cosines in
        # float32 are 15x faster and off by 1e-6 rad at most (a tenth of a second of the day).
        phase = np.multiply.outer(np.fmod(ts, self.DAY) * (2.0 * np.pi / self.DAY), self._orders)
        phase += self._shift
        basis = np.empty((len(ts), p))
        basis[:, 0] = 1.0
        basis[:, 1:] = np.cos(phase.astype(np.float32))
        offset = x - mean
        miss = offset - np.matmul(coef, basis[:, :, None])[..., 0]
        base_miss = offset - level
        result, share = None, None
        if wanted:
            share = self._share(resid_var, base_var, ready)
            gate = self._ramp(share, self.config.seasonal_on, self._gate_scale)
            result = [miss / std, resid_var / (std * std), gate, np.zeros_like(miss)]

        # Learn. The first reading past warm-up starts both variances at the same value.
        steady = bool(ready.all()) and bool((base_var > 0).all())
        # NaN (a stream's first reading) stands for no time: it only starts the level.
        step = np.nan_to_num(np.minimum(np.maximum(dt, self.MIN_STEP), self.MAX_STEP))
        step[~due] = 0.0
        if not steady:
            first = due[:, None] & ready[:, None] & (base_var == 0)
            square = offset * offset
            resid_var = np.where(first, square, resid_var)
            base_var = np.where(first, square, base_var)
        rates = -np.expm1(np.multiply.outer(step, self._neg_rates))
        if not steady:
            rates[~ready, 0] = 0.0  # the profile and its evidence wait for the normaliser
        rate, base_rate = rates[:, :1], rates[:, 1:]
        bound = self.CLIP * np.sqrt(base_var)
        miss = np.minimum(np.maximum(miss, -bound), bound)
        base_miss = np.minimum(np.maximum(base_miss, -bound), bound)
        new = np.empty_like(table)
        new[..., :p] = coef + (rate * miss)[:, :, None] * (basis * self._gain)[:, None, :]
        new[..., p] = resid_var + rate * (miss * miss - resid_var)
        new[..., p + 1] = base_var + rate * (base_miss * base_miss - base_var)
        new_level = level + base_rate * base_miss
        if not steady:  # while the normaliser warms up the level follows the offset
            warming = due[:, None] & ~(ready[:, None] & ~first)
            new_level = np.where(warming, offset, new_level)
        new[..., p + 2] = new_level
        if self._context:
            evidence = self._learn_context(table, new, miss, due, ready, rate, steady)
            if result is not None:
                # Only the reading that moved the EMA speaks for it (at most one a minute).
                evidence *= self._ramp(share, self.config.context_on, self._context_scale)
                evidence[~due] = 0.0
                result[3] = evidence
        self.table[rows] = new
        return None if result is None else tuple(result)

    def _learn_context(
        self,
        table: np.ndarray,
        new: np.ndarray,
        miss: np.ndarray,
        due: np.ndarray,
        ready: np.ndarray,
        rate: np.ndarray,
        steady: bool,
    ) -> np.ndarray:
        """Context evidence [B, C], ungated: how many RMS the EMA of the (clipped) residual lies
        beyond `context_level`, against the RMS before this reading; then learn both into `new`.

        The RMS starts at the local level's variance and learns with the profile's rate, each
        squared EMA capped at 16 times it, so one long departure does not teach it much.
        """
        p = self._terms
        sustained, mean_square = table[..., p + 3], table[..., p + 4]
        mean_square = np.where(mean_square > 0, mean_square, new[..., p + 1])
        sustained = sustained + (self._context_rate * due)[:, None] * (miss - sustained)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.abs(sustained) / np.sqrt(mean_square)
        evidence = np.where(mean_square > 0, ratio - self.config.context_level, 0.0)
        evidence = np.minimum(np.maximum(evidence, 0.0), EVIDENCE_CLIP)
        square = np.minimum(sustained * sustained, 16.0 * mean_square)
        mean_square = mean_square + rate * (square - mean_square)
        if not steady:  # both start when the profile starts learning
            sustained = np.where(ready[:, None], sustained, 0.0)
            mean_square = np.where(ready[:, None], mean_square, 0.0)
        new[..., p + 3] = sustained
        new[..., p + 4] = mean_square
        return evidence
