"""Calibration details: onset emphasis (what a repeat of a surprise scores)."""

import numpy as np

from streamer.score import CalibrationConfig, Calibrator


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
