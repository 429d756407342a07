"""The online normaliser and gap feature: finite on any finite input, scale-free, score-before-learn."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.normalize import GapTracker, Normalizer, NormalizerConfig, encode_series

finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)


@given(st.lists(finite, min_size=1, max_size=100))
@settings(max_examples=60, deadline=None)
def test_finite_and_bounded_on_any_finite_input(values):
    z = encode_series(values, np.arange(len(values), dtype=float))
    assert np.isfinite(z).all()
    assert np.abs(z[:, 0]).max() <= NormalizerConfig().z_clip


@given(finite, st.integers(min_value=3, max_value=100))
@settings(max_examples=40, deadline=None)
def test_constant_series_is_all_zero(c, n):
    z = encode_series(np.full(n, c), np.arange(n, dtype=float))
    assert np.all(z == 0)


@given(st.floats(min_value=-13, max_value=30), st.floats(min_value=-20, max_value=20))
@settings(max_examples=30, deadline=None)
def test_scale_and_offset_do_not_change_z(log_scale, offset):
    """Huge and tiny scales normalise to the same inputs, once the spread is known.

    Offsets are kept where the spread dominates the relative floor (rel_floor * |mean|),
    which exists on purpose: a reading of 98.0 on a sensor stuck at 98.0 is not news.
    """
    rng = np.random.default_rng(0)
    base = rng.standard_normal(150)
    scale = float(np.exp(log_scale))
    ref = encode_series(base, np.arange(150.0))
    z = encode_series((base + offset) * scale, np.arange(150.0))
    assert np.allclose(z[5:], ref[5:], atol=1e-3)


def test_scores_before_learning():
    """A spike is judged by the statistics before it, then only nudges them (clipped update)."""
    norm = Normalizer(1, 1)
    row = np.zeros(1, np.int64)
    rng = np.random.default_rng(1)
    for v in rng.standard_normal(500):
        norm.step(row, np.array([[v]]))
    before = norm.mean[0, 0], norm.var[0, 0]
    z = norm.step(row, np.array([[1000.0]]))
    assert z[0, 0] == NormalizerConfig().z_clip
    assert abs(norm.mean[0, 0] - before[0]) < 0.01
    assert norm.var[0, 0] < 2 * before[1]


def test_level_shift_is_adapted_to():
    values = np.r_[
        np.random.default_rng(2).standard_normal(2000),
        50 + np.random.default_rng(3).standard_normal(6000),
    ]
    z = encode_series(values, np.arange(len(values), dtype=float))
    assert abs(z[-500:, 0].mean()) < 1.0


def test_rows_are_independent():
    norm = Normalizer(3, 1)
    norm.step(np.array([0, 2]), np.array([[5.0], [7.0]]))
    assert norm.count.tolist() == [1, 0, 1]
    assert norm.mean[1, 0] == 0.0


def test_gap_feature_marks_late_readings():
    ts = np.r_[np.arange(100) * 60.0, 100 * 60.0 + 3600, 100 * 60.0 + 3660]
    g = encode_series(np.zeros(len(ts)), ts)[:, -1]
    assert g[0] == 0 and abs(g[50]) < 1e-6
    assert g[100] > 3.0  # an hour late on a one-minute schedule
    assert abs(g[101]) < 0.2  # one long gap does not redefine the schedule


def test_gap_tracker_ignores_unknown_gaps():
    gaps = GapTracker(1)
    row = np.zeros(1, np.int64)
    assert gaps.step(row, np.array([np.nan]))[0] == 0
    assert np.isnan(gaps.period(row)[0])
    gaps.step(row, np.array([10.0]))
    assert np.isclose(gaps.period(row)[0], 10.0)
