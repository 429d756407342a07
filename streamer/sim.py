"""A synthetic sensor fleet with labelled anomalies: training corpus, evaluation data, live demo.

The default model is trained only on this data and must then cope with sensors it never
saw, so every series draws its own scale (1e-3 to 1e6), offset, noise, seasonality,
trend and regime changes; what a kind fixes is only its character (a count is an
integer, SpO2 stays in 85..100, an ECG is a train of PQRST beats).

A sensor is a discrete-time process advanced block by block, one reading per step at
its kind's native rate. `generate` renders a whole series from blocks and `Fleet`
renders each stream one block ahead of the clock, so both share one code path and a
live stream needs constant memory however long it runs. A different sampling period
(`period`, `rate_hz`) only restamps the readings: the dynamics per reading stay those
of the native rate, so the data keep their character at any rate (the demo plays a
day of temperature in twelve minutes at 2 Hz).

Anomalies are drawn from their own random stream, so a series with anomalies equals
the same seed without them up to the first anomaly. Their sizes are in units of the
sensor's local noise (what the noise does over a few readings) so they are real
deviations on every scale.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

KINDS: tuple[str, ...] = (
    "temperature",
    "vibration",
    "pressure",
    "flow",
    "cpu_load",
    "request_count",
    "heart_rate",
    "spo2",
    "ecg",
    "random_walk",
    "seasonal",
    "step_regime",
    "quantized",
)
ANOMALY_KINDS: tuple[str, ...] = (
    "spike",
    "level_shift",
    "drift",
    "variance_change",
    "frequency_change",
    "stuck",
    "dropout",
    "premature_beat",
    "missing_beat",
)
COMMON_ANOMALIES = ("spike", "level_shift", "drift", "variance_change", "stuck", "dropout")
ONSET_FRACTION = 0.15  # anomalies start after this fraction of a generated series

_GENERATE_BLOCK = 1024
_LIVE_BLOCK = 64
_PLANT_SIZE = 50
_INF = math.inf
_VIBRATION_PERIOD = 0.02  # 50 Hz
_DAY = 86400.0
_WEEK = 7 * _DAY


# ----------------------------------------------------------------------------- public data


@dataclass
class Anomaly:
    """A labelled anomaly: rows [start, end) of a series. A dropout labels the reading after its gap."""

    kind: str
    start: int
    end: int


@dataclass
class Series:
    """One sensor's readings with their ground truth."""

    name: str
    kind: str
    ts: np.ndarray  # float64 [T] epoch seconds, strictly increasing
    values: np.ndarray  # float64 [T, C]
    channels: tuple[str, ...]
    labels: np.ndarray  # bool [T], True inside an anomaly
    anomalies: list[Anomaly]


@dataclass
class LiveAnomaly:
    """An anomaly injected into a live stream: its kind and [start, end) in epoch seconds."""

    kind: str
    start: float
    end: float


# ----------------------------------------------------------------------------- numerics


def _ar1(innov: np.ndarray, phi: float, x0: np.ndarray) -> np.ndarray:
    """x[t] = phi * x[t-1] + innov[t] along axis 0 of [L, C], starting after x0 [C].

    A Python loop per reading would dominate generation, so the recurrence is solved as
    a prefix scan: after the step with stride k each row holds the sum of the 2k latest
    innovations, weighted by powers of phi. log2(L) vector operations, exact, stable.
    """
    x = np.array(innov, np.float64)
    x[0] += phi * np.asarray(x0, np.float64)
    stride, weight = 1, phi
    while stride < len(x):
        x[stride:] = x[stride:] + weight * x[:-stride]
        stride, weight = 2 * stride, weight * weight
    return x


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _persistence(rows: float) -> float:
    """The AR coefficient whose memory is `rows` readings."""
    return 1.0 - 1.0 / rows


# ----------------------------------------------------------------------------- sensors


@dataclass
class _Drive:
    """The anomalies a sensor must render itself, per reading of a block.

    They change the process, not just its output: a machine turning faster, a heart
    beat early or missing. The other anomalies act on the sensor's output.
    """

    freq: np.ndarray  # speed of the periodic component, 1 = normal
    beat: np.ndarray  # int8 heart-beat events, 0 = none

    @classmethod
    def neutral(cls, length: int) -> _Drive:
        return cls(np.ones(length), np.zeros(length, np.int8))


