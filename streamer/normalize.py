"""The model's inputs, computed per stream and online: normalised values and the time gap.

One model serves sensors of every scale, so each stream keeps its own running mean
and variance and the model only ever sees z-scores. Training imports this module and
feeds each series through it sequentially, so the model learns on exactly the inputs
it gets in service. Both classes are struct-of-arrays over stream rows so the engine
can update a whole batch with a handful of numpy operations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .waveops import Rows, every, gather, scatter, some


@dataclass(frozen=True)
class NormalizerConfig:
    """How fast a stream's notion of "normal scale" moves.

    `warmup` readings use exact (Welford) statistics so a new stream is usable at
    once; after that an exponential moving mean/variance with `halflife` readings
    follows slow drift. Readings beyond `clip_sigma` standard deviations move the
    statistics only as far as the clip, so a spike does not hide the next spike.
    """

    warmup: int = 64
    halflife: float = 1000.0
    clip_sigma: float = 4.0
    z_clip: float = 20.0
    rel_floor: float = 1e-3
    abs_floor: float = 1e-9

    def to_dict(self) -> dict[str, float]:
        return {
            "warmup": self.warmup,
            "halflife": self.halflife,
            "clip_sigma": self.clip_sigma,
            "z_clip": self.z_clip,
            "rel_floor": self.rel_floor,
            "abs_floor": self.abs_floor,
        }

    @classmethod
    def from_dict(cls, d: dict) -> NormalizerConfig:
        return cls(
            **{k: type(getattr(cls, k))(v) for k, v in d.items() if k in cls.__dataclass_fields__}
        )


@dataclass(slots=True)
class Scale:
    """A batch of streams' normalisation statistics before their readings: gathered once per
    wave, since the z-scores and the engine's expected values both need them."""

    count: np.ndarray  # [B]
    mean: np.ndarray  # [B, C]
    var: np.ndarray
    std: np.ndarray  # floored: what z-scores divide by

    def take(self, idx: np.ndarray) -> Scale:
        """The statistics of some of the wave's streams (`idx` into the wave)."""
        return Scale(self.count[idx], self.mean[idx], self.var[idx], self.std[idx])


