"""`streamer evaluate`: labelled files replayed through the deployed engine, then scored.

A number measured here must be a number of the daemon, so nothing is re-implemented:
every file becomes one stream of one `StreamEngine`, fed in waves of one reading per
stream exactly as the batcher feeds it live (streams drop out as their files end),
and the score judged is the engine's calibrated `Wave.score`. Readings the engine
would not alert on (a stream's warm-up, readings it drops) get score 0: the daemon
would have said nothing there either.

Two corpora: NAB (`evaluate nab`, scored with NAB's own rules by `streamer.nab`) and
the user's labelled CSVs (`evaluate csv`, scored with `streamer.quality`). Labels are
only ever handed to the scorers, never to the engine.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from . import nab, quality
from .calibration import CalibrationConfig
from .engine import EngineSettings, StreamEngine, Wave
from .errors import ConfigError
from .model import DEFAULT_MODEL, StepModel, file_sha256

DETECTOR = "streamer"


@dataclass
class Scored:
    """One replayed file: its readings, the engine's score of each and the ground truth."""

    name: str
    ts: np.ndarray  # [T] epoch seconds
    values: np.ndarray  # [T, C]
    score: np.ndarray  # [T] calibrated score; 0 where the engine could not alert
    labels: np.ndarray  # bool [T]


# ----------------------------------------------------------------------------- replay


def replay(
    engine: StreamEngine,
    ids: Sequence[str],
    timestamps: Sequence[np.ndarray],
    values: Sequence[np.ndarray],
    progress: bool = False,
) -> list[np.ndarray]:
    """The engine's score of every reading of every stream, one array [T_i] per stream.

    Wave t holds reading t of every stream that has one, in the order given, so
    streams of different lengths drop out as they end. A reading the engine drops
    (out of order, duplicate, not finite) or gives no alert-able score (warm-up, no
    prediction yet) scores 0.
    """
    if len(set(ids)) != len(ids):
        raise ConfigError("stream ids must be distinct")
    lengths = np.array([len(t) for t in timestamps])
    order = np.argsort(-lengths, kind="stable")  # longest first: active streams are a prefix
    ids_sorted = [ids[i] for i in order]
    position = {sid: k for k, sid in enumerate(ids_sorted)}
    ts_pad, val_pad = _pad(
        [timestamps[i] for i in order], [values[i] for i in order], engine.channels
    )
    scores = np.zeros(ts_pad.shape, np.float32)
    active = (lengths[order][None, :] > np.arange(ts_pad.shape[0])[:, None]).sum(axis=1)
    with _Progress(int(lengths.sum()), progress) as advance:
        for t, k in enumerate(active):
            wave = engine.step(ids_sorted[:k], ts_pad[t, :k], val_pad[t, :k])
            cols = [position[sid] for sid in wave.ids]
            scores[t, cols] = np.where(may_alert(engine, wave), wave.score, 0.0)
            advance(int(k))
    out = [np.empty(0, np.float32)] * len(ids)
    for k, i in enumerate(order):
        out[i] = scores[: lengths[i], k].copy()
    return out


def may_alert(engine: StreamEngine, wave: Wave) -> np.ndarray:
    """Which readings of a wave the engine let alert: a prediction to score against, warm-up over.

    Asked of the store after the step, where `seen` already counts this reading.
    """
    return ~np.isnan(wave.raw) & (engine.store.seen[wave.rows] > engine.warmup)


def _pad(
    timestamps: Sequence[np.ndarray], values: Sequence[np.ndarray], channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Streams as time-major arrays [T_max, N] and [T_max, N, C], so a wave is one slice."""
    t_max = max((len(t) for t in timestamps), default=0)
    ts = np.full((t_max, len(timestamps)), np.nan)
    vals = np.full((t_max, len(values), channels), np.nan)
    for k, (t, v) in enumerate(zip(timestamps, values, strict=True)):
        v = np.asarray(v, np.float64).reshape(len(t), -1)
        if v.shape[1] != channels:
            raise ConfigError(f"a stream has {v.shape[1]} channels, the model reads {channels}")
        ts[: len(t), k] = t
        vals[: len(t), k] = v
    return ts, vals


class _Progress:
    """A progress bar over readings: tqdm where installed, else one rewritten stderr line."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.done = 0
        self.bar = None
        self.started = time.perf_counter()
        self.shown = 0.0

    def __enter__(self) -> Callable[[int], None]:
        if self.enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=self.total, unit="reading", unit_scale=True, file=sys.stderr)
        return self.advance

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.perf_counter() - self.shown > 0.5:
            self.shown = time.perf_counter()
            self._line()

    def _line(self) -> None:
        elapsed = time.perf_counter() - self.started
        print(
            f"\rreplayed {self.done}/{self.total} readings ({elapsed:.0f} s)",
            end="",
            file=sys.stderr,
        )

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._line()
            print(file=sys.stderr)


