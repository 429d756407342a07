"""From a prediction to a decision: raw surprise, a per-stream calibrated score, a flag with hysteresis.

Raw negative log-likelihoods are not comparable across streams (a noisy sensor is
always a little surprised, a clean one rarely), so each stream's raw scores are
judged against that stream's own recent history. One threshold then means the
same thing everywhere. Thresholding is kept apart from scoring, so an operator can
move it without touching the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError
from .normalize import Scale

LOG_2PI = float(np.log(2.0 * np.pi))
LOG_2 = float(np.log(2.0))


def surprise(
    z: np.ndarray,
    mean: np.ndarray,
    log_var: np.ndarray,
    seasonal: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(raw surprise [B], the channel contributing most [B]) of normalised readings `z` [B, C].

    Two horizons, added per channel: the Gaussian negative log-likelihood under the
    model's one-step prediction (sudden changes: a spike, a broken rhythm) and 0.5 z**2,
    the reading's surprise under the stream's long-run distribution (sustained changes
    the one-step model follows within a few readings: a level shift, a drift). The
    second term alone is a z-score detector; together they rank NAB's anomalies better
    than either (docs/EVALUATION.md has the ablation).

    `seasonal` (from `Seasonal.step`: residual, its variance, gate, each [B, C]; a fourth
    element, the context evidence, is not used here) lets the
    stream's time-of-day expectation explain the reading: where the reading is likelier
    under it than under the model (or than under the long-run distribution), that term
    is lowered towards the seasonal one, in proportion to the gate (`explained`).
    """
    terms = 0.5 * (LOG_2PI + log_var + (z - mean) ** 2 * np.exp(-log_var) + z * z)
    if seasonal is not None and seasonal[2].any():  # a gate open somewhere in the wave
        nll = 0.5 * (LOG_2PI + log_var + (z - mean) ** 2 * np.exp(-log_var))
        terms -= explained(z, nll, *seasonal[:3])
    if terms.shape[1] == 1:  # one channel is the one contributing (an argmax over it is 6 us)
        return terms.ravel(), np.zeros(len(terms), np.intp)
    return terms.sum(axis=1), terms.argmax(axis=1)


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


