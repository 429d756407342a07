"""`streamer evaluate`: replay is the engine's own loop, NAB's layout round-trips, CSVs are scored.

Everything runs the shipped default model through real onnxruntime sessions; the
multichannel cases use a small untrained exported GRU, because only the wiring (one
stream per file, channels kept together) is under test there, not detection quality.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer import nab, quality, sim
from streamer.__main__ import main
from streamer.calibration import CalibrationConfig
from streamer.engine import EngineSettings, StreamEngine
from streamer.errors import ConfigError
from streamer.evaluate import Detector, LabelSource, replay, run_csv, run_nab
from streamer.model import StepModel
from streamer.report import KEEP_MARKER
from streamer.score import Calibrator

NAB_ROOT = Path(
    os.environ.get("NAB_ROOT", Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nab")
)
# Three short NAB files from three categories; exchange-2_cpc repeats a timestamp once,
# so the engine drops a reading there and the replay must keep the rows aligned anyway.
MINI_NAB = (
    "realAdExchange/exchange-2_cpc_results.csv",
    "realTraffic/speed_7578.csv",
    "realAWSCloudwatch/iio_us-east-1_i-a2eb1cd9_NetworkIn.csv",
)


@pytest.fixture(scope="module")
def model(model_path) -> StepModel:
    return StepModel(model_path)


@pytest.fixture(scope="module")
def mini_nab(tmp_path_factory) -> Path:
    """A NAB root holding three of the corpus' files, their windows and NAB's config."""
    root = tmp_path_factory.mktemp("nab")
    windows = json.loads((NAB_ROOT / "labels" / "combined_windows.json").read_text())
    for relpath in MINI_NAB:
        (root / "data" / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(NAB_ROOT / "data" / relpath, root / "data" / relpath)
    (root / "labels").mkdir()
    (root / "labels" / "combined_windows.json").write_text(
        json.dumps({k: windows[k] for k in MINI_NAB})
    )
    shutil.copytree(NAB_ROOT / "config", root / "config")
    return root


def direct_scores(engine: StreamEngine, streams: list[tuple[str, np.ndarray, np.ndarray]]):
    """The engine driven by hand: wave t = reading t of every stream that has one, in the
    given order; a reading counts once the stream has a prediction and `warmup` readings taken."""
    scores = {sid: np.zeros(len(ts)) for sid, ts, _ in streams}
    taken = dict.fromkeys(scores, 0)
    for t in range(max(len(ts) for _, ts, _ in streams)):
        live = [(sid, ts[t], v[t]) for sid, ts, v in streams if t < len(ts)]
        wave = engine.step([s for s, _, _ in live], [x for _, x, _ in live], [v for *_, v in live])
        for sid, raw, score in zip(wave.ids, wave.raw, wave.score, strict=True):
            taken[sid] += 1
            if not np.isnan(raw) and taken[sid] > engine.warmup:
                scores[sid][t] = score
    return scores


def sim_streams(lengths: tuple[int, ...]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    kinds = ("temperature", "cpu_load", "pressure")
    out = []
    for i, n in enumerate(lengths):
        s = sim.generate(kinds[i % len(kinds)], n, seed=i, anomalies=1)
        out.append((f"{s.kind}-{i}", s.ts, s.values))
    return out


def test_replay_equals_a_direct_engine_loop(model):
    streams = sim_streams((400, 250, 320))
    ts = streams[1][1].copy()
    ts[200] = ts[199]  # a duplicate timestamp: dropped by the engine, scored 0, rows stay aligned
    streams[1] = (streams[1][0], ts, streams[1][2])
    detector = Detector()
    got = replay(
        detector.engine(model, 3),
        [s for s, _, _ in streams],
        [t for _, t, _ in streams],
        [v for *_, v in streams],
    )
    want = direct_scores(detector.engine(model, 3), streams)
    for (sid, ts_i, _), g in zip(streams, got, strict=True):
        assert g.shape == (len(ts_i),)
        assert np.array_equal(g, want[sid])
        assert not g[: model.info.warmup].any()  # warming up: nothing to alert on
        assert g[model.info.warmup + 1 :].max() > 0
    assert got[1][200] == 0.0


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.one_of(st.floats(-1e6, 1e6), st.sampled_from([np.nan, np.inf, -np.inf])),
            st.sampled_from([60.0, 60.0, 60.0, 0.0, -30.0, 7200.0]),
        ),
        min_size=1,
        max_size=160,
    )
)
def test_replay_gives_one_bounded_score_per_reading_whatever_arrives(model, readings):
    values = np.array([v for v, _ in readings])
    ts = 1.7e9 + np.cumsum([dt for _, dt in readings])
    engine = Detector().engine(model, 2)
    steady = np.sin(np.arange(len(ts)) / 5.0)
    scores = replay(
        engine, ["odd", "steady"], [ts, ts[0] + 60.0 * np.arange(len(ts))], [values, steady]
    )
    assert [len(s) for s in scores] == [len(ts), len(ts)]
    for s in scores:
        assert np.isfinite(s).all() and (s >= 0).all() and (s <= 1).all()
    dropped, last = np.zeros(len(ts), bool), -np.inf
    for i, (v, t) in enumerate(zip(values, ts, strict=True)):
        dropped[i] = not (np.isfinite(v) and t > last)
        last = last if dropped[i] else t
    assert not scores[0][dropped].any()
    assert engine.counts["not_finite"] == int((~np.isfinite(values)).sum())


def test_nab_results_layout_round_trips_row_by_row(mini_nab, tmp_path):
    corpus, scored, results = run_nab(mini_nab, tmp_path / "results")
    read = nab.read_results(tmp_path / "results", "streamer", corpus)
    for f, s in zip(corpus.files, scored, strict=True):
        path = nab.results_path(tmp_path / "results", "streamer", f.relpath)
        lines = path.read_text().splitlines()
        assert lines[0] == "timestamp,value,anomaly_score,label"
        rows = [line.split(",") for line in lines[1:]]
        assert len(rows) == f.rows
        assert np.array_equal(quality.to_seconds([r[0] for r in rows]), f.timestamps)
        assert np.array_equal(np.array([r[1] for r in rows], float), f.values)
        assert np.array_equal(np.array([r[3] for r in rows], int), f.labels.astype(int))
        assert np.array_equal(read[f.relpath], s.score.astype(np.float64))
    assert set(results) == set(nab.DEFAULT_PROFILES)
    rescored = nab.score_all(corpus, read)
    for name, r in results.items():
        assert r.normalized_score == rescored[name].normalized_score
        assert r.threshold == rescored[name].threshold


def test_nab_command_writes_scores_and_a_report(mini_nab, tmp_path, capsys):
    out, report = tmp_path / "results", tmp_path / "report"
    report.mkdir()
    (report / "README.md").write_text(f"old text\n{KEEP_MARKER}\n## Ablation\nmy notes\n")
    argv = ["evaluate", "nab", "--data", str(mini_nab), "--out", str(out), "--quiet"]
    assert main([*argv, "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "streamer.json").read_text())
    for name, profile in summary["profiles"].items():
        assert f"{name}" in printed and f"{profile['score']:8.2f}" in printed
        assert set(profile["files"]) == set(MINI_NAB)
    readme = (report / "README.md").read_text()
    assert "old text" not in readme and readme.endswith("## Ablation\nmy notes\n")
    assert "| standard |" in readme and "HTM (numenta)" in readme
    plots = sorted(p.name for p in report.glob("*.png"))
    assert len(plots) == 3 and all(f"({p})" in readme for p in plots)


def write_series(series: sim.Series, path: Path, sep: str = ",") -> Path:
    sim.write_csv(series, path)
    if sep != ",":
        path.write_text(path.read_text().replace(",", sep))
    return path


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> tuple[Path, list[sim.Series]]:
    folder = tmp_path_factory.mktemp("labelled")
    # Days apart, so one list of anomaly times can label all three files.
    series = [
        sim.generate(kind, 700, seed=3, start=1.7e9 + i * 1e7, anomalies=2)
        for i, kind in enumerate(("temperature", "flow", "cpu_load"))
    ]
    for s in series:
        write_series(s, folder / f"{s.name}.csv")
    return folder, series


def test_csv_mode_measures_each_file_against_its_label_column(model_path, labelled):
    folder, series = labelled
    scored, per_file, overall = run_csv([folder], LabelSource(), Detector(model_path))
    by_name = {f.name: f for f in per_file}
    for s in series:
        r = by_name[s.name].report
        assert by_name[s.name].rows == len(s.ts)
        assert r.events == len(quality.events(s.labels)) > 0
        assert r.tp + r.fn == int(s.labels.sum())
        assert r.tp + r.fp + r.fn + r.tn == len(s.ts)
        assert 0.0 <= r.roc_auc <= 1.0
    assert overall.events == sum(f.report.events for f in per_file)
    assert overall.threshold == EngineSettings().enter
    flagged = sum(int((s.score >= overall.threshold).sum()) for s in scored)
    assert overall.tp + overall.fp == flagged


def test_windows_and_points_label_the_rows_the_column_does(model_path, labelled, tmp_path):
    folder, series = labelled
    iso = lambda t: str(np.datetime64(round(t * 1e6), "us"))  # noqa: E731
    # A millisecond of slack: the window file and the CSV parse their times by different routes.
    windows = {
        f"{s.name}.csv": [
            [iso(s.ts[a.start] - 1e-3), iso(s.ts[a.end - 1] + 1e-3)] for a in s.anomalies
        ]
        for s in series
    }
    (tmp_path / "windows.json").write_text(json.dumps(windows))
    points = [iso(s.ts[a.start]) for s in series for a in s.anomalies]
    (tmp_path / "points.txt").write_text("# anomaly onsets\n" + "\n".join(points) + "\n")

    by_column = run_csv([folder], LabelSource(), Detector(model_path))[0]
    by_windows = run_csv(
        [folder], LabelSource(windows=tmp_path / "windows.json"), Detector(model_path)
    )[0]
    by_points = run_csv(
        [folder], LabelSource(points=tmp_path / "points.txt"), Detector(model_path)
    )[0]
    by_name = {s.name: s for s in series}
    for col, win, pts in zip(by_column, by_windows, by_points, strict=True):
        s = by_name[col.name]
        assert np.array_equal(win.labels, col.labels)
        onsets = np.zeros(len(s.ts), bool)
        onsets[[a.start for a in s.anomalies]] = True
        assert np.array_equal(pts.labels, onsets)
        assert np.array_equal(win.score, col.score)  # labels never reach the engine


def test_a_file_without_labels_needs_a_label_source(model_path, tmp_path):
    s = sim.generate("pressure", 300, seed=1)
    path = tmp_path / "plain.csv"
    path.write_text(
        "timestamp,value\n"
        + "".join(f"{t},{float(v[0])!r}\n" for t, v in zip(s.ts, s.values, strict=True))
    )
    with pytest.raises(ConfigError, match="no label column"):
        run_csv([path], LabelSource(), Detector(model_path))


def test_multichannel_semicolon_files_meet_a_multichannel_model_whole(
    xyz_model, model_path, tmp_path
):
    s = sim.generate("vibration", 500, seed=4, anomalies=2)
    path = write_series(s, tmp_path / "pump.csv", sep=";")
    assert ";" in path.read_text().splitlines()[1]
    scored, per_file, _ = run_csv([path], LabelSource(), Detector(xyz_model))
    assert [x.name for x in scored] == ["pump"]
    assert scored[0].values.shape == (len(s.ts), 3)
    assert np.allclose(scored[0].values, s.values)
    assert per_file[0].report.events == len(quality.events(s.labels))
    assert (scored[0].score[21:] > 0).any()

    split = run_csv([path], LabelSource(), Detector(model_path))[0]
    assert [x.name for x in split] == ["pump/x", "pump/y", "pump/z"]
    assert all(np.array_equal(x.labels, s.labels) for x in split)

    flat = write_series(sim.generate("flow", 200, seed=5), tmp_path / "flow.csv")
    with pytest.raises(ConfigError, match="the model reads 3"):
        run_csv([flat], LabelSource(), Detector(xyz_model))


def test_csv_command_prints_writes_json_and_reports(model_path, labelled, tmp_path, capsys):
    folder, series = labelled
    out, report = tmp_path / "out", tmp_path / "report"
    argv = ["evaluate", "csv", str(folder), "--out", str(out), "--report", str(report)]
    assert main([*argv, "--threshold", "0.9", "--tolerance", "3", "--quiet"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "quality.json").read_text())
    assert set(summary["files"]) == {s.name for s in series}
    assert summary["all"]["threshold"] == 0.9
    assert summary["all"]["events"] == sum(len(quality.events(s.labels)) for s in series)
    assert all(s.name in printed for s in series) and "ROC AUC" in printed
    readme = (report / "README.md").read_text()
    assert "Threshold 0.9" in readme and len(list(report.glob("*.png"))) == len(series)


def test_bad_calibration_override_names_the_flag(labelled, tmp_path, capsys):
    folder, _ = labelled
    argv = ["evaluate", "csv", str(folder), "--out", str(tmp_path), "--quiet"]
    assert main([*argv, "--calibration", '{"no_such_field": 1}']) == 2
    assert "--calibration" in capsys.readouterr().err


# ----------------------------------------------------------------------------- calibration


def calibrate(raw: np.ndarray, config: CalibrationConfig | None = None) -> np.ndarray:
    """Scores [T, N] of raw scores [T, N], N streams advanced together as the engine does."""
    cal = Calibrator(raw.shape[1], config)
    rows = np.arange(raw.shape[1])
    return np.array([cal.step(rows, r) for r in raw], np.float64)


def test_score_is_one_minus_the_tail_probability_on_an_exponential_tail():
    raw = np.random.default_rng(0).exponential(1.0, size=(4000, 50))
    scores = calibrate(raw)[500:]
    for p in (1e-2, 1e-3):
        assert 0.5 * p < (scores >= 1.0 - p).mean() < 2.0 * p


def test_streams_of_any_scale_and_offset_score_alike():
    raw = np.random.default_rng(1).standard_normal((3000, 1)) ** 2  # a calibrated model's NLL shape
    base = calibrate(raw)
    for scale, shift in ((100.0, 5.0), (0.2, -30.0)):
        assert np.allclose(calibrate(scale * raw + shift), base, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(-50, 1e4), min_size=60, max_size=200),
    st.lists(st.floats(-50, 1e4), min_size=2, max_size=20),
)
def test_scores_are_bounded_and_rank_readings_like_their_raw_scores(history, probes):
    """Whatever a stream has seen, a larger raw score never gets a smaller score."""
    cal = Calibrator(len(probes))
    rows = np.arange(len(probes))
    for x in history:
        cal.step(rows, np.full(len(probes), x))
    probes = np.array(probes)
    scores = cal.step(rows, probes)
    assert ((scores >= 0) & (scores <= 1)).all()
    order = np.argsort(probes, kind="stable")
    assert (np.diff(scores[order]) >= 0).all()