@dataclass(frozen=True)
class Detector:
    """What is evaluated: a model file (default: the shipped one) run by the daemon's engine.

    `calibration` replaces the model's own score calibration, for ablations; None
    evaluates exactly what the daemon would run.
    """

    model: str | Path | None = None
    calibration: CalibrationConfig | None = None

    def load(self) -> StepModel:
        return StepModel(self.model or DEFAULT_MODEL)

    def engine(self, model: StepModel, streams: int) -> StreamEngine:
        """The engine with the daemon's default settings, big enough to hold every stream."""
        settings = replace(EngineSettings(), capacity=max(EngineSettings.capacity, streams))
        return StreamEngine(model, settings, self.calibration)

    def describe(self) -> dict:
        """Which model file (by content) and calibration produced a result, for its records."""
        model = Path(self.model or DEFAULT_MODEL)
        return {
            "model": str(model),
            "sha256": file_sha256(model),
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
        }


# ----------------------------------------------------------------------------- NAB


def run_nab(
    data: str | Path,
    out: str | Path,
    detector: Detector = Detector(),
    name: str = DETECTOR,
    progress: bool = False,
) -> tuple[nab.Corpus, list[Scored], dict[str, nab.ProfileResult]]:
    """Replay NAB through the engine, write NAB's results layout under `out`, score all profiles.

    The engine is not told about NAB: no probationary period, no windows, one
    parameter set for all 58 files. The scorer picks its own thresholds, as NAB does.
    """
    nab.check_detector_name(name)
    corpus = nab.load_corpus(data)
    engine = detector.engine(detector.load(), len(corpus.files))
    if engine.channels != 1:
        raise ConfigError(f"NAB is univariate; the model reads {engine.channels} channels")
    files = corpus.files
    scores = replay(
        engine,
        [f.relpath for f in files],
        [f.timestamps for f in files],
        [f.values for f in files],
        progress,
    )
    scored = [
        Scored(f.relpath, f.timestamps, f.values[:, None], s, f.labels)
        for f, s in zip(files, scores, strict=True)
    ]
    for s in scored:
        nab.write_results(out, name, s.name, s.ts, s.values[:, 0], s.score, s.labels)
    results = nab.score_all(corpus, nab.read_results(out, name, corpus))
    return corpus, scored, results


def nab_summary(results: dict[str, nab.ProfileResult]) -> dict:
    """The profiles' scores and thresholds plus every file's counts, JSON-ready."""
    return {
        name: {
            "threshold": r.threshold,
            "score": r.normalized_score,
            "raw_score": r.raw_score,
            "files": {path: asdict(f) for path, f in r.files.items()},
        }
        for name, r in results.items()
    }


def cmd_nab(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    detector = _detector(args)
    corpus, scored, results = run_nab(args.data, args.out, detector, args.detector, not args.quiet)
    seconds = time.perf_counter() - started
    print(nab.format_table(results))
    print(f"{len(scored)} files, {sum(len(s.ts) for s in scored)} readings in {seconds:.1f} s")
    summary = detector.describe() | {"seconds": seconds, "profiles": nab_summary(results)}
    path = Path(args.out) / f"{args.detector}.json"
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"results in {Path(args.out) / args.detector}, scores in {path}")
    if args.report:
        from .report import nab_report

        about = _command(args), detector.describe()
        print(f"report: {nab_report(args.report, corpus, scored, results, *about)}")
    return 0


# ----------------------------------------------------------------------------- user CSVs


@dataclass(frozen=True)
class LabelSource:
    """Where the ground truth of the user's files comes from: their label column by default."""

    windows: Path | None = None
    points: Path | None = None

    def labels(self, series_name: str, ts: np.ndarray, column: np.ndarray | None) -> np.ndarray:
        if self.windows is not None:
            return quality.labels_from_windows(ts, quality.load_windows(self.windows, series_name))
        if self.points is not None:
            return quality.labels_from_points(ts, quality.load_points(self.points))
        if column is None:
            raise ConfigError(
                f"{series_name}: no label column (label/anomaly/is_anomaly); "
                "give --labels windows.json or --label-points FILE"
            )
        return column