@dataclass(frozen=True)
class CalibrationConfig:
    """How a stream's raw scores become a score in [0, 1]: one minus a tail probability.

    Each stream learns the upper tail of its own raw scores the way extreme-value
    statistics does it (peaks over threshold): a high quantile `u` of the raw scores,
    tracked online, and the mean excess `b` of the scores above it. Above `u` the tail
    is taken as exponential, so a raw score `x` has the tail probability
    `p = (1 - quantile) * exp(-(x - u) / b)`; the score is `1 - p`. Below `u`, where
    only the ranking matters, log p is interpolated down to p = 1/2 at the stream's
    mean and towards 1 below it, so the score keeps ordering every reading.

    Why a tail and not a mean and a standard deviation: raw surprise is heavy-tailed
    and its tail differs per stream (a spiky count is often very surprised, a smooth
    temperature rarely), and a Gaussian fitted to the bulk says nothing about the tail.
    Judging each reading against its own stream's tail is what makes one threshold
    mean the same on every stream. On NAB this moved the score from 0 to 44.7
    (docs/EVALUATION.md has the ablation).

    `warmup` readings give exact (running) mean and mean absolute deviation, from
    which `u` and `b` start; then the mean/deviation are EMAs with `halflife`, `u`
    moves by `quantile_rate * b` per reading (up on an exceedance, down otherwise, in
    the proportion that settles on `quantile`), and `b` is an EMA over exceedances
    with `tail_halflife`. `floor` bounds `b` and the deviation from below where they
    divide, so a stream whose raw scores never vary does not call its first wobble
    impossible. Everything else is equivariant, so a stream's scores do not change when
    its raw scores are shifted or scaled.

    The scale `b` of a young stream's tail is estimated from few exceedances (about
    `n * (1 - quantile)` after n readings), and treating it as known makes the stream's
    first large surprises look rarer than the data can tell. So beyond `u` the tail is the
    posterior predictive of an exponential whose scale is estimated from
    `k = tail_prior + n * (1 - quantile)` excesses (a Lomax):
    `-log p = -log(1 - quantile) + k * log(1 + (x - u) / (k * b))`, which tends to the
    exponential's `(x - u) / b` as k grows and grows only logarithmically far beyond `b`
    while k is small. `tail_prior` (0 = off: the scale taken as known) counts the
    warm-up's guess of `b` as that many excesses. Computed only for the readings beyond
    `u` (about 0.5%). On NAB 61.88 / 56.34 / 69.70 -> 63.02 / 56.09 / 70.75 (standard /
    low FP / low FN; 385 -> 379 false-positive rows and 99 -> 100 windows at the standard
    threshold); `tail_prior` 2 / 5 / 10 scored 62.75 / 56.06 / 70.57, 62.97 / 56.06 /
    70.72, 62.05 / 55.73 / 69.82. The low-FP profile loses a little: at its threshold
    3 fewer windows (84 -> 81; e.g. the first window of `grok_asg_anomaly`, about 1,100
    readings into its file, now 9.7 nats against 11.0) for 24 fewer false-positive rows
    (109 -> 85, spread over 15 files).

    Onset emphasis: a reading whose -log p does not beat the stream's recent peak (a
    maximum of -log p decaying with `onset_halflife`) has its -log p multiplied by
    `repeat_factor`. NAB, like an operator, rewards the first alert of an episode and
    counts every further one outside a labelled window as a false alarm, and the
    readings right after a surprising one are surprising too (the model and the
    normaliser are still catching up). One float per stream; on NAB +1.7 standard
    (docs/EVALUATION.md has the ablation).

    Novelty: a reading beyond the range the stream has seen adds `novelty_weight`
    nats to -log p per standard deviation (the normaliser's) that it lies beyond it.
    The range is a per-channel envelope of the values: a running maximum and minimum
    that relax towards the normaliser's mean with `novelty_halflife` readings (0: they
    never relax), so one glitch does not mask the high end forever. The tail alone
    judges each stream against its own past surprises, so a record that is only a
    little more surprising than the stream's usual spikes cannot outrank them; the
    envelope says that a value is new. Two floats per channel; on NAB +5.4 standard,
    +12.9 low FP, +4.4 low FN (docs/EVALUATION.md has the ablation).
    The distance is measured in the larger of the normaliser's standard deviation and
    `novelty_range_share` of the envelope's width (0 = the standard deviation alone). On
    a stream that is mostly flat with rare large values (disk writes, network bytes,
    spiky counts) the standard deviation collapses during the flat stretches, so a record
    only a few per cent above the old maximum lay 20 "standard deviations" beyond it and
    scored like the largest anomaly; measured against a share of the range the stream has
    shown, it is only as new as it is. No state (the envelope is already kept), about
    2 us per wave of 1,024; on NAB (with periodic recurrence, below) 61.45 / 55.38 / 69.42
    -> 61.88 / 56.34 / 69.70 (standard / low FP / low FN; false-positive rows at the
    low-FP threshold 120 -> 109, the same 84 windows); shares 0.03 / 0.1 scored
    61.82 / 56.53 / 69.63 and 61.88 / 55.87 / 69.70.

    Seasonal: each channel learns a time-of-day profile (`seasonal_harmonics` harmonics
    of the UTC day, from each reading's own timestamp; 0 = off) with
    `seasonal_halflife` days of memory, and the profile explains away the part of the
    model's NLL and of 0.5 z**2 that the time of day accounts for (`explained`). It is
    switched on per channel only by evidence: the share of the variance the profile
    explains, measured out of sample (each prediction made before its reading is
    learned) against a local level with `seasonal_baseline_halflife` hours, so that a
    random walk, which a slowly learned profile would otherwise track, does not count
    as daily. The gate fades in from 0 at the share `seasonal_on` to 1 at
    `seasonal_full`. Ten float32 per channel with 3 harmonics; on NAB +1.6 standard,
    +0.9 low FP, +1.6 low FN (docs/EVALUATION.md has the ablation).

    Context: the seasonal term only explains surprise away, so a value that is normal
    at noon but comes at midnight (a daily rise that does not happen, a peak that stays
    low) was as quiet as any value in range: the one-step model follows the slow change
    and the normaliser's z stays small. Each channel also keeps an EMA of the profile's
    out-of-sample residual over `context_halflife` learning readings (the readings the
    profile learns from: one a minute at most), clipped like the residual itself, so a
    deviation that lasts counts and a single spike does not; and the RMS of that EMA, with
    the profile's memory. Where the EMA exceeds `context_level` times its RMS, each RMS
    beyond adds `context_weight` nats to -log p. Only on streams whose profile clearly
    holds: a second gate on the same explained share, from `context_on` to `context_full`
    (stricter than the seasonal gate, because a stream that is only a little daily has
    sustained departures from its profile all the time: with the gate from 0.3 to 0.4
    instead NAB scored 60.35 / 54.19 / 68.58, against 61.08 / 55.37 / 69.46 with both terms
    as first measured). Two
    float32 per channel; on NAB +1.5 standard, +1.6 low FP, +1.6 low FN (two more windows,
    both contextual anomalies of NAB's artificial daily files; docs/EVALUATION.md).

    Recurrence: a surprise that comes at the time of day (within `recurrence_tolerance`
    seconds) of an earlier surprise of the same stream, 1 to `recurrence_days` days
    before, is part of the stream's routine (a nightly job, a daily batch, a scheduled
    restart) that a 3-harmonic profile cannot draw: its -log p is multiplied by
    `recurrence_factor` (1 = off). A surprise is a reading whose -log p reaches
    `recurrence_level` (6.9 nats: p = 1e-3, the daemon's default `engine.enter`);
    `recurrence_slots` remembered times per stream (a reading within the tolerance of a
    remembered time refreshes it, else it replaces the oldest), so a repeat, damped or
    not, keeps the routine remembered. The first occurrence always scores in full. Every
    stream's own noise passes 6.9 nats about once in a thousand readings (that is what the
    calibration means) and takes a slot too, so with few slots a routine can be pushed out
    of memory between two of its days; 4 slots scored at least as well as 2 on NAB. Only
    surprises are judged, so a wave without one costs a comparison (damping every reading
    near a remembered time as well scored 0.1 higher on NAB's standard and low-FN profiles
    and cost 45-80 us per wave of 1,024). `recurrence_slots` float64 per stream; on NAB
    +0.7 standard, +1.4 low FP, +0.9 low FN (docs/EVALUATION.md).
    Routines need not be daily: with `recurrence_periodic` (1 = on) a surprise that
    comes one interval after a remembered surprise, where that interval separates two
    remembered surprises (within the tolerance; periods of 4 tolerances or more), is the
    third beat of a routine of any period (a job every 8 hours, a batch every 100
    readings) and is damped the same way. It reads the same slots, so it needs no state,
    and it costs about 7 us, only on a wave that has a surprise. On NAB (without the
    range share, above) 60.94 / 55.37 / 69.36 -> 61.45 / 55.38 / 69.42: the regular
    spikes of `art_increase_spike_density` stop alerting (30 false-positive rows -> 1),
    and that file's window, which had been hit only by one of those regular spikes, is
    missed (100 -> 99 windows, 425 -> 396 false-positive rows at the standard threshold).
    """

    warmup: int = 50
    halflife: float = 2000.0
    quantile: float = 0.995
    quantile_rate: float = 0.2
    tail_halflife: float = 50.0
    floor: float = 0.01
    tail_prior: float = 3.0
    onset_halflife: float = 30.0
    repeat_factor: float = 0.5
    novelty_weight: float = 16.0
    novelty_halflife: float = 100_000.0
    novelty_range_share: float = 0.05
    seasonal_harmonics: int = 3
    seasonal_halflife: float = 3.0
    seasonal_baseline_halflife: float = 6.0
    seasonal_on: float = 0.05
    seasonal_full: float = 0.15
    context_weight: float = 16.0
    context_level: float = 2.5
    context_halflife: float = 24.0
    context_on: float = 0.4
    context_full: float = 0.5
    recurrence_factor: float = 0.5
    recurrence_level: float = 6.9
    recurrence_tolerance: float = 900.0
    recurrence_days: int = 3
    recurrence_slots: int = 4
    recurrence_periodic: int = 1

    def __post_init__(self) -> None:
        checks = (
            ("warmup", self.warmup >= 1, "must be >= 1"),
            ("halflife", self.halflife > 0, "must be > 0"),
            ("quantile", 0 < self.quantile < 1, "must be in (0, 1)"),
            ("quantile_rate", self.quantile_rate > 0, "must be > 0"),
            ("tail_halflife", self.tail_halflife > 0, "must be > 0"),
            ("floor", self.floor > 0, "must be > 0"),
            ("tail_prior", self.tail_prior >= 0, "must be >= 0 (0 = off)"),
            ("onset_halflife", self.onset_halflife > 0, "must be > 0"),
            ("repeat_factor", 0 <= self.repeat_factor <= 1, "must be in [0, 1]"),
            ("novelty_weight", self.novelty_weight >= 0, "must be >= 0 (0 = off)"),
            ("novelty_halflife", self.novelty_halflife >= 0, "must be >= 0 (0 = never relax)"),
            ("novelty_range_share", self.novelty_range_share >= 0, "must be >= 0 (0 = off)"),
            ("seasonal_harmonics", self.seasonal_harmonics >= 0, "must be >= 0 (0 = off)"),
            ("seasonal_halflife", self.seasonal_halflife > 0, "must be > 0 (days)"),
            (
                "seasonal_baseline_halflife",
                self.seasonal_baseline_halflife > 0,
                "must be > 0 (hours)",
            ),
            ("seasonal_on", 0 <= self.seasonal_on < 1, "must be in [0, 1)"),
            (
                "seasonal_full",
                self.seasonal_on < self.seasonal_full <= 1,
                "must be in (seasonal_on, 1]",
            ),
            ("context_weight", self.context_weight >= 0, "must be >= 0 (0 = off)"),
            ("context_level", self.context_level >= 0, "must be >= 0"),
            ("context_halflife", self.context_halflife > 0, "must be > 0 (readings)"),
            (
                "context_on",
                self.seasonal_on <= self.context_on < 1,
                "must be in [seasonal_on, 1)",
            ),
            (
                "context_full",
                self.context_on < self.context_full <= 1,
                "must be in (context_on, 1]",
            ),
            ("recurrence_factor", 0 <= self.recurrence_factor <= 1, "must be in [0, 1] (1 = off)"),
            ("recurrence_level", self.recurrence_level > 0, "must be > 0 (nats)"),
            ("recurrence_tolerance", self.recurrence_tolerance > 0, "must be > 0 (seconds)"),
            ("recurrence_days", self.recurrence_days >= 1, "must be >= 1"),
            ("recurrence_slots", self.recurrence_slots >= 1, "must be >= 1"),
            ("recurrence_periodic", self.recurrence_periodic in (0, 1), "must be 0 or 1"),
        )
        for key, ok, message in checks:
            if not ok:
                raise ConfigError(f"calibration.{key}: {message}, got {getattr(self, key)!r}")

    def to_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict) -> CalibrationConfig:
        return cls(
            **{k: type(getattr(cls, k))(v) for k, v in d.items() if k in cls.__dataclass_fields__}
        )

    def with_overrides(self, text: str) -> CalibrationConfig:
        """This configuration with `text`, a JSON object of some of its fields, applied.

        How an operator changes scoring without re-exporting the model (the daemon's
        `engine.calibration`, `streamer evaluate --calibration`), e.g. '{"seasonal_harmonics": 0}'.
        """
        if not text:
            return self
        try:
            overrides = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"not JSON: {e}") from None
        if not isinstance(overrides, dict):
            raise ConfigError(f"must be a JSON object of calibration fields, got {text!r}")
        unknown = sorted(set(overrides) - set(self.__dataclass_fields__))
        if unknown:
            known = ", ".join(self.__dataclass_fields__)
            raise ConfigError(f"unknown calibration field {unknown[0]!r} (known: {known})")
        try:
            return CalibrationConfig.from_dict({**self.to_dict(), **overrides})
        except (TypeError, ValueError) as e:
            raise ConfigError(f"bad calibration value: {e}") from None


