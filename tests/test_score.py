"""Calibration details: onset emphasis (what a repeat of a surprise scores), novelty, the
time-of-day profile and its context evidence, recurring surprises, settings."""

from dataclasses import replace

import numpy as np
import pytest

from streamer.calibration import CalibrationConfig
from streamer.errors import ConfigError
from streamer.normalize import Normalizer, Scale
from streamer.score import Calibrator, Envelope, surprise
from streamer.seasonal import Seasonal, explained


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


def test_a_young_tail_is_a_lomax_that_tends_to_the_exponential():
    """Beyond u, -log p = -log(1 - quantile) + k log(1 + e / k), where e is the exponential's
    (x - u) / b and k = tail_prior + n (1 - quantile): lower than the exponential's while
    few excesses are behind the scale, and the gap closes as the stream ages."""
    rows = np.zeros(1, np.int64)
    gaps = []
    for n in (300, 20_000):
        log_p = {}
        for prior in (0.0, 3.0):
            config = CalibrationConfig(tail_prior=prior, repeat_factor=1.0)
            cal = Calibrator(1, config)
            for x in np.random.default_rng(0).standard_normal(n) ** 2:
                cal.step(rows, np.array([x]))
            spike = cal.threshold[0] + 6.0 * cal.excess[0]  # e = 6: -log p about 11 nats
            log_p[prior] = -np.log1p(-float(cal.step(rows, np.array([spike]))[0]))
        tail = -np.log1p(-config.quantile)
        k = 3.0 + n * (1.0 - config.quantile)
        e = log_p[0.0] - tail
        assert e == pytest.approx(6.0, abs=0.05)
        assert log_p[3.0] == pytest.approx(tail + k * np.log1p(e / k), abs=0.05)
        gaps.append(log_p[0.0] - log_p[3.0])
    assert gaps[0] > 1.0 > 0.2 > gaps[1] > 0.0


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


def test_novelty_is_measured_in_a_share_of_the_range_where_the_deviation_has_collapsed():
    """A mostly flat stream with rare large values: its standard deviation is tiny between
    them, so a record a little above the old maximum is not 20 deviations new."""
    for share, expected in ((0.05, 2.0), (0.0, Envelope.CLIP)):
        env = Envelope(1, 1, CalibrationConfig(novelty_halflife=0.0, novelty_range_share=share))
        envelope_step(env, 0.0, count=0)
        envelope_step(env, 100.0, count=10)  # the range is [0, 100]
        # 10 beyond it; deviation 0.1: 100 deviations (clipped to 20), or 2 twentieths of the range
        assert envelope_step(env, 110.0, std=0.1) == pytest.approx(expected)
    env = Envelope(1, 1, CalibrationConfig(novelty_halflife=0.0, novelty_range_share=0.05))
    envelope_step(env, 0.0, count=0)
    envelope_step(env, 10.0, count=10)
    # where the deviation is the larger scale it is the one used: 1 beyond, std 2
    assert envelope_step(env, 11.0, std=2.0) == pytest.approx(0.5)


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
        ("context_weight", -1.0),
        ("context_halflife", 0.0),
        ("context_on", 0.01),  # below seasonal_on: its evidence would come where no gate is open
        ("context_full", 0.3),
        ("recurrence_factor", 1.5),
        ("recurrence_tolerance", 0.0),
        ("recurrence_days", 0),
        ("recurrence_slots", 0),
        ("recurrence_periodic", 2),
        ("tail_prior", -1.0),
        ("novelty_range_share", -0.1),
    ],
)
def test_calibration_settings_are_checked(field, value):
    with pytest.raises(ConfigError, match=rf"calibration\.{field}"):
        CalibrationConfig(**{field: value})


DAY = 86_400.0
MIDNIGHT = 1_699_920_000.0  # 2023-11-14 00:00 UTC


