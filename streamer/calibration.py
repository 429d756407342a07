"""Every setting of the score, in one validated dataclass: how raw surprise becomes a score.

The daemon reads it from the model's metadata and `engine.calibration` (JSON overrides)
at start-up; `streamer evaluate --calibration` uses the same parser. Each field's
docstring paragraph says why the term exists and what it measured on NAB
(docs/EVALUATION.md has the ablation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .errors import ConfigError

EVIDENCE_CLIP = 20.0  # units of evidence (deviations, RMS) beyond which -log p has long saturated


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
    of memory between two of its days; 4 slots scored at least as well as 2 on NAB, and
    8 slots with 5 days better than 4 with 3 (NAB standard / low FP / low FN 63.02 /
    56.09 / 70.75 -> 63.54 / 56.68 / 71.09, 100/116 windows at the standard threshold,
    false-positive rows 379 -> 362, low-FP windows 81 -> 83; 6 / 7 slots with 3 days
    63.33 / 63.42 standard, 9 / 10 / 16 slots lose a window, 62.81 / 62.90 / 63.04; 8 slots
    with 4 / 7 days 63.42 / 56.58 / 71.02 and 63.89 / 56.11 / 71.33; a remembered time
    matched 7 days back as well, with 3 days, 63.21 / 55.38 / 70.87 with 4 slots and
    63.66 / 55.83 / 71.18 with 8: low FP loses). The wider memory costs about 3 us on a
    wave of 1,024 that has surprises (the periodic check compares slot pairs). Only
    surprises are judged, so a wave without one costs a comparison (damping every reading
    near a remembered time as well scored 0.1 higher on NAB's standard and low-FN profiles
    and cost 45-80 us per wave of 1,024 in a scratch timing of that variant, which is not
    kept). `recurrence_slots` float64 per stream; on NAB
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
    recurrence_days: int = 5
    recurrence_slots: int = 8
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