class Calibrator:
    """Per-stream raw-score tail statistics, struct of arrays over stream rows."""

    FIELDS = ("count", "mean", "dev", "threshold", "excess", "peak", "recur")
    DAY = 86_400.0

    def __init__(self, capacity: int, config: CalibrationConfig | None = None) -> None:
        self.config = config or CalibrationConfig()
        self.count = np.zeros(capacity, np.int64)
        self.mean = np.zeros(capacity, np.float64)
        self.dev = np.zeros(capacity, np.float64)
        self.threshold = np.zeros(capacity, np.float64)
        self.excess = np.zeros(capacity, np.float64)
        self.peak = np.zeros(capacity, np.float64)  # decaying max of -log p
        # Times (epoch s) of the stream's last surprises; 0: none. Empty when recurrence is off.
        self._recurrence = self.config.recurrence_factor < 1
        slots = self.config.recurrence_slots if self._recurrence else 0
        self.recur = np.zeros((capacity, slots), np.float64)
        self._alpha = 1.0 - 2.0 ** (-1.0 / self.config.halflife)
        self._gamma = 1.0 - 2.0 ** (-1.0 / self.config.tail_halflife)
        self._log_tail = -np.log1p(-self.config.quantile)  # -log P(x > u)
        self._peak_decay = 2.0 ** (-1.0 / self.config.onset_halflife)

    def reset(self, rows: np.ndarray) -> None:
        for name in self.FIELDS:
            getattr(self, name)[rows] = 0

    def step(
        self,
        rows: np.ndarray,
        raw: np.ndarray,
        novelty: np.ndarray | None = None,
        context: np.ndarray | None = None,
        ts: np.ndarray | None = None,
    ) -> np.ndarray:
        """Calibrated scores of `raw` [B] against each stream's history before it; then learn it.

        `novelty` [B] (from `Envelope.step`, in standard deviations) adds
        `novelty_weight` nats per unit to -log p, `context` [B] (from `Seasonal.step`,
        summed over channels) `context_weight` nats per unit; the tail is learned from
        `raw` alone. `ts` [B] (epoch s) lets a surprise that recurs at the time of day of
        an earlier one count as routine (`recurrence_*`); without it nothing is damped.
        A stream scores 0 until it has seen `warmup` raw scores: it has no tail to judge by yet.
        This runs once per wave on every stream, so the arithmetic is done in place and the
        warm-up branches are taken only when some stream in the wave is still warming up.
        """
        cfg = self.config
        raw = np.asarray(raw, np.float64)  # one cast, not one in every mixed-type operation
        n = self.count.take(rows)
        mean, dev, u, b, peak = (
            getattr(self, f).take(rows) for f in ("mean", "dev", "threshold", "excess", "peak")
        )
        warm = n < cfg.warmup
        # Past warm-up (and warm-up is at least one reading) no stream is at its first reading.
        steady = cfg.warmup > 0 and not warm.any()
        miss = raw - mean
        over = raw - u
        above = raw > u
        floored_b = np.maximum(b, cfg.floor)
        log_p = self._log_tail_probability(
            raw, mean, u, np.maximum(dev, cfg.floor), floored_b, miss, over, above
        )
        if cfg.tail_prior:  # the tail's scale is uncertain: a Lomax beyond u (only those rows)
            i = np.flatnonzero(above)
            if len(i):
                k = n[i] * (1.0 - cfg.quantile)
                k += cfg.tail_prior
                beyond = np.log1p(over[i] / (floored_b[i] * k))
                beyond *= k
                log_p[i] = beyond + self._log_tail
        if novelty is not None and cfg.novelty_weight:
            log_p += cfg.novelty_weight * novelty
        if context is not None and cfg.context_weight:
            log_p += cfg.context_weight * context

        recent_peak = np.multiply(peak, self._peak_decay, out=peak)
        # Before the tail is learned -log p means little (a first reading's is huge): no peak yet.
        new_peak = np.maximum(log_p, recent_peak)
        log_p = np.where(log_p > recent_peak, log_p, cfg.repeat_factor * log_p)
        if self._recurrence and ts is not None:
            log_p = self._damp_recurrent(rows, np.asarray(ts, np.float64), log_p, warm)
        score = np.negative(np.expm1(np.negative(log_p, out=log_p), out=log_p), out=log_p)  # 1 - p

        w = self._alpha if steady else np.where(warm, 1.0 / (n + 1.0), self._alpha)
        new_mean = np.multiply(miss, w)
        new_mean += mean
        spread = np.abs(miss, out=miss)
        if not steady:  # a first reading has no mean to miss
            spread = np.where(n > 0, spread, dev)
        new_dev = np.subtract(spread, dev, out=spread)
        new_dev *= w
        new_dev += dev
        tracked = cfg.quantile_rate * floored_b
        tracked *= above - (1.0 - cfg.quantile)
        tracked += u
        learned_b = np.subtract(over, b, out=over)
        learned_b *= self._gamma
        learned_b = np.add(b, learned_b, out=b, where=above)
        if not steady:
            # Until the tail is learned it is guessed from the bulk: 3 deviations up, one deviation wide.
            tracked = np.where(warm, new_mean + 3.0 * new_dev, tracked)
            learned_b = np.where(warm, new_dev, learned_b)
            new_peak[warm] = 0.0
            score[warm] = 0.0
        self.mean[rows] = new_mean
        self.dev[rows] = new_dev
        self.threshold[rows] = tracked
        self.excess[rows] = learned_b
        self.peak[rows] = new_peak
        self.count[rows] = n + 1
        return score.astype(np.float32)

    def _damp_recurrent(
        self, rows: np.ndarray, ts: np.ndarray, log_p: np.ndarray, warm: np.ndarray
    ) -> np.ndarray:
        """`log_p` with the surprises that recur at the time of day of a remembered one damped
        (in place); then remember this wave's surprises (before damping, so a routine stays
        remembered). Only surprises are looked at, about one reading in a thousand, so a
        wave without one costs a comparison."""
        cfg = self.config
        surprise = log_p >= cfg.recurrence_level
        if not surprise.any():
            return log_p
        i = np.flatnonzero(surprise & ~warm)
        slots = self.recur[rows[i]]
        elapsed = ts[i, None] - slots
        days = np.rint(elapsed / self.DAY)
        near = (np.abs(elapsed - days * self.DAY) <= cfg.recurrence_tolerance) & (
            days <= cfg.recurrence_days
        )
        recurs = (near & (days >= 1)).any(axis=1)
        if cfg.recurrence_periodic:
            recurs |= self._periodic(slots, elapsed)
        # The same time of day (a slot it is near, the same day included) refreshes that
        # slot; a new time of day replaces the oldest (an empty slot, 0, is the oldest).
        slot = np.where(near.any(axis=1), near.argmax(axis=1), slots.argmin(axis=1))
        slots[np.arange(len(i)), slot] = ts[i]
        self.recur[rows[i]] = slots
        log_p[i[recurs]] *= cfg.recurrence_factor
        return log_p

    def _periodic(self, slots: np.ndarray, elapsed: np.ndarray) -> np.ndarray:
        """[m] Whether each surprise comes one interval after a remembered one, where that
        interval is the one between two remembered surprises (within `recurrence_tolerance`):
        the third beat of a routine of any period. Periods under 4 tolerances (an hour by
        default) are not judged: within them three surprises of one burst would match."""
        tol = self.config.recurrence_tolerance
        # (ts - a) - (a - b) for each remembered a (judged only a period of 4 tolerances
        # ago or more) and each remembered b (empty slots are NaN); a - b > 0 follows.
        ahead = np.where(elapsed >= 4.0 * tol, elapsed - slots, np.nan)
        earlier = np.where(slots > 0, slots, np.nan)
        miss = ahead[:, :, None] + earlier[:, None, :]
        return (np.abs(miss, out=miss) <= tol).any(axis=(1, 2))

    def _log_tail_probability(
        self,
        raw: np.ndarray,
        mean: np.ndarray,
        u: np.ndarray,
        dev: np.ndarray,
        b: np.ndarray,
        miss: np.ndarray,
        over: np.ndarray,
        above: np.ndarray,
    ) -> np.ndarray:
        """-log p, increasing in `raw`: the exponential tail beyond the threshold `u`; from the
        stream's mean (p = 1/2) up to `u` a straight line; below the mean, decaying to 0.

        `dev` and `b` are floored. `miss` (raw - mean), `over` (raw - u) and `above` (raw > u)
        come from the caller, which needs them too; they are left unchanged.
        """
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            log_p = np.minimum(miss, 0.0)
            log_p /= dev
            np.exp(log_p, out=log_p)
            log_p *= LOG_2
            # The straight line; 0/0 (a stream whose threshold sits at its mean) counts as its start.
            rise = np.divide(miss, u - mean)
            np.fmin(np.fmax(rise, 0.0, out=rise), 1.0, out=rise)
            rise *= self._log_tail - LOG_2
            rise += LOG_2
            log_p = np.where(raw >= mean, rise, log_p)  # a masked copy is slower at half density
            beyond = np.divide(over, b)
            beyond += self._log_tail
            np.copyto(log_p, beyond, where=above)
        return log_p