def seasonal_run(values, ts, config=None, part=2):
    """`values` of one single-channel stream through a `Seasonal`, with the normaliser in front
    of it as in the engine; the `Seasonal`, the normaliser and, at every reading, the gate
    (`part` 2) or the context evidence (`part` 3) of its output."""
    seasonal, norm = Seasonal(1, 1, config), Normalizer(1, 1)
    rows = np.zeros(1, np.int64)
    series, last = [], np.nan
    for x, t in zip(values, ts, strict=True):
        x = np.array([[x]])
        scale = norm.scale(rows)
        out = seasonal.step(rows, x, np.array([t]), np.array([t - last]), scale, 64)
        series.append(0.0 if out is None else out[part][0, 0])  # None: no gate open
        norm.step(rows, x, scale)
        last = t
    return seasonal, norm, np.array(series)


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
        r, var, _, _ = probe.step(rows, np.array([[25.0]]), t, np.array([300.0]), scale, 64)
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


def context_run(values, ts, config=None):
    """The context evidence at every reading (see `seasonal_run`)."""
    return seasonal_run(values, ts, config, part=3)[2]


def skipped_rise(amplitude: float, noise: float, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """11 days every 5 minutes of 20 + `amplitude` cos(time of day) (peak at noon) plus noise;
    on the last day the values stay at the trough from 06:00 to 18:00: each one in the range
    of the stream, wrong only for its time of day."""
    ts = MIDNIGHT + 300.0 * np.arange(288 * 11)
    hours = np.mod(ts, DAY) / 3600.0
    rng = np.random.default_rng(seed)
    values = 20 + amplitude * np.cos(2 * np.pi * (hours - 12) / 24)
    values += noise * rng.standard_normal(len(ts))
    skipped = (ts >= MIDNIGHT + 10 * DAY + 6 * 3600) & (ts < MIDNIGHT + 10 * DAY + 18 * 3600)
    trough = 20 - amplitude + noise * rng.standard_normal(len(ts))
    return np.where(skipped, trough, values), ts


def test_context_fires_when_a_daily_stream_skips_its_rise_and_is_quiet_on_normal_days():
    values, ts = skipped_rise(5.0, 0.5)
    evidence = context_run(values, ts)
    assert evidence[: 288 * 10].max() == 0.0
    # well beyond context_level: at context_weight 16 more than 16 nats on -log p
    assert evidence[288 * 10 :].max() > 1.0
    off = context_run(values, ts, CalibrationConfig(context_weight=0.0))
    assert off.max() == 0.0
    assert Seasonal(1, 1, CalibrationConfig(context_weight=0.0)).table.shape[2] == 7 + 3


def test_context_stays_quiet_where_the_profile_explains_too_little():
    """A quarter of the variance daily: the seasonal gate is open, the stricter context gate is
    not, so even the skipped rise (which a gate as loose as the seasonal one would report)
    adds nothing: on a noisy stream sustained departures from the profile are routine."""
    values, ts = skipped_rise(1.0, 1.0)
    _, _, gates = seasonal_run(values, ts)
    assert gates[288 * 10 - 1] == 1.0
    assert context_run(values, ts).max() == 0.0
    loose = CalibrationConfig(context_on=0.05, context_full=0.15)
    assert context_run(values, ts, loose)[288 * 10 :].max() > 0.0


def recurring_scores(
    config: CalibrationConfig, spike_times: list[float], days: int = 5
) -> list[float]:
    """-log p of a spike (raw 20: about 11 nats, below float32's saturation) at each of `spike_times` on one stream whose raw scores are
    otherwise chi-squared(1) capped at 8, one every 5 minutes from MIDNIGHT for `days` days."""
    cal = Calibrator(1, config)
    rows = np.zeros(1, np.int64)
    noise = np.minimum(np.random.default_rng(4).standard_normal(288 * days) ** 2, 8.0)
    out = []
    for k, x in enumerate(noise):
        t = MIDNIGHT + 300.0 * k
        spike = any(abs(t - s) < 150.0 for s in spike_times)
        score = cal.step(rows, np.array([20.0 if spike else x]), ts=np.array([t]))[0]
        if spike:
            out.append(-np.log1p(-float(score)))
    return out


def test_a_surprise_at_the_time_of_day_of_yesterdays_is_damped_a_new_time_is_not():
    noon = MIDNIGHT + 12 * 3600.0
    times = [noon + DAY, noon + 2 * DAY, noon + 3 * DAY + 6 * 3600.0, noon + 4 * DAY + 600.0]
    # (scores are float32: -log p near 15 is good to about 0.1.) Onset emphasis out of the way; a level no chi-squared reading of the noise reaches, so the
    # two slots hold the spikes' times of day only.
    config = CalibrationConfig(onset_halflife=1.0, recurrence_level=10.0)
    first, again, elsewhere, again_later = recurring_scores(config, times)
    plain = recurring_scores(replace(config, recurrence_factor=1.0), times)
    assert first == pytest.approx(plain[0])  # the first one always scores in full
    assert again == pytest.approx(config.recurrence_factor * plain[1], abs=0.1)
    assert elsewhere == pytest.approx(plain[2])  # 18:00: not a time of day seen before
    # noon + 10 min, two days after the last noon spike: within the tolerance and the days
    assert again_later == pytest.approx(config.recurrence_factor * plain[3], abs=0.1)
    assert min(plain) > config.recurrence_level


def test_a_surprise_one_period_after_two_others_is_damped_an_off_beat_or_a_burst_is_not():
    """A routine of any period (7 hours here: not a day) is damped from its third beat on;
    a surprise off the beat, and three surprises 15 minutes apart (a burst, shorter than
    4 tolerances), score in full."""
    h = 3600.0
    first = MIDNIGHT + DAY + 0.5 * h  # the stream's first spike saturates float32: not compared
    beats = [MIDNIGHT + DAY + 3 * h + k * 7 * h for k in range(4)]  # 03:00, 10:00, 17:00, 00:00
    off_beat = beats[-1] + 11.5 * h
    burst = [MIDNIGHT + 3 * DAY + 12 * h + k * 900.0 for k in range(3)]
    # tail_prior 0: the spikes stay above the level, as in the test above
    config = CalibrationConfig(onset_halflife=1.0, recurrence_level=10.0, tail_prior=0.0)
    times = [first, *beats, off_beat, *burst]
    with np.errstate(divide="ignore"):  # the first spike's -log p is inf
        scores = recurring_scores(config, times)[1:]
        plain = recurring_scores(replace(config, recurrence_periodic=0), times)[1:]
    assert max(plain) < np.inf and min(plain) > config.recurrence_level
    assert scores[:2] == pytest.approx(plain[:2])  # two beats are not yet a period
    for k in (2, 3):
        assert scores[k] == pytest.approx(config.recurrence_factor * plain[k], abs=0.1)
    assert scores[4] == pytest.approx(plain[4])  # 11.5 hours after the last beat: off it
    assert scores[5:] == pytest.approx(plain[5:])  # a burst is not a routine


def test_recurrence_off_stores_nothing_and_without_timestamps_nothing_is_damped():
    assert Calibrator(3, CalibrationConfig(recurrence_factor=1.0)).recur.shape == (3, 0)
    assert Calibrator(3).recur.shape == (3, CalibrationConfig().recurrence_slots)


def test_a_routine_five_days_apart_is_remembered_through_five_other_surprises():
    """A spike at noon, five spikes at other times of day the next day, and a spike at noon
    five days after the first: with the default `recurrence_days` (5) and
    `recurrence_slots` (8) the last one is damped; with the earlier 3 days or 4 slots it is
    not (3 days: too far back; 4 slots: noon is pushed out by the five others). On NAB
    8 slots and 5 days scored 63.54 / 56.68 / 71.09 against 63.02 / 56.09 / 70.75."""
    h = 3600.0
    others = [MIDNIGHT + DAY + x * h for x in (1.0, 4.0, 8.5, 17.0, 21.5)]
    times = [MIDNIGHT + 12 * h, *others, MIDNIGHT + 5 * DAY + 12 * h]
    # level 9: every spike (-log p 9.5 to 11 as the tail learns) is a surprise, the noise
    # (at most 7.5) is not, so only the spikes take slots
    config = CalibrationConfig(onset_halflife=1.0, recurrence_level=9.0)
    assert (config.recurrence_days, config.recurrence_slots) == (5, 8)
    last = recurring_scores(config, times, days=6)[-1]
    plain = recurring_scores(replace(config, recurrence_factor=1.0), times, days=6)[-1]
    assert plain > config.recurrence_level
    assert last == pytest.approx(config.recurrence_factor * plain, abs=0.1)
    for short in (replace(config, recurrence_days=3), replace(config, recurrence_slots=4)):
        assert recurring_scores(short, times, days=6)[-1] == pytest.approx(plain)
