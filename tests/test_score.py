"""Calibration details: onset emphasis (what a repeat of a surprise scores), novelty, the
time-of-day profile, settings."""

import numpy as np
import pytest

from streamer.errors import ConfigError
from streamer.normalize import Normalizer, Scale
from streamer.score import CalibrationConfig, Calibrator, Envelope, Seasonal, explained, surprise


def test_a_repeat_of_a_surprise_scores_below_its_onset_and_a_later_one_recovers():
    """The second of two equal outliers is part of the same episode; one after the peak decays is not."""
    cal = Calibrator(1, CalibrationConfig(onset_halflife=10.0))
    rows = np.zeros(1, np.int64)
    for x in np.random.default_rng(2).standard_normal(500) ** 2:
        cal.step(rows, np.array([x]))
    onset, repeat = (cal.step(rows, np.array([40.0]))[0] for _ in range(2))
    for x in np.random.default_rng(3).standard_normal(200) ** 2:
        cal.step(rows, np.array([x]))
    later = cal.step(rows, np.array([40.0]))[0]
    assert repeat < onset
    assert later > repeat


def envelope_step(env, x, mean=0.0, std=1.0, count=100, warmup=64):
    """One reading of one single-channel stream (row 0) through `env`; its novelty."""
    rows = np.zeros(1, np.int64)
    as_col = lambda v: np.array([[v]], np.float64)  # noqa: E731
    scale = Scale(np.array([count]), as_col(mean), as_col(std) ** 2, as_col(std))
    return env.step(rows, as_col(x), scale, warmup)[0]


def test_novelty_is_the_distance_beyond_the_range_seen_in_standard_deviations():
    env = Envelope(1, 1, CalibrationConfig(novelty_halflife=0.0))
    assert envelope_step(env, 1.0, count=0) == 0.0  # a first reading starts the envelope
    for x in (3.0, -2.0):
        envelope_step(env, x, count=10)  # warming up: widens the range, never novel
    assert envelope_step(env, 2.5, std=2.0) == 0.0  # inside [-2, 3]
    assert envelope_step(env, 4.0, std=2.0) == pytest.approx(0.5)
    assert envelope_step(env, -5.0, std=2.0) == pytest.approx(1.5)
    assert envelope_step(env, 4.0, std=2.0) == 0.0  # the range now holds it
    assert envelope_step(env, 1e30, std=1.0) == Envelope.CLIP


def test_the_range_relaxes_towards_the_mean_with_its_halflife():
    env = Envelope(1, 1, CalibrationConfig(novelty_halflife=10.0))
    envelope_step(env, 0.0, count=0)
    envelope_step(env, 8.0, count=10)
    for _ in range(9):
        envelope_step(env, 0.0)
    # after 10 more readings the high end is halfway back to the mean: 4, and 5 is 1 beyond it
    assert envelope_step(env, 5.0) == pytest.approx(1.0)


def test_novelty_adds_its_weight_in_nats_to_minus_log_p():
    rows = np.zeros(1, np.int64)
    scores = {}
    for weight in (0.0, 16.0):
        # repeat_factor 1: no onset emphasis, which would halve the unremarkable reading
        cal = Calibrator(1, CalibrationConfig(novelty_weight=weight, repeat_factor=1.0))
        for x in np.random.default_rng(0).standard_normal(300) ** 2:
            cal.step(rows, np.array([x]))
        scores[weight] = cal.step(rows, np.array([1.0]), np.array([0.5]))[0]
    log_p = {w: -np.log1p(-float(s)) for w, s in scores.items()}
    assert log_p[16.0] - log_p[0.0] == pytest.approx(8.0, rel=1e-3)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("novelty_weight", -1.0),
        ("novelty_halflife", -5.0),
        ("quantile", 1.0),
        ("halflife", 0.0),
        ("seasonal_harmonics", -1),
        ("seasonal_halflife", 0.0),
        ("seasonal_baseline_halflife", -1.0),
        ("seasonal_on", 1.0),
        ("seasonal_full", 0.01),
    ],
)
def test_calibration_settings_are_checked(field, value):
    with pytest.raises(ConfigError, match=rf"calibration\.{field}"):
        CalibrationConfig(**{field: value})


DAY = 86_400.0
MIDNIGHT = 1_699_920_000.0  # 2023-11-14 00:00 UTC