class _Sensor(Protocol):
    """A discrete-time process at its native rate, advanced one block of readings at a time."""

    channels: int
    bounds: tuple[float, float]
    decimals: int | None

    def block(self, drive: _Drive) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(expected, observed, local noise) [L, C] for the next L = len(drive.freq) readings."""
        ...


@dataclass
class _Cycle:
    """A periodic component: a few harmonics with random amplitudes and phases per channel."""

    rows: float  # readings per cycle
    coef: np.ndarray  # [H, 2, C] sine and cosine amplitudes per harmonic

    @classmethod
    def draw(
        cls, rng: np.random.Generator, rows: float, amp: float, harmonics: int, channels: int = 1
    ) -> _Cycle:
        decay = np.arange(1, harmonics + 1) ** -1.5
        coef = rng.normal(size=(harmonics, 2, channels)) * decay[:, None, None]
        return cls(rows, coef * amp / np.sqrt(np.sum(decay**2)))

    def wave(self, phase: np.ndarray, speed: np.ndarray) -> np.ndarray:
        """The cycle at `phase` (in cycles) when it turns `speed` cycles per reading.

        Harmonics at or above the Nyquist rate are left out, as a sensor's anti-aliasing
        filter would: a sped-up machine must not fold its harmonics onto low frequencies.
        """
        harmonic = np.arange(1, len(self.coef) + 1)
        angle = 2 * np.pi * phase[:, None] * harmonic
        passed = speed[:, None] * harmonic < 0.5
        sin, cos = np.sin(angle) * passed, np.cos(angle) * passed
        return sin @ self.coef[:, 0] + cos @ self.coef[:, 1]


@dataclass(kw_only=True)
class _Composite:
    """The general sensor: latent = regime level + slow wander + cycles + AR(1) noise + white noise.

    The latent maps to sensor units linearly, or through exp into a Poisson rate for
    counts. Regimes are normal behaviour (a deploy, a pump cycling, getting up from a
    chair): the level jumps at random to a new target and settles there.
    """

    rng: np.random.Generator
    channels: int = 1
    level: float = 0.0
    cycles: list[_Cycle] = field(default_factory=list)
    slow_sd: float = 0.0  # stationary spread of the slow wander, which reads as a trend
    slow_rows: float = 5000.0
    ar_phi: float = 0.0
    ar_sd: float = 0.0
    white_sd: float = 0.0
    switch_rate: float = 0.0  # regime changes per reading
    jump_sd: float = 0.0  # a regime's new level: a mean-reverting jump of this size...
    states: tuple[float, ...] = ()  # ...or one of these levels (Markov switching)
    settle: float = 0.0  # AR coefficient of the move to a new regime level; 0 = abrupt
    counts: bool = False  # Poisson counts at rate scale * exp(latent)
    offset: np.ndarray | float = 0.0
    scale: np.ndarray | float = 1.0
    bounds: tuple[float, float] = (-_INF, _INF)
    decimals: int | None = None

    def __post_init__(self) -> None:
        rng, c = self.rng, self.channels
        self.phase = rng.random(len(self.cycles))
        self.target = self.level
        self.current = np.array([self.level])
        self.slow = rng.normal(0.0, self.slow_sd, c)
        stationary = 1.0 / (1.0 - self.ar_phi**2) if self.ar_phi < 1 else 0.0
        self.ar = rng.normal(0.0, self.ar_sd * np.sqrt(stationary), c)
        self.local_sd = float(
            np.hypot(self.white_sd, self.ar_sd * np.sqrt(min(8.0, stationary or 8.0)))
        )

    def block(self, drive: _Drive) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng, length, c = self.rng, len(drive.freq), self.channels
        det = np.repeat(self._regime(length), c, axis=1)
        for i, cycle in enumerate(self.cycles):
            speed = drive.freq / cycle.rows
            phase = self.phase[i] + np.cumsum(speed)
            self.phase[i] = phase[-1] % 1.0
            det += cycle.wave(phase, speed)
        slow_phi = _persistence(self.slow_rows)
        slow_innov = self.slow_sd * np.sqrt(1 - slow_phi**2)
        slow = _ar1(rng.normal(0.0, slow_innov, (length, c)), slow_phi, self.slow)
        ar = _ar1(rng.normal(0.0, self.ar_sd, (length, c)), self.ar_phi, self.ar)
        self.slow, self.ar = slow[-1], ar[-1]
        det += slow
        latent = det + ar + rng.normal(0.0, self.white_sd, (length, c))
        if self.counts:
            rate = self.scale * np.exp(det)
            observed = rng.poisson(self.scale * np.exp(latent)).astype(np.float64)
            return rate, observed, np.sqrt(rate + (rate * self.local_sd) ** 2)
        sigma = np.broadcast_to(np.abs(self.scale) * self.local_sd, (length, c))
        return self.offset + self.scale * det, self.offset + self.scale * latent, sigma

    def _regime(self, length: int) -> np.ndarray:
        target = np.full(length, self.target)
        if self.switch_rate > 0:
            for row in np.flatnonzero(self.rng.random(length) < self.switch_rate):
                self.target = self._next_target()
                target[row:] = self.target
        level = _ar1(((1 - self.settle) * target)[:, None], self.settle, self.current)
        self.current = level[-1]
        return level

    def _next_target(self) -> float:
        if self.states:
            others = [s for s in self.states if s != self.target]
            return float(_pick(self.rng, others))
        return float(
            self.level + 0.6 * (self.target - self.level) + self.rng.normal(0, self.jump_sd)
        )


@dataclass
class _Beat:
    onset: float  # seconds on the sensor's own clock
    rr: float  # seconds to the next onset
    amp: float  # 0 for a dropped beat
    ectopic: bool  # a premature ventricular beat: wide QRS, no P, inverted T


# Gaussian waves (centre = c0 + c1 * sqrt(RR) seconds after onset, width, height in mV):
# P, Q, R, S, T. The T wave moves with sqrt(RR) as the QT interval does (Bazett).
_SINUS = np.array(
    [
        [0.10, 0.0, 0.025, 0.12],
        [0.20, 0.0, 0.010, -0.10],
        [0.22, 0.0, 0.011, 1.00],
        [0.245, 0.0, 0.012, -0.25],
        [0.22, 0.2, 0.050, 0.30],
    ]
)
_ECTOPIC = np.array(
    [
        [0.10, 0.0, 0.025, 0.0],
        [0.19, 0.0, 0.020, -0.15],
        [0.23, 0.0, 0.030, 1.10],
        [0.30, 0.0, 0.035, -0.50],
        [0.30, 0.2, 0.060, -0.35],
    ]
)
_PREMATURE, _MISSING = 1, 2
_BEAT_EVENTS = {"premature_beat": _PREMATURE, "missing_beat": _MISSING}
_HR_RANGE = (45.0, 100.0)  # normal heart rate of the simulated ECG, beats per minute


def _pqrst(since: np.ndarray, rr: np.ndarray, ectopic: np.ndarray) -> np.ndarray:
    waves = np.where(ectopic[:, None, None], _ECTOPIC, _SINUS)
    centre = waves[..., 0] + waves[..., 1] * np.sqrt(rr)[:, None]
    z = (since[:, None] - centre) / waves[..., 2]
    return np.sum(waves[..., 3] * np.exp(-0.5 * z * z), axis=1)


class _Ecg:
    """A single-lead ECG at 250 Hz: one PQRST template per beat, beats scheduled one by one.

    Heart rate varies slowly (a per-beat AR drift), with breathing (respiratory sinus
    arrhythmia) and a little beat-to-beat jitter. A premature beat is an ectopic beat
    arriving early followed by a compensatory pause; a missing beat is a beat whose
    waveform never comes. A missing beat is the first beat after its event row; a
    premature beat follows that one.
    """

    channels = 1
    period = 0.004

    def __init__(self, params: np.random.Generator, rng: np.random.Generator) -> None:
        # Beats draw from their own stream: an anomaly that adds a beat must not shift the
        # noise of readings before it.
        self.rng, self.beat_rng = rng, rng.spawn(1)[0]
        self.hr_base = params.uniform(55, 85)
        self.hr_sd = params.uniform(1, 5)
        self.rsa = params.uniform(0, 4)
        self.resp_hz = params.uniform(0.15, 0.35)
        self.hrv = params.uniform(0.005, 0.03)
        self.wander = params.uniform(0, 0.15)
        self.wander_sd = params.uniform(0, 0.05)
        self.hum = params.uniform(0, 0.02)
        self.mains_hz = _pick(params, (50.0, 60.0))
        self.noise_sd = params.uniform(0.005, 0.04)
        self.gain = params.uniform(0.5, 2.0)
        adc_zero = float(params.integers(512, 2048))
        self.scale, self.offset, self.decimals = _pick(  # V, mV, or raw ADC counts
            params, ((1e-3, 0.0, None), (1.0, 0.0, None), (200.0, adc_zero, 0))
        )
        self.bounds = (-_INF, _INF)
        self.t = 0.0
        self.hr_drift = 0.0
        self.pending = 0
        self.compensate = 0.0
        rr = 60.0 / self.hr_base
        onset = -rng.uniform(0, rr)
        self.beats = [_Beat(onset - rr, rr, 1.0, False), _Beat(onset, rr, 1.0, False)]
        self.baseline = np.zeros(1)

    def block(self, drive: _Drive) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        length = len(drive.freq)
        t = self.t + self.period * np.arange(length)
        self._schedule(t, drive.freq, drive.beat)
        self.t += self.period * length
        onset = np.array([b.onset for b in self.beats])
        rr = np.array([b.rr for b in self.beats])
        amp = np.array([b.amp for b in self.beats])
        ectopic = np.array([b.ectopic for b in self.beats])
        i = np.searchsorted(onset, t, side="right") - 1
        heart = sum(amp[j] * _pqrst(t - onset[j], rr[j], ectopic[j]) for j in (i, i - 1))
        self.beats = self.beats[-2:]
        wander_phi = _persistence(2000)
        slow = _ar1(
            self.rng.normal(0, self.wander_sd * np.sqrt(1 - wander_phi**2), (length, 1)),
            wander_phi,
            self.baseline,
        )
        self.baseline = slow[-1]
        det = (
            self.gain * heart[:, None]
            + slow
            + self.wander * np.sin(2 * np.pi * self.resp_hz * t)[:, None]
            + self.hum * np.sin(2 * np.pi * self.mains_hz * t)[:, None]
        )
        noise = self.rng.normal(0, self.noise_sd, (length, 1))
        det = self.offset + self.scale * det
        sigma = np.full((length, 1), self.scale * self.noise_sd)
        return det, det + self.scale * noise, sigma

    def _schedule(self, t: np.ndarray, freq: np.ndarray, beat: np.ndarray) -> None:
        """Append the beats starting before the block's end; events become pending as they pass."""
        rows = np.flatnonzero(beat)
        k = 0
        end = t[-1] + self.period
        while self.beats[-1].onset + self.beats[-1].rr < end:
            onset = self.beats[-1].onset + self.beats[-1].rr
            while k < len(rows) and t[rows[k]] < onset:
                self.pending = int(beat[rows[k]])
                k += 1
            row = int(np.clip((onset - t[0]) / self.period, 0, len(t) - 1))
            self.beats.append(self._next_beat(onset, float(freq[row])))
        for r in rows[k:]:
            self.pending = int(beat[r])

    def _next_beat(self, onset: float, freq: float) -> _Beat:
        drift, jitter, shape = self.beat_rng.normal(size=3).tolist()
        early = self.beat_rng.uniform(0.55, 0.7)
        phi = 0.98
        self.hr_drift = phi * self.hr_drift + np.sqrt(1 - phi**2) * self.hr_sd * drift
        amp = 1.0 + 0.03 * shape
        if self.compensate:
            rr, self.compensate = self.compensate, 0.0
            return _Beat(onset, rr, amp, True)
        hr = self.hr_base + self.hr_drift + self.rsa * np.sin(2 * np.pi * self.resp_hz * onset)
        rr = 60.0 / (float(np.clip(hr, *_HR_RANGE)) * freq) * (1.0 + self.hrv * jitter)
        if self.pending == _MISSING:
            amp = 0.0
        elif self.pending == _PREMATURE:
            self.compensate = (2.0 - early) * rr
            rr *= early
        self.pending = 0
        return _Beat(onset, rr, amp, False)


