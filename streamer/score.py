"""From a prediction to a decision: raw surprise, a per-stream calibrated score, a flag with hysteresis.

Raw negative log-likelihoods are not comparable across streams (a noisy sensor is
always a little surprised, a clean one rarely), so each stream's raw scores are
judged against that stream's own recent history. One threshold then means the
same thing everywhere. Thresholding is kept apart from scoring, so an operator can
move it without touching the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOG_2PI = float(np.log(2.0 * np.pi))


def gaussian_nll(
    z: np.ndarray, mean: np.ndarray, log_var: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(NLL summed over channels [B], the channel contributing most [B]) of readings `z` [B, C]."""
    terms = 0.5 * (LOG_2PI + log_var + (z - mean) ** 2 * np.exp(-log_var))
    return terms.sum(axis=1), terms.argmax(axis=1)


def normal_cdf(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF, vectorised, without scipy (Abramowitz & Stegun 7.1.26, error < 1.5e-7)."""
    x = np.abs(z) / np.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    erf = 1.0 - poly * np.exp(-x * x)
    return 0.5 * (1.0 + np.sign(z) * erf)


@dataclass(frozen=True)
class CalibrationConfig:
    """How a stream's raw scores become a probability-like score in [0, 1].

    The long-term mean/variance of raw scores (exact for `warmup` scores, then an
    EMA with `halflife`) is the stream's normal surprise; the short EMA with
    `short_halflife` is its surprise now. The score is the normal CDF of their
    distance in long-term standard deviations. Scores far above normal are clipped
    before they are learned, so an anomaly does not teach the stream to expect it.
    """

    warmup: int = 50
    halflife: float = 2000.0
    short_halflife: float = 1.0
    clip_sigma: float = 3.0
    floor: float = 0.05

    def to_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict) -> CalibrationConfig:
        return cls(
            **{k: type(getattr(cls, k))(v) for k, v in d.items() if k in cls.__dataclass_fields__}
        )


class Calibrator:
    """Per-stream raw-score statistics, struct of arrays over stream rows."""

    FIELDS = ("count", "mean", "var", "short")

    def __init__(self, capacity: int, config: CalibrationConfig | None = None) -> None:
        self.config = config or CalibrationConfig()
        self.count = np.zeros(capacity, np.int64)
        self.mean = np.zeros(capacity, np.float64)
        self.var = np.zeros(capacity, np.float64)
        self.short = np.zeros(capacity, np.float64)
        self._alpha = 1.0 - 2.0 ** (-1.0 / self.config.halflife)
        self._beta = 1.0 - 2.0 ** (-1.0 / self.config.short_halflife)

    def reset(self, rows: np.ndarray) -> None:
        for name in self.FIELDS:
            getattr(self, name)[rows] = 0

    def step(self, rows: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """Calibrated scores of `raw` [B] against each stream's history before it; then learn it."""
        cfg = self.config
        n = self.count[rows]
        mean = self.mean[rows]
        var = self.var[rows]
        std = np.maximum(np.sqrt(var), cfg.floor)
        short = np.where(n > 0, self.short[rows] + self._beta * (raw - self.short[rows]), raw)
        score = np.where(n >= 2, normal_cdf((short - mean) / std), 0.5)

        learned = np.minimum(raw, mean + cfg.clip_sigma * std)
        warm = n < cfg.warmup
        n1 = (n + 1).astype(np.float64)
        delta = np.where(warm, raw, learned) - mean
        new_mean = np.where(warm, mean + delta / n1, mean + self._alpha * delta)
        new_var = np.where(
            warm,
            var + (delta * (raw - new_mean) - var) / n1,
            (1.0 - self._alpha) * (var + self._alpha * delta * delta),
        )
        self.mean[rows] = new_mean
        self.var[rows] = new_var
        self.short[rows] = short
        self.count[rows] = n + 1
        return score.astype(np.float32)


def hysteresis(
    anomalous: np.ndarray, score: np.ndarray, enter: float, leave: float, may_alert: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(new flags, entered, left): enter at `enter`, leave below `leave`, never while warming up."""
    entered = ~anomalous & (score >= enter) & may_alert
    left = anomalous & (score < leave)
    return (anomalous | entered) & ~left, entered, left
