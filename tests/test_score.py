"""Calibration details: onset emphasis (what a repeat of a surprise scores), novelty, settings."""

import numpy as np
import pytest

from streamer.errors import ConfigError
from streamer.score import CalibrationConfig, Calibrator, Envelope


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
    return env.step(rows, as_col(x), as_col(mean), as_col(std), np.array([count]), warmup)[0]


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
    [("novelty_weight", -1.0), ("novelty_halflife", -5.0), ("quantile", 1.0), ("halflife", 0.0)],
)
def test_calibration_settings_are_checked(field, value):
    with pytest.raises(ConfigError, match=rf"calibration\.{field}"):
        CalibrationConfig(**{field: value})