# ----------------------------------------------------------------------------- kinds


def _temperature(p: np.random.Generator, rng: np.random.Generator) -> _Composite:
    offset, scale = _pick(p, ((0.0, 1.0), (273.15, 1.0), (32.0, 1.8)))  # C, K, F
    base = _pick(p, (p.uniform(-5, 30), p.uniform(18, 26), p.uniform(35, 85)))
    daily = p.uniform(0.2, 6)
    return _Composite(
        rng=rng,
        level=base,
        cycles=[
            _Cycle.draw(p, _DAY / 60, daily, 3),
            _Cycle.draw(p, _WEEK / 60, p.uniform(0, 0.3) * daily, 2),
        ],
        slow_sd=p.uniform(0, 2),
        slow_rows=p.uniform(2e3, 3e4),
        ar_phi=p.uniform(0.9, 0.995),
        ar_sd=p.uniform(0.01, 0.15),
        white_sd=p.uniform(0.01, 0.2),
        switch_rate=_pick(p, (0.0, 1 / 4000)),
        jump_sd=p.uniform(0.5, 3),
        settle=0.97,
        offset=offset,
        scale=scale,
        decimals=_pick(p, (None, 1, 2)),
    )


def _vibration(p: np.random.Generator, rng: np.random.Generator) -> _Composite:
    unit = _pick(p, (1.0, 9.80665, 1000.0))  # g, m/s^2, mg
    amplitude = _loguniform(p, 0.005, 0.5)
    rotation_hz = p.uniform(1, 6)
    return _Composite(
        rng=rng,
        channels=3,
        cycles=[_Cycle.draw(p, 1 / (rotation_hz * _VIBRATION_PERIOD), 1.0, 4, channels=3)],
        slow_sd=0.05,
        slow_rows=1e4,
        ar_phi=p.uniform(0, 0.7),
        ar_sd=p.uniform(0, 0.1),
        white_sd=p.uniform(0.05, 0.3),
        offset=unit * (np.array([0.0, 0.0, 1.0]) + p.normal(0, 0.01, 3)),  # gravity on z
        scale=unit * amplitude,
    )