class Envelope:
    """Per-stream, per-channel range of the values seen: how far a reading lies beyond it.

    A running maximum and minimum (float64, sensor units) that relax towards the
    normaliser's mean with `novelty_halflife` readings (0: never) and always hold that
    mean; the distance beyond them is measured in the normaliser's standard deviation,
    or in `novelty_range_share` of their width where that is larger. Struct of arrays
    over stream rows, like the normaliser.
    """

    FIELDS = ("high", "low")
    CLIP = 20.0  # standard deviations per channel; beyond it -log p has long saturated

    def __init__(
        self, capacity: int, channels: int, config: CalibrationConfig | None = None
    ) -> None:
        self.config = config or CalibrationConfig()
        self.high = np.zeros((capacity, channels), np.float64)
        self.low = np.zeros((capacity, channels), np.float64)
        halflife = self.config.novelty_halflife
        self._decay = 2.0 ** (-1.0 / halflife) if halflife > 0 else 1.0

    def reset(self, rows: np.ndarray) -> None:
        self.high[rows] = 0.0
        self.low[rows] = 0.0

    def step(
        self,
        rows: np.ndarray,
        x: np.ndarray,
        scale: Scale,
        warmup: int,
    ) -> np.ndarray:
        """Novelty [B] of readings `x` [B, C]: standard deviations (or shares of the range, see
        `novelty_range_share`) beyond the envelope, summed over channels; then widen the
        envelope to hold them.

        `scale` is the normaliser's statistics before this reading. The envelope starts at
        a stream's first reading (count 0); novelty is 0 while the normaliser is warming up
        (count < `warmup`): every early value is new.
        """
        mean, std, count = scale.mean, scale.std, scale.count
        high = self._relax(self.high.take(rows, axis=0), mean, np.maximum)
        low = self._relax(self.low.take(rows, axis=0), mean, np.minimum)
        if not count.all():  # a stream's first reading starts its envelope
            first = (count == 0)[:, None]
            high = np.where(first, x, high)
            low = np.where(first, x, low)
        # The envelope holds the mean, so a reading lies beyond one side of it at most.
        beyond = np.maximum(np.maximum(x - high, low - x), 0.0)
        share = self.config.novelty_range_share
        beyond /= np.maximum(std, share * (high - low)) if share else std
        np.minimum(beyond, self.CLIP, out=beyond)
        novelty = beyond[:, 0] if beyond.shape[1] == 1 else beyond.sum(axis=1)
        self.high[rows] = np.maximum(high, x, out=high)
        self.low[rows] = np.minimum(low, x, out=low)
        warm = count >= warmup
        return novelty if warm.all() else np.where(warm, novelty, 0.0)

    def _relax(self, edge: np.ndarray, mean: np.ndarray, outward) -> np.ndarray:
        """`edge` moved towards `mean` by one reading's decay, never past it (in place)."""
        edge -= mean
        edge *= self._decay
        edge += mean
        return outward(edge, mean, out=edge)


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
        rows: np.ndarray,
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
        table = self.table.take(rows, axis=0)
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
        if not work.any():
            return None
        if work.all():
            return self._advance(rows, table, x, ts, dt, due, scale, ready, opened.any())
        idx = np.flatnonzero(work)
        part = self._advance(
            rows[idx],
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
        rows: np.ndarray,
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
        basis = np.empty((len(rows), p))
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
        evidence = np.minimum(np.maximum(evidence, 0.0), Envelope.CLIP)
        square = np.minimum(sustained * sustained, 16.0 * mean_square)
        mean_square = mean_square + rate * (square - mean_square)
        if not steady:  # both start when the profile starts learning
            sustained = np.where(ready[:, None], sustained, 0.0)
            mean_square = np.where(ready[:, None], mean_square, 0.0)
        new[..., p + 3] = sustained
        new[..., p + 4] = mean_square
        return evidence


def hysteresis(
    anomalous: np.ndarray, score: np.ndarray, enter: float, leave: float, may_alert: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(new flags, entered, left): enter at `enter`, leave below `leave`, never while warming up."""
    entered = ~anomalous & (score >= enter) & may_alert
    left = anomalous & (score < leave)
    return (anomalous | entered) & ~left, entered, left