def seasonal_run(values, ts, config=None):
    """`values` of one single-channel stream through a `Seasonal`, with the normaliser in front
    of it as in the engine; the `Seasonal`, the normaliser and the gate at every reading."""
    seasonal, norm = Seasonal(1, 1, config), Normalizer(1, 1)
    rows = np.zeros(1, np.int64)
    gates, last = [], np.nan
    for x, t in zip(values, ts, strict=True):
        x = np.array([[x]])
        scale = norm.scale(rows)
        out = seasonal.step(rows, x, np.array([t]), np.array([t - last]), scale, 64)
        gates.append(0.0 if out is None else out[2][0, 0])  # None: no gate open
        norm.step(rows, x, scale)
        last = t
    return seasonal, norm, np.array(gates)


def daily(days: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Every 5 minutes: 20 + 5 cos(time of day), peak 25 at noon UTC, trough 15 at midnight."""
    ts = MIDNIGHT + 300.0 * np.arange(288 * days)
    hours = np.mod(ts, DAY) / 3600.0
    noise = 0.5 * np.random.default_rng(seed).standard_normal(len(ts))
    return 20 + 5 * np.cos(2 * np.pi * (hours - 12) / 24) + noise, ts


def test_the_profile_learns_the_time_of_day_and_its_gate_opens_on_a_daily_stream():
    values, ts = daily(10)
    seasonal, norm, gates = seasonal_run(values, ts)
    assert gates[: 288 // 2].max() == 0.0  # no evidence in the first half day
    assert gates[-288:].min() == 1.0
    rows = np.zeros(1, np.int64)
    scale = norm.scale(rows)

    def residual(hour: float) -> float:
        """The residual of the noon value, 25, at `hour` on the next day (not learned)."""
        probe = Seasonal(1, 1)
        for name in Seasonal.FIELDS:
            getattr(probe, name)[:] = getattr(seasonal, name)
        t = np.array([ts[-1] + 300.0 + hour * 3600.0 - np.mod(ts[-1] + 300.0, DAY)])
        r, var, _ = probe.step(rows, np.array([[25.0]]), t, np.array([300.0]), scale, 64)
        return float(r[0, 0] / np.sqrt(var[0, 0]))

    # in standard deviations of the profile's residuals: typical at noon, far out at midnight
    assert abs(residual(12.0)) < 2.0
    assert residual(0.0) > 5.0


@pytest.mark.parametrize("kind", ["white noise", "random walk", "flat", "ecg at 250 Hz"])
def test_the_gate_stays_shut_without_a_daily_pattern(kind):
    rng = np.random.default_rng(1)
    if kind == "ecg at 250 Hz":
        ts = MIDNIGHT + np.arange(250 * 60) / 250.0
        values = np.sin(2 * np.pi * 1.2 * ts) ** 15 + 0.05 * rng.standard_normal(len(ts))
    else:
        ts = MIDNIGHT + 300.0 * np.arange(288 * 10)
        noise = rng.standard_normal(len(ts))
        values = {"white noise": noise, "random walk": np.cumsum(noise), "flat": 0 * noise + 3}[
            kind
        ]
    seasonal, _, gates = seasonal_run(values, ts)
    assert gates.max() == 0.0
    if kind == "ecg at 250 Hz":  # a reading stands for 4 ms of a 3-day memory: nothing is learned
        assert np.abs(seasonal.coef).max() < 1e-3


def test_the_seasonal_term_only_explains_surprise_away_and_only_as_far_as_its_gate():
    z = np.array([[3.0]], np.float32)
    mean, log_var = np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32)
    plain, _ = surprise(z, mean, log_var)
    nll = plain - 0.5 * z[0] ** 2
    at_profile = (np.array([[0.0]]), np.array([[0.25]]))  # the reading sits on its profile
    open_, half, shut = (
        surprise(z, mean, log_var, (*at_profile, np.array([[g]])))[0] for g in (1.0, 0.5, 0.0)
    )
    assert shut == plain
    assert open_ < half < plain
    # fully explained: the model's terms give way to the profile's (NLL of a 0 residual, no z**2)
    assert open_[0] == pytest.approx(0.5 * (np.log(2 * np.pi) + np.log(0.25)), abs=1e-5)
    assert nll[0] > open_[0]
    far = (
        np.array([[10.0]]),
        np.array([[0.25]]),
        np.array([[1.0]]),
    )  # the profile is more surprised
    assert explained(z, nll[:, None], *far)[0, 0] == 0.0


def test_seasonal_harmonics_0_turns_the_profile_off_and_stores_nothing():
    seasonal = Seasonal(4, 2, CalibrationConfig(seasonal_harmonics=0))
    assert not seasonal.enabled
    assert sum(getattr(seasonal, name).nbytes for name in Seasonal.FIELDS) == 0