def _pressure(p: np.random.Generator, rng: np.random.Generator) -> _Composite:
    unit = _pick(p, (1e5, 100.0, 1.0, 14.5038, 0.1))  # Pa, kPa, bar, psi, MPa per bar
    base = _loguniform(p, 0.5, 300) * unit
    return _Composite(
        rng=rng,
        cycles=[
            _Cycle.draw(p, p.uniform(6, 360), p.uniform(0, 2), 3),
            _Cycle.draw(p, _DAY / 10, p.uniform(0, 2), 2),
        ],
        slow_sd=p.uniform(0, 3),
        slow_rows=p.uniform(1e3, 2e4),
        ar_phi=p.uniform(0.9, 0.999),
        ar_sd=p.uniform(0.05, 0.3),
        white_sd=p.uniform(0.05, 0.5),
        switch_rate=_pick(p, (0.0, 1 / 3000)),
        jump_sd=3.0,
        settle=0.9,
        offset=base,
        scale=base * p.uniform(0.002, 0.05),
        bounds=(0.0, _INF),
    )


def _flow(p: np.random.Generator, rng: np.random.Generator) -> _Composite:
    idle = _pick(p, (0.0, p.uniform(0.1, 0.4)))
    return _Composite(
        rng=rng,
        level=1.0,
        cycles=[_Cycle.draw(p, _DAY / 5, p.uniform(0, 0.1), 2)],
        ar_phi=0.95,
        ar_sd=p.uniform(0.002, 0.01),
        white_sd=p.uniform(0.005, 0.05),
        switch_rate=p.uniform(1 / 1500, 1 / 150),
        states=(idle, 1.0, p.uniform(0.5, 0.9)),
        settle=p.uniform(0, 0.8),
        scale=_loguniform(p, 1e-3, 1e3),  # m^3/s ... L/min
        bounds=(0.0, _INF),
    )


def _cpu_load(p: np.random.Generator, rng: np.random.Generator) -> _Composite:
    level = p.uniform(3, 60)
    daily = min(p.uniform(0.5, 15), 0.5 * level)  # a busy machine idles near, not at, zero
    return _Composite(
        rng=rng,
        level=level,
        cycles=[
            _Cycle.draw(p, _DAY / 300, daily, 3),
            _Cycle.draw(p, _WEEK / 300, p.uniform(0, 0.5) * daily, 3),
        ],
        ar_phi=p.uniform(0.3, 0.95),
        ar_sd=p.uniform(0.3, 4),
        white_sd=p.uniform(0.1, 3),
        switch_rate=1 / 1500,
        jump_sd=8.0,
        settle=p.uniform(0, 0.9),
        bounds=(0.0, 100.0),
        decimals=_pick(p, (None, 1, 3)),
    )


def _request_count(p: np.random.Generator, rng: np.random.Generator) -> _Composite:
    return _Composite(
        rng=rng,
        cycles=[
            _Cycle.draw(p, _DAY / 60, p.uniform(0.1, 1.0), 3),
            _Cycle.draw(p, _WEEK / 60, p.uniform(0, 0.4), 3),
        ],
        ar_phi=p.uniform(0.8, 0.99),
        ar_sd=p.uniform(0.02, 0.15),
        white_sd=p.uniform(0, 0.05),
        switch_rate=1 / 3000,
        jump_sd=0.3,
        settle=0.95,
        counts=True,
        scale=_loguniform(p, 0.3, 3e4),
        bounds=(0.0, _INF),
        decimals=0,
    )


def _heart_rate(p: np.random.Generator, rng: np.random.Generator) -> _Composite:
    rest = p.uniform(60, 72)
    return _Composite(
        rng=rng,
        level=rest,
        slow_sd=p.uniform(1, 3),
        slow_rows=p.uniform(300, 3000),
        ar_phi=p.uniform(0.9, 0.98),
        ar_sd=p.uniform(0.2, 0.5),
        white_sd=p.uniform(0.2, 1.0),
        switch_rate=1 / 1200,
        states=(rest, rest + p.uniform(4, 12), rest + p.uniform(12, 25)),  # rest, light, active
        settle=0.98,
        bounds=(30.0, 220.0),
        decimals=0,
    )


