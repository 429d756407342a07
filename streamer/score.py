"""From a prediction to a decision: raw surprise, a per-stream calibrated score, a flag with hysteresis.

Raw negative log-likelihoods are not comparable across streams (a noisy sensor is
always a little surprised, a clean one rarely), so each stream's raw scores are
judged against that stream's own recent history. One threshold then means the
same thing everywhere. Thresholding is kept apart from scoring, so an operator can
move it without touching the model.
"""

from __future__ import annotations

import numpy as np

from .calibration import EVIDENCE_CLIP, CalibrationConfig
from .normalize import Scale
from .seasonal import LOG_2, LOG_2PI, explained
from .waveops import Rows, every, gather, row_array, scatter, some


def surprise(
    z: np.ndarray,
    mean: np.ndarray,
    log_var: np.ndarray,
    seasonal: tuple[np.ndarray, ...] | None = None,
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
    if seasonal is not None and some(seasonal[2]):  # a gate open somewhere in the wave
        nll = 0.5 * (LOG_2PI + log_var + (z - mean) ** 2 * np.exp(-log_var))
        terms -= explained(z, nll, *seasonal[:3])
    if terms.shape[1] == 1:  # one channel is the one contributing (an argmax over it is 6 us)
        return terms.ravel(), np.zeros(len(terms), np.intp)
    return terms.sum(axis=1), terms.argmax(axis=1)


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
        rows: Rows,
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
        n = gather(self.count, rows)
        mean, dev, u, b, peak = (
            gather(getattr(self, f), rows) for f in ("mean", "dev", "threshold", "excess", "peak")
        )
        warm = n < cfg.warmup
        # Past warm-up (and warm-up is at least one reading) no stream is at its first reading.
        steady = cfg.warmup > 0 and not some(warm)
        miss = raw - mean
        over = raw - u
        above = raw > u
        floored_b = np.maximum(b, cfg.floor)
        log_p = self._log_tail_probability(
            raw, mean, u, np.maximum(dev, cfg.floor), floored_b, miss, over, above
        )
        if cfg.tail_prior:  # the tail's scale is uncertain: a Lomax beyond u (only those rows)
            i = above.nonzero()[0]
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
        self, rows: Rows, ts: np.ndarray, log_p: np.ndarray, warm: np.ndarray
    ) -> np.ndarray:
        """`log_p` with the surprises that recur at the time of day of a remembered one damped
        (in place); then remember this wave's surprises (before damping, so a routine stays
        remembered). Only surprises are looked at, about one reading in a thousand, so a
        wave without one costs a comparison."""
        cfg = self.config
        surprise = log_p >= cfg.recurrence_level
        if not some(surprise):
            return log_p
        i = np.flatnonzero(surprise & ~warm)
        at = row_array(rows)[i]
        slots = self.recur[at]
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
        self.recur[at] = slots
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
        With `tail_prior` the rows beyond `u` (about one in a hundred) are left as they come:
        `step` puts the Lomax there.

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
            if not self.config.tail_prior:
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
    CLIP = EVIDENCE_CLIP  # standard deviations per channel

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
        rows: Rows,
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
        high = self._relax(gather(self.high, rows), mean, np.maximum)
        low = self._relax(gather(self.low, rows), mean, np.minimum)
        if not every(count):  # a stream's first reading starts its envelope
            first = (count == 0)[:, None]
            high = np.where(first, x, high)
            low = np.where(first, x, low)
        # The envelope holds the mean, so a reading lies beyond one side of it at most.
        beyond = np.maximum(np.maximum(x - high, low - x), 0.0)
        share = self.config.novelty_range_share
        beyond /= np.maximum(std, share * (high - low)) if share else std
        np.minimum(beyond, self.CLIP, out=beyond)
        novelty = beyond[:, 0] if beyond.shape[1] == 1 else beyond.sum(axis=1)
        scatter(self.high, rows, np.maximum(high, x, out=high))
        scatter(self.low, rows, np.minimum(low, x, out=low))
        warm = count >= warmup
        return novelty if every(warm) else np.where(warm, novelty, 0.0)

    def _relax(self, edge: np.ndarray, mean: np.ndarray, outward) -> np.ndarray:
        """`edge` moved towards `mean` by one reading's decay, never past it (in place)."""
        edge -= mean
        edge *= self._decay
        edge += mean
        return outward(edge, mean, out=edge)


def hysteresis(
    anomalous: np.ndarray, score: np.ndarray, enter: float, leave: float, may_alert: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(new flags, entered, left): enter at `enter`, leave below `leave`, never while warming up."""
    entered = ~anomalous & (score >= enter) & may_alert
    left = anomalous & (score < leave)
    return (anomalous | entered) & ~left, entered, left