def load_labelled(
    sources: Sequence[str | Path],
    channels: int,
    labels: LabelSource,
    delimiter: str | None = None,
    echo: Callable[[str], object] | None = None,
) -> list[Scored]:
    """The user's files as streams the model can read, with their labels (scores still zero).

    A multichannel file meets a univariate model the way the daemon would see it, one
    stream per channel, each with the file's labels; a multichannel model needs files
    with exactly its channels. Windows are looked up by the file's path under the folder
    it was found in (`<category>/<file>.csv` for NAB's table) or its name.
    """
    from training.data import load_many, univariate  # numpy and stdlib only: no torch

    series, _ = load_many(sources, delimiter=delimiter, echo=echo)
    series = [replace(s, labels=labels.labels(f"{s.name}.csv", s.ts, s.labels)) for s in series]
    if channels == 1:
        series = univariate(series)
    out = []
    for s in series:
        if s.values.shape[1] != channels:
            raise ConfigError(
                f"{s.name}: {s.values.shape[1]} value columns {s.channels}, "
                f"the model reads {channels}"
            )
        out.append(Scored(s.name, s.ts, s.values, np.zeros(len(s.ts), np.float32), s.labels))
    return out


@dataclass(frozen=True)
class FileQuality:
    name: str
    rows: int
    report: quality.QualityReport


def run_csv(
    sources: Sequence[str | Path],
    labels: LabelSource,
    detector: Detector = Detector(),
    threshold: float | None = None,
    tolerance: int = 0,
    delimiter: str | None = None,
    progress: bool = False,
) -> tuple[list[Scored], list[FileQuality], quality.QualityReport]:
    """Replay the user's labelled files through one engine; quality per file and over all.

    The threshold defaults to the engine's `enter`: what the daemon alerts at.
    """
    model = detector.load()
    echo = (lambda line: print(line, file=sys.stderr)) if progress else None
    scored = load_labelled(sources, model.info.n_outputs, labels, delimiter, echo)
    engine = detector.engine(model, len(scored))
    threshold = engine.settings.enter if threshold is None else threshold
    scores = replay(
        engine,
        [s.name for s in scored],
        [s.ts for s in scored],
        [s.values for s in scored],
        progress,
    )
    for s, score in zip(scored, scores, strict=True):
        s.score = score
    per_file = [
        FileQuality(s.name, len(s.ts), quality.evaluate(s.score, s.labels, threshold, tolerance))
        for s in scored
    ]
    overall = quality.aggregate(((s.score, s.labels) for s in scored), threshold, tolerance)
    return scored, per_file, overall


QUALITY_COLUMNS = (
    ("events", "events", "d"),
    ("found", "events_detected", "d"),
    ("delay", "mean_delay", ".1f"),
    ("precision", "precision", ".3f"),
    ("recall", "recall", ".3f"),
    ("F1", "f1", ".3f"),
    ("false alarms", "false_alarm_rate", ".4f"),
    ("missed", "missed_alarm_rate", ".3f"),
    ("ROC AUC", "roc_auc", ".3f"),
    ("PR AUC", "pr_auc", ".3f"),
)


def _cell(value: float | int, fmt: str) -> str:
    return "-" if isinstance(value, float) and math.isnan(value) else format(value, fmt)


def quality_rows(
    per_file: Sequence[FileQuality], overall: quality.QualityReport
) -> list[list[str]]:
    """Header plus one row of formatted cells per file and one for all files together."""
    rows = [["file", "rows", *(title for title, _, _ in QUALITY_COLUMNS)]]
    total = sum(f.rows for f in per_file)
    for name, n, r in [*((f.name, f.rows, f.report) for f in per_file), ("all", total, overall)]:
        rows.append(
            [name, str(n), *(_cell(getattr(r, attr), fmt) for _, attr, fmt in QUALITY_COLUMNS)]
        )
    return rows


def format_quality(per_file: Sequence[FileQuality], overall: quality.QualityReport) -> str:
    """The quality table as fixed-width text, one file a line and the total last."""
    rows = quality_rows(per_file, overall)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def quality_summary(per_file: Sequence[FileQuality], overall: quality.QualityReport) -> dict:
    return {"all": overall.to_dict(), "files": {f.name: f.report.to_dict() for f in per_file}}