def _spo2(p: np.random.Generator, rng: np.random.Generator) -> _Composite:
    return _Composite(
        rng=rng,
        level=p.uniform(95.5, 98.5),
        slow_sd=p.uniform(0, 0.8),
        slow_rows=p.uniform(300, 3000),
        ar_phi=0.98,
        ar_sd=p.uniform(0.03, 0.1),
        white_sd=p.uniform(0.2, 0.6),
        bounds=(85.0, 100.0),
        decimals=0,
    )


def _random_walk(p: np.random.Generator, rng: np.random.Generator) -> _Composite:
    scale = _loguniform(p, 1e-3, 1e6)
    return _Composite(
        rng=rng,
        ar_phi=_persistence(_loguniform(p, 1e3, 1e5)),
        ar_sd=1.0,
        white_sd=p.uniform(0, 1),
        offset=scale * p.normal(0, 30),
        scale=scale,
    )


def _seasonal(p: np.random.Generator, rng: np.random.Generator) -> _Composite:
    scale = _loguniform(p, 1e-3, 1e6)
    cycles = [
        _Cycle.draw(p, p.uniform(12, 300), p.uniform(1, 5), int(p.integers(1, 6)))
        for _ in range(int(p.integers(1, 3)))
    ]
    return _Composite(
        rng=rng,
        cycles=cycles,
        slow_sd=p.uniform(0, 1.5),
        slow_rows=p.uniform(1e3, 1e4),
        ar_phi=p.uniform(0, 0.9),
        ar_sd=p.uniform(0.1, 0.5),
        white_sd=p.uniform(0.05, 0.5),
        offset=scale * p.uniform(-10, 10),
        scale=scale,
    )


def _step_regime(p: np.random.Generator, rng: np.random.Generator) -> _Composite:
    scale = _loguniform(p, 1e-3, 1e6)
    states = tuple(np.cumsum(p.uniform(3, 12, int(p.integers(2, 5)))).tolist())
    return _Composite(
        rng=rng,
        level=states[0],
        ar_phi=p.uniform(0, 0.8),
        ar_sd=p.uniform(0, 0.3),
        white_sd=p.uniform(0.2, 1),
        switch_rate=p.uniform(1 / 500, 1 / 50),
        states=states,
        settle=_pick(p, (0.0, 0.5, 0.9)),
        offset=scale * p.uniform(-10, 10),
        scale=scale,
    )


def _quantized(p: np.random.Generator, rng: np.random.Generator) -> _Composite:
    level = p.uniform(3, 200)
    return _Composite(
        rng=rng,
        level=level,
        cycles=[_Cycle.draw(p, _DAY / 60, p.uniform(0, 0.3) * level, 3)],
        ar_phi=p.uniform(0.9, 0.999),
        ar_sd=p.uniform(0.3, 2),
        white_sd=p.uniform(0.2, 1),
        bounds=(0.0, _INF),
        decimals=0,
    )


@dataclass(frozen=True)
class _Profile:
    """What a kind fixes: its native rate, channels, timestamp jitter and possible anomalies."""

    period: float  # native seconds between readings
    make: Callable[[np.random.Generator, np.random.Generator], _Sensor]
    channels: tuple[str, ...] = ("value",)
    jitter: float = 0.0  # most timestamp jitter, as a fraction of the period
    extra: tuple[str, ...] = ()  # anomaly kinds beyond COMMON_ANOMALIES
    span: float = 1.0  # how long its anomalies last, relative to the default in readings


_PROFILES: dict[str, _Profile] = {
    "temperature": _Profile(60.0, _temperature, jitter=0.1),
    "vibration": _Profile(
        _VIBRATION_PERIOD,
        _vibration,
        channels=("x", "y", "z"),
        extra=("frequency_change",),
        span=5.0,
    ),
    "pressure": _Profile(10.0, _pressure, jitter=0.05),
    "flow": _Profile(5.0, _flow, jitter=0.05),
    "cpu_load": _Profile(300.0, _cpu_load, jitter=0.02),
    "request_count": _Profile(60.0, _request_count, jitter=0.05),
    "heart_rate": _Profile(1.0, _heart_rate, jitter=0.1),
    "spo2": _Profile(1.0, _spo2, jitter=0.1),
    "ecg": _Profile(
        _Ecg.period,
        _Ecg,
        extra=("frequency_change", "premature_beat", "missing_beat"),
        span=10.0,
    ),
    "random_walk": _Profile(1.0, _random_walk, jitter=0.2),
    "seasonal": _Profile(60.0, _seasonal, jitter=0.05, extra=("frequency_change",)),
    "step_regime": _Profile(10.0, _step_regime, jitter=0.05),
    "quantized": _Profile(60.0, _quantized, jitter=0.05),
}


def native_period(kind: str) -> float:
    """Seconds between a `kind` sensor's readings at its native rate."""
    return _profile(kind).period


def anomaly_kinds_for(kind: str) -> tuple[str, ...]:
    """The anomaly kinds that make sense for `kind` (a missing beat needs beats)."""
    return COMMON_ANOMALIES + _profile(kind).extra


def _profile(kind: str) -> _Profile:
    try:
        return _PROFILES[kind]
    except KeyError:
        raise ValueError(f"unknown sensor kind {kind!r}; known: {', '.join(KINDS)}") from None


def _check_kinds(kinds: Sequence[str] | None) -> tuple[str, ...]:
    kinds = tuple(kinds) if kinds is not None else KINDS
    if not kinds:
        raise ValueError("kinds must not be empty")
    for kind in kinds:
        _profile(kind)
    return kinds


# ----------------------------------------------------------------------------- anomalies