class Normalizer:
    """Per-stream online mean/variance over `channels` values (rows of a preallocated table)."""

    FIELDS = ("count", "mean", "var")

    def __init__(
        self, capacity: int, channels: int, config: NormalizerConfig | None = None
    ) -> None:
        self.config = config or NormalizerConfig()
        self.count = np.zeros(capacity, np.int64)
        self.mean = np.zeros((capacity, channels), np.float64)
        self.var = np.zeros((capacity, channels), np.float64)
        self._alpha = 1.0 - 2.0 ** (-1.0 / self.config.halflife)

    def reset(self, rows: np.ndarray) -> None:
        self.count[rows] = 0
        self.mean[rows] = 0.0
        self.var[rows] = 0.0

    def scale(self, rows: Rows) -> Scale:
        """The statistics of these rows before their next reading (what `step` and the engine use)."""
        mean = gather(self.mean, rows)
        var = gather(self.var, rows)
        return Scale(gather(self.count, rows), mean, var, self._std(mean, var))

    def step(self, rows: Rows, x: np.ndarray, scale: Scale | None = None) -> np.ndarray:
        """z-scores of readings `x` [B, C] under each stream's statistics *before* it, then learn it.

        Scoring-before-learning keeps a reading from explaining itself away. A
        stream's first two readings get z = 0: there is no spread to measure yet.
        `scale` is `scale(rows)` when the caller has it already. The exact (warm-up)
        branch is computed only when some stream of the batch is still in it.
        """
        cfg = self.config
        s = scale if scale is not None else self.scale(rows)
        n, mean, var, std = s.count, s.mean, s.var, s.std
        warm = n < cfg.warmup
        steady = cfg.warmup >= 2 and not some(warm)  # then every stream has had two readings
        delta = x - mean
        z = delta / std
        if not steady:
            z = np.where((n >= 2)[:, None], z, 0.0)
        z.clip(-cfg.z_clip, cfg.z_clip, out=z)

        # The exponential moving statistics, moved by the reading clipped to `clip_sigma`.
        bound = cfg.clip_sigma * std
        d = x.clip(mean - bound, mean + bound)
        d -= mean
        new_mean = self._alpha * d
        new_var = np.multiply(new_mean, d, out=d)
        new_var += var
        new_var *= 1.0 - self._alpha
        new_mean += mean

        if not steady:  # exact (Welford) statistics for the streams still warming up
            n1 = (n + 1)[:, None].astype(np.float64)
            w_mean = mean + delta / n1
            w_var = var + (delta * (x - w_mean) - var) / n1
            new_mean = np.where(warm[:, None], w_mean, new_mean)
            new_var = np.where(warm[:, None], w_var, new_var)
        scatter(self.mean, rows, new_mean)
        scatter(self.var, rows, new_var)
        self.count[rows] = n + 1
        return z.astype(np.float32)

    def _std(self, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
        cfg = self.config
        floor = np.abs(mean)
        floor *= cfg.rel_floor
        np.maximum(floor, cfg.abs_floor, out=floor)
        std = np.maximum(var, 0.0)
        np.sqrt(std, out=std)
        return np.maximum(std, floor, out=std)


@dataclass(frozen=True)
class GapConfig:
    """The time-gap input: log of the time since the previous reading over the stream's typical period."""

    halflife: float = 50.0
    clip: float = 4.0

    def to_dict(self) -> dict[str, float]:
        return {"halflife": self.halflife, "clip": self.clip}

    @classmethod
    def from_dict(cls, d: dict) -> GapConfig:
        return cls(**{k: float(v) for k, v in d.items() if k in cls.__dataclass_fields__})


class GapTracker:
    """Per-stream typical sampling period (an EMA of log gaps) and the gap feature.

    Irregular sensors are the norm: a reading after a long silence means something
    different from one on schedule, so the model is told how late each reading is.
    Gaps are given in seconds and must be positive (the engine drops the rest).
    """

    FIELDS = ("log_period", "seen")

    def __init__(self, capacity: int, config: GapConfig | None = None) -> None:
        self.config = config or GapConfig()
        self.log_period = np.zeros(capacity, np.float64)
        self.seen = np.zeros(capacity, np.int64)
        self._alpha = 1.0 - 2.0 ** (-1.0 / self.config.halflife)

    def reset(self, rows: np.ndarray) -> None:
        self.log_period[rows] = 0.0
        self.seen[rows] = 0

    def period(self, rows: Rows) -> np.ndarray:
        """Typical period in seconds; NaN for streams with no gap seen yet."""
        return np.where(gather(self.seen, rows) > 0, np.exp(gather(self.log_period, rows)), np.nan)

    def step(self, rows: Rows, dt: np.ndarray) -> np.ndarray:
        """Gap feature for gaps `dt` [B] (NaN for a stream's first reading -> 0), then learn them.

        The masking for unknown gaps and first gaps is done only when the batch has some.
        """
        cfg = self.config
        seen = gather(self.seen, rows)
        lp = gather(self.log_period, rows)
        known = np.isfinite(dt)
        known &= dt > 0
        had = seen > 0
        usual = known & had
        steady = every(usual)
        log_dt = np.log(dt if steady else np.where(known, dt, 1.0))
        diff = log_dt - lp
        feature = diff.clip(-cfg.clip, cfg.clip)
        # A long silence should not redefine the schedule: clip what is learned too.
        learned = diff.clip(-1.0, 1.0, out=diff)
        learned *= self._alpha
        learned += lp
        if not steady:
            feature = np.where(usual, feature, 0.0)
            learned = np.where(known, np.where(had, learned, log_dt), lp)
        self.log_period[rows] = learned
        self.seen[rows] = seen + known
        return feature.astype(np.float32)


def encode_series(
    values: np.ndarray,
    timestamps: np.ndarray,
    normalizer: NormalizerConfig | None = None,
    gap: GapConfig | None = None,
) -> np.ndarray:
    """Model inputs [T, C+1] for one series, fed reading by reading exactly as the engine feeds it.

    `values` is [T, C] (finite), `timestamps` [T] seconds, strictly increasing.
    The last input column is the gap feature. Used by training and tests.
    """
    values = np.asarray(values, np.float64)
    if values.ndim == 1:
        values = values[:, None]
    ts = np.asarray(timestamps, np.float64)
    norm = Normalizer(1, values.shape[1], normalizer)
    gaps = GapTracker(1, gap)
    row = np.zeros(1, np.int64)
    out = np.empty((len(values), values.shape[1] + 1), np.float32)
    dt = np.diff(ts, prepend=np.nan)
    for t in range(len(values)):
        out[t, :-1] = norm.step(row, values[t : t + 1])[0]
        out[t, -1] = gaps.step(row, dt[t : t + 1])[0]
    return out