def cmd_csv(args: argparse.Namespace) -> int:
    labels = LabelSource(args.labels, args.label_points)
    detector = _detector(args)
    scored, per_file, overall = run_csv(
        args.sources,
        labels,
        detector,
        args.threshold,
        args.tolerance,
        args.delimiter,
        not args.quiet,
    )
    print(format_quality(per_file, overall))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = detector.describe() | quality_summary(per_file, overall)
    (out / "quality.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"metrics in {out / 'quality.json'}")
    if args.report:
        from .report import quality_report

        about = _command(args), detector.describe()
        path = quality_report(args.report, scored, per_file, overall, *about)
        print(f"report: {path}")
    return 0


# ----------------------------------------------------------------------------- CLI


def _detector(args: argparse.Namespace) -> Detector:
    if args.calibration is None:
        return Detector(args.model)
    try:
        return Detector(args.model, CalibrationConfig().with_overrides(args.calibration))
    except ConfigError as e:
        raise ConfigError(f"--calibration: {e}") from None


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run, written into the report."""
    parts = ["streamer", "evaluate", args.corpus, *map(str, getattr(args, "sources", []))]
    names = ("data", "model", "calibration", "labels", "label_points", "threshold", "tolerance")
    for name in (*names, "delimiter"):
        value = getattr(args, name, None)
        if value is not None:
            parts += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join([*parts, "--out", str(args.out), "--report", str(args.report)])


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `streamer evaluate nab|csv` to the `streamer` command."""
    p = subparsers.add_parser(
        "evaluate",
        help="replay labelled data (NAB or your CSVs) through the engine and score it",
        description="Replay labelled files through the same engine the daemon runs, one stream "
        "per file, and measure detection quality: NAB's benchmark score, or precision, recall, "
        "AUCs and event delays on your own labelled CSVs.",
    )
    sub = p.add_subparsers(dest="corpus", metavar="CORPUS", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", type=Path, help="step model (default: the shipped one)")
    common.add_argument("--report", type=Path, metavar="DIR", help="write a Markdown+PNG report")
    common.add_argument("--quiet", action="store_true", help="no progress bar")
    common.add_argument(
        "--calibration",
        metavar="JSON",
        help="calibration fields to change from the defaults, e.g. '{\"quantile\": 0.99}'",
    )

    n = sub.add_parser(
        "nab",
        parents=[common],
        help="the Numenta Anomaly Benchmark, scored with its three profiles",
        description="Replay NAB's 58 files through one engine, write NAB's results layout "
        "(OUT/DETECTOR/<category>/DETECTOR_<file>.csv) and score it with NAB's rules, "
        "thresholds optimised per profile as NAB does.",
    )
    n.add_argument("--data", type=Path, required=True, help="NAB root (data/, labels/, config/)")
    n.add_argument("--out", type=Path, default=Path("nab-results"), help="results folder")
    n.add_argument("--detector", default=DETECTOR, help=f"detector name (default {DETECTOR})")
    n.set_defaults(func=cmd_nab)

    c = sub.add_parser(
        "csv",
        parents=[common],
        help="your labelled CSV files: precision, recall, AUCs, event delays",
        description="Replay labelled CSV files (timestamp, value column(s), optional label "
        "column; separator , ; or tab) through one engine and measure detection quality per "
        "file and over all. Labels come from the files' label column unless --labels or "
        "--label-points is given.",
    )
    c.add_argument("sources", nargs="+", help="CSV files, folders (recursive) or globs")
    labels = c.add_mutually_exclusive_group()
    labels.add_argument(
        "--labels", type=Path, metavar="JSON", help="windows: [[start, end], ...] or NAB's table"
    )
    labels.add_argument(
        "--label-points", type=Path, metavar="FILE", help="anomaly timestamps, one a line or JSON"
    )
    c.add_argument("--threshold", type=float, help="alert threshold (default: engine.enter)")
    c.add_argument(
        "--tolerance", type=int, default=0, help="rows after an event's start that still detect it"
    )
    c.add_argument("--delimiter", help="field separator (default: sniffed from , ; tab)")
    c.add_argument("--out", type=Path, default=Path("evaluation"), help="folder for quality.json")
    c.set_defaults(func=cmd_csv)