# Sizes: offsets in local-noise sigmas; a variance change multiplies the local noise, a
# frequency change the speed of the cycle or heart. Durations in readings.
_SIZES = {
    "spike": (5.0, 10.0),
    "level_shift": (4.0, 8.0),
    "drift": (8.0, 16.0),
    "variance_change": (4.0, 8.0),
    "frequency_change": (1.6, 2.5),
}
_DURATIONS = {"spike": (1, 3), "dropout": (5, 60)}
_LONG = (30, 300)
# A beat event is seen at the next beat or the one after, then lasts up to two beats:
# these windows cover it at the slowest normal heart rate.
_BEAT_WINDOW_S = {
    "premature_beat": 3.2 * 60 / _HR_RANGE[0],
    "missing_beat": 2.2 * 60 / _HR_RANGE[0],
}


@dataclass
class _Plan:
    """An anomaly scheduled on a source's reading index: [start, end), size and direction."""

    kind: str
    start: int
    end: int
    size: float
    sign: float
    sign_checked: bool = False

    @property
    def length(self) -> int:
        return self.end - self.start

    def at(self, start: int) -> _Plan:
        return replace(self, start=start, end=start + self.length)

    def direct(self, expected: np.ndarray, sigma: np.ndarray, bounds: tuple[float, float]) -> float:
        """The offset direction, fixed at onset: away from a bound that is not far off.

        A spike upwards on SpO2 at 99 % would be clipped to nothing at 100 %, and the
        level may move towards the bound during the anomaly, hence the wide margin.
        """
        if not self.sign_checked:
            margin = 3 * self.size * sigma
            up = np.min(bounds[1] - expected - margin)
            down = np.min(expected - margin - bounds[0])
            if min(up, down) < 0:
                self.sign = 1.0 if up >= down else -1.0
            self.sign_checked = True
        return self.sign


def _duration_range(kind: str, profile: _Profile) -> tuple[int, int]:
    if kind in _BEAT_WINDOW_S:
        rows = math.ceil(_BEAT_WINDOW_S[kind] / profile.period)
        return rows, rows
    lo, hi = _DURATIONS.get(kind, _LONG)
    if kind == "spike":
        return lo, hi
    return round(lo * profile.span), round(hi * profile.span)


def _draw_plan(
    kind: str, profile: _Profile, rng: np.random.Generator, longest: int | None = None
) -> _Plan:
    """An anomaly of `kind` at row 0 (move it with `at`); `longest` caps all but a dropout."""
    lo, hi = _duration_range(kind, profile)
    if longest is not None and kind != "dropout":
        hi = max(lo, min(hi, longest))
    duration = int(rng.integers(lo, hi + 1))
    small, large = _SIZES.get(kind, (0.0, 0.0))
    size, flip = rng.uniform(small, large), rng.random() < 0.5
    if kind == "frequency_change" and flip:
        size = 1.0 / size
    return _Plan(kind, 0, duration, size, -1.0 if flip else 1.0)


def _layout(
    kind: str, n: int, count: int, pool: Sequence[str], rng: np.random.Generator
) -> tuple[list[_Plan], int]:
    """`count` non-overlapping plans after the first 15 % of n kept readings; (plans, rows to render).

    Readings removed by a dropout are extra rows, so the series still has n readings.
    Every anomaly is followed by two normal readings: the first carries a dropout's
    label, the second keeps labels of neighbouring anomalies apart.
    """
    if count == 0:
        return [], n
    profile = _PROFILES[kind]
    onset = math.ceil(ONSET_FRACTION * n)
    room = n - onset - 2 * count
    fits = [k for k in pool if _duration_range(k, profile)[0] * count <= room]
    if not fits:
        raise ValueError(f"{n} readings of {kind} leave no room for {count} anomalies")
    plans = [_draw_plan(str(k), profile, rng, room // count) for k in rng.choice(fits, count)]
    lost = sum(p.length for p in plans if p.kind == "dropout")
    free = room - sum(p.length for p in plans if p.kind != "dropout")
    position = onset
    for i, gap in enumerate(np.diff(np.sort(rng.integers(0, free + 1, count)), prepend=0)):
        plans[i] = plans[i].at(position + int(gap))
        position = plans[i].end + 2
    return plans, n + lost


# ----------------------------------------------------------------------------- rendering


@dataclass
class _Block:
    values: np.ndarray  # [L, C]
    dropped: np.ndarray  # bool [L]: readings lost to a dropout
    jitter: np.ndarray  # [L] timestamp jitter, fractions of the period


class _Source:
    """One simulated sensor with its scheduled anomalies, rendered block by block."""

    def __init__(self, kind: str, seed: np.random.SeedSequence) -> None:
        self.kind = kind
        self.profile = _profile(kind)
        params, signal, self.anomaly_rng, self.clock_rng = map(np.random.default_rng, seed.spawn(4))
        self.jitter = self.profile.jitter * params.uniform()
        self.sensor = self.profile.make(params, signal)
        self.plans: list[_Plan] = []
        self.row = 0
        self.last: np.ndarray | None = None

    def render(self, length: int) -> _Block:
        r0, r1 = self.row, self.row + length
        live = [
            (p, slice(max(p.start, r0) - r0, min(p.end, r1) - r0))
            for p in self.plans
            if p.start < r1 and p.end > r0
        ]
        drive = _Drive.neutral(length)
        for p, rows in live:
            if p.kind == "frequency_change":
                drive.freq[rows] = p.size
            elif p.kind in _BEAT_EVENTS and p.start >= r0:
                drive.beat[p.start - r0] = _BEAT_EVENTS[p.kind]
        expected, observed, sigma = self.sensor.block(drive)
        if self.sensor.decimals is not None:
            sigma = np.maximum(sigma, 10.0**-self.sensor.decimals)
        offset, extra = np.zeros(length), np.zeros(length)
        stuck, dropped = np.zeros(length, bool), np.zeros(length, bool)
        for p, rows in live:
            if p.kind in ("spike", "level_shift", "drift"):
                sign = p.direct(expected[rows.start], sigma[rows.start], self.sensor.bounds)
                ramp = 1.0
                if p.kind == "drift":
                    ramp = (np.arange(rows.start, rows.stop) + r0 - p.start + 1) / (p.end - p.start)
                offset[rows] = sign * p.size * ramp
            elif p.kind == "variance_change":
                extra[rows] = np.sqrt(p.size**2 - 1)
            elif p.kind == "stuck":
                stuck[rows] = True
            elif p.kind == "dropout":
                dropped[rows] = True
        values = observed + offset[:, None] * sigma
        if extra.any():  # more noise, drawn apart so the sensor's own stream is not shifted
            values += extra[:, None] * sigma * self.anomaly_rng.normal(size=values.shape)
        values = np.clip(values, *self.sensor.bounds)
        if self.sensor.decimals is not None:
            values = np.round(values, self.sensor.decimals)
        values = self._hold(values, stuck)
        self.last = values[-1].copy()
        self.row = r1
        self.plans = [p for p in self.plans if p.end > r1]
        jitter = self.clock_rng.uniform(-self.jitter, self.jitter, length)
        return _Block(values, dropped, jitter)

    def _hold(self, values: np.ndarray, stuck: np.ndarray) -> np.ndarray:
        """A stuck sensor repeats its last good reading exactly."""
        if not stuck.any():
            return values
        source = np.maximum.accumulate(np.where(stuck, -1, np.arange(len(values))))
        prior = self.last if self.last is not None else values[0]
        return np.where((source >= 0)[:, None], values[np.maximum(source, 0)], prior)


# ----------------------------------------------------------------------------- series


def generate(
    kind: str,
    n: int,
    seed: int,
    *,
    start: float = 1.7e9,
    period: float | None = None,
    anomalies: int = 0,
    anomaly_kinds: Sequence[str] | None = None,
) -> Series:
    """n readings of one `kind` sensor, with `anomalies` labelled anomalies; deterministic in seed.

    `period` restamps the readings (default: the kind's native rate) without changing
    their dynamics. Anomaly kinds are drawn from `anomaly_kinds` (default: all that fit
    the kind, see `anomaly_kinds_for`).
    """
    profile = _profile(kind)
    period = profile.period if period is None else float(period)
    if n < 1 or anomalies < 0:
        raise ValueError(f"need n >= 1 and anomalies >= 0, got n={n}, anomalies={anomalies}")
    if not period >= 1e-4:
        raise ValueError(f"period must be at least 1e-4 s, got {period}")
    pool = tuple(anomaly_kinds) if anomaly_kinds is not None else anomaly_kinds_for(kind)
    wrong = sorted(set(pool) - set(anomaly_kinds_for(kind)))
    if wrong:
        raise ValueError(f"anomaly kinds {wrong} do not apply to {kind}: {anomaly_kinds_for(kind)}")
    # The kind is part of the seed: one seed gives unrelated series of different kinds.
    source = _Source(kind, np.random.SeedSequence([seed, KINDS.index(kind)]))
    plans, rows = _layout(kind, n, anomalies, pool, source.anomaly_rng)
    source.plans = list(plans)
    blocks = [source.render(_GENERATE_BLOCK) for _ in range(-(-rows // _GENERATE_BLOCK))]
    values = np.concatenate([b.values for b in blocks])[:rows]
    kept = ~np.concatenate([b.dropped for b in blocks])[:rows]
    jitter = np.concatenate([b.jitter for b in blocks])[:rows]
    ts = np.round(start + period * (np.arange(rows) + jitter), 6)
    index = np.cumsum(kept) - 1  # row in the series of each rendered reading
    marks = [
        Anomaly(p.kind, int(index[p.end]), int(index[p.end]) + 1)
        if p.kind == "dropout"
        else Anomaly(p.kind, int(index[p.start]), int(index[p.end - 1]) + 1)
        for p in plans
    ]
    labels = np.zeros(n, bool)
    for a in marks:
        labels[a.start : a.end] = True
    return Series(
        name=f"{kind}-{seed}",
        kind=kind,
        ts=ts[kept],
        values=values[kept],
        channels=profile.channels,
        labels=labels,
        anomalies=marks,
    )


def corpus(
    n_series: int,
    length: int,
    seed: int,
    *,
    anomalies: int = 0,
    kinds: Sequence[str] | None = None,
) -> list[Series]:
    """`n_series` series of `length` readings, kinds in equal shares in a seeded order.

    Each series is `generate(kind, length, s)` for a seed `s` drawn here, so any one
    of them can be regenerated alone; names are "<kind>-<index>".
    """
    kinds = _check_kinds(kinds)
    rng = np.random.default_rng(seed)
    order = rng.permutation(np.resize(np.arange(len(kinds)), n_series))
    seeds = rng.integers(0, 2**63, n_series)
    return [
        replace(generate(kinds[k], length, int(s), anomalies=anomalies), name=f"{kinds[k]}-{i:04d}")
        for i, (k, s) in enumerate(zip(order, seeds, strict=True))
    ]


def _timestamps(ts: np.ndarray) -> list[str]:
    """ISO 8601 UTC, with as many fractional digits as the series needs (none, ms or us)."""
    us = np.round(np.asarray(ts) * 1e6).astype(np.int64)
    unit = "s" if not np.any(us % 1_000_000) else "ms" if not np.any(us % 1000) else "us"
    return list(np.datetime_as_string(us.astype("datetime64[us]"), unit=unit, timezone="UTC"))


def write_csv(series: Series, path: Path) -> None:
    """`timestamp,<channels...>,label`: what the offline evaluator and training read back."""
    stamps = _timestamps(series.ts)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(",".join(("timestamp", *series.channels, "label")) + "\n")
        for stamp, row, label in zip(
            stamps, series.values.tolist(), series.labels.tolist(), strict=True
        ):
            f.write(f"{stamp},{','.join(map(repr, row))},{int(label)}\n")


def write_corpus(series: Iterable[Series], folder: Path) -> list[Path]:
    """One CSV per series in `folder`, plus `anomalies.json`: per file, each anomaly's kind and rows."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths, index = [], {}
    for s in series:
        path = folder / f"{s.name.replace('/', '_')}.csv"
        write_csv(s, path)
        paths.append(path)
        index[path.name] = [{"kind": a.kind, "start": a.start, "end": a.end} for a in s.anomalies]
    (folder / "anomalies.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    return paths


# ----------------------------------------------------------------------------- live fleet


class _Stream:
    """One live sensor: its source rendered a block ahead, readings released as their time comes.

    A block is turned into plain Python lists once, so releasing a reading costs a few
    list lookups: a fleet of thousands of streams is generated faster than it publishes.
    """

    def __init__(
        self, stream_id: str, kind: str, seed: np.random.SeedSequence, period: float, rate: float
    ) -> None:
        self.id = stream_id
        self.source = _Source(kind, seed)
        self.kinds = anomaly_kinds_for(kind)
        self.period = period
        self.rate = rate
        self.phase = self.source.clock_rng.uniform()
        self.t0 = _INF
        self.row = 0  # next reading to release
        self.block_row = 0
        self.stamps: list[float] = []
        self.readings: list[tuple[float, ...] | None] = []  # None: lost to a dropout
        self.next_start = self._wait(0)
        self.upcoming: deque[_Plan] = deque()
        self.current: _Plan | None = None
        self.next_event = self.next_start  # the next row where an anomaly starts or ends

    def _wait(self, row: int) -> float:
        return row + int(self.source.anomaly_rng.geometric(self.rate)) if self.rate > 0 else _INF

    def start(self, now: float) -> None:
        self.t0 = now + self.phase * self.period

    def release(self, now: float, out: list, active: dict, history: deque) -> None:
        while True:
            i = self.row - self.block_row
            if i == len(self.stamps):
                self._render()
                i = 0
            ts = self.stamps[i]
            if ts > now:
                return
            if self.row >= self.next_event:
                self._record(ts, active, history)
            reading = self.readings[i]
            if reading is not None:
                out.append((self.id, ts, reading))
            self.row += 1

    def _render(self) -> None:
        self.block_row = self.row
        end = self.row + _LIVE_BLOCK
        rng = self.source.anomaly_rng
        while self.next_start < end:
            plan = _draw_plan(str(_pick(rng, self.kinds)), self.source.profile, rng)
            plan = plan.at(int(self.next_start))
            self.source.plans.append(plan)
            self.upcoming.append(plan)
            self.next_start = self._wait(plan.end)
        self.next_event = self._next_event()
        block = self.source.render(_LIVE_BLOCK)
        rows = self.row + np.arange(_LIVE_BLOCK) + block.jitter
        self.stamps = (self.t0 + self.period * rows).tolist()
        self.readings = [
            None if lost else tuple(v)
            for v, lost in zip(block.values.tolist(), block.dropped.tolist(), strict=True)
        ]

    def _record(self, ts: float, active: dict, history: deque) -> None:
        if self.current is not None and self.row >= self.current.end:
            history.append((self.id, active.pop(self.id)))
            self.current = None
        if self.upcoming and self.upcoming[0].start == self.row:
            self.current = plan = self.upcoming.popleft()
            active[self.id] = LiveAnomaly(plan.kind, ts, self.t0 + self.period * plan.end)
        self.next_event = self._next_event()

    def _next_event(self) -> float:
        if self.current is not None:
            return self.current.end
        return self.upcoming[0].start if self.upcoming else _INF


class Fleet:
    """A live simulated fleet for the demo and `streamer simulate`.

    Stream i is a `kinds[i % len(kinds)]` sensor named "plant<p>/<kind>-<i>", so names
    are stable for a given size and kind list. Each stream starts at a random phase
    within one period after the first `tick`, then reports every `1 / rate_hz` seconds
    (default: its kind's native rate) with its kind's jitter. An anomaly starts with
    probability `anomaly_rate` at each reading; while it lasts it is in
    `active_anomalies`, then it moves to `history` (the last `history` of them).
    """

    def __init__(
        self,
        n_streams: int,
        seed: int,
        *,
        kinds: Sequence[str] | None = None,
        anomaly_rate: float = 0.001,
        rate_hz: float | None = None,
        history: int = 1000,
    ) -> None:
        kinds = _check_kinds(kinds)
        if n_streams < 1 or not 0 <= anomaly_rate <= 1 or (rate_hz is not None and rate_hz <= 0):
            raise ValueError(
                f"need n_streams >= 1, 0 <= anomaly_rate <= 1, rate_hz > 0; got "
                f"{n_streams}, {anomaly_rate}, {rate_hz}"
            )
        width = max(3, len(str(n_streams - 1)))
        seeds = np.random.SeedSequence(seed).spawn(n_streams)
        self._streams = [
            _Stream(
                f"plant{i // _PLANT_SIZE + 1}/{kind}-{i:0{width}d}",
                kind,
                seeds[i],
                1.0 / rate_hz if rate_hz else native_period(kind),
                anomaly_rate,
            )
            for i, kind in ((i, kinds[i % len(kinds)]) for i in range(n_streams))
        ]
        self.streams: list[str] = [s.id for s in self._streams]
        self.active_anomalies: dict[str, LiveAnomaly] = {}
        self.history: deque[tuple[str, LiveAnomaly]] = deque(maxlen=history)
        self._started = False

    def tick(self, now: float) -> list[tuple[str, float, tuple[float, ...]]]:
        """Every reading due by `now` (epoch seconds) not yet returned, in time order."""
        if not self._started:
            for s in self._streams:
                s.start(now)
            self._started = True
        out: list[tuple[str, float, tuple[float, ...]]] = []
        for s in self._streams:
            s.release(now, out, self.active_anomalies, self.history)
        out.sort(key=lambda reading: reading[1])
        return out
