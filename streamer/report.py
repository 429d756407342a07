"""An evaluation written down for people: a Markdown page of tables and a few plots.

Numbers in a terminal are gone tomorrow; a report folder can be committed next to the
model it judges and read in a pull request. The tables carry every figure; the plots
are few and chosen by a fixed rule (not by how good they look), because 58 pictures
are not read and hand-picked ones flatter.

matplotlib is imported only when a plot is drawn: it is in the `report` extra, not in
the daemon's install. A README.md that already exists keeps everything from the
`KEEP_MARKER` line on, so hand-written notes (an ablation, a discussion) survive
regenerating the report.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ConfigError
from .evaluate import FileQuality, Scored, quality_rows
from .quality import events

if TYPE_CHECKING:
    from . import nab, quality

KEEP_MARKER = "<!-- hand-written from here on: kept when the report is regenerated -->"
MAX_PLOTS = 6
SURPRISE_MAX = 8.0
# Published NAB v1.1 scores (standard, low FP, low FN), thresholds re-optimised (SCORING.md).
PUBLISHED = {
    "ARTime": (74.85, 65.15, 80.36),
    "HTM (numenta)": (70.10, 63.21, 74.32),
    "contextOSE": (69.90, 66.98, 73.18),
    "knncad": (57.99, 43.41, 64.81),
    "randomCutForest": (51.72, 38.36, 59.75),
    "twitterADVec": (47.06, 33.61, 53.50),
}


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table from a header row and data rows: names left, numbers right."""
    rule = ["---", *["---:"] * (len(rows[0]) - 1)]
    return "\n".join("| " + " | ".join(r) + " |" for r in [rows[0], rule, *rows[1:]])


def _write_readme(out: Path, body: str) -> Path:
    path = out / "README.md"
    kept = ""
    if path.is_file():
        old = path.read_text()
        if KEEP_MARKER in old:
            kept = old[old.index(KEEP_MARKER) + len(KEEP_MARKER) :]
    path.write_text(f"{body.rstrip()}\n\n{KEEP_MARKER}{kept or chr(10)}")
    return path


def _header(title: str, command: str, detector: dict) -> list[str]:
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    calibration = detector.get("calibration") or "the model's own"
    return [
        f"# {title}",
        "",
        f"Generated {stamp} by:",
        "",
        "```sh",
        command,
        "```",
        "",
        f"Model `{Path(detector['model']).name}` (sha256 `{detector['sha256'][:16]}...`), "
        f"calibration: {calibration}.",
        "",
    ]


# ----------------------------------------------------------------------------- plots


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'sensor-streamer[report]'") from None
    return plt


def plot_scored(
    path: Path, scored: Scored, threshold: float, title: str, unscored_rows: int = 0
) -> Path:
    """Readings over time with the labelled spans shaded, and the score with its threshold.

    Detections (score >= threshold) are marked, so a reader sees at once which
    labelled spans were caught and what else fired. The score is drawn as
    `surprise`, because on a linear axis everything that matters is squeezed
    against 1. The first `unscored_rows` (NAB's probationary period) are greyed.
    """
    plt = _pyplot()
    when = (np.asarray(scored.ts) * 1e6).astype("datetime64[us]")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 4.8), sharex=True, height_ratios=(3, 2))
    top.plot(when, scored.values, lw=0.6)
    for first, last in events(scored.labels):
        for ax in (top, bottom):
            ax.axvspan(when[first], when[last], color="tab:red", alpha=0.15, lw=0)
    if unscored_rows:
        for ax in (top, bottom):
            ax.axvspan(when[0], when[min(unscored_rows, len(when) - 1)], color="0.85", lw=0)
    hits = np.flatnonzero(scored.score >= threshold)
    top.plot(when[hits], scored.values[hits, 0], "v", color="tab:red", ms=5, label="detection")
    bottom.plot(when, surprise(scored.score), lw=0.6, color="tab:purple")
    bottom.axhline(
        surprise(threshold), color="tab:red", ls="--", lw=0.8, label=f"threshold {threshold:.6g}"
    )
    bottom.set_ylim(-0.1, SURPRISE_MAX + 0.1)
    bottom.set_ylabel("-log10(1 - score)")
    top.set_ylabel("value")
    top.set_title(title, fontsize=10)
    bottom.legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def surprise(score: float | np.ndarray) -> np.ndarray:
    """-log10(1 - score): the score in decades of tail probability, where its interesting part
    (0.999 against 0.99999) is visible; float32 scores resolve it up to about 7."""
    tail = np.clip(1.0 - np.asarray(score, np.float64), 10.0**-SURPRISE_MAX, 1.0)
    return -np.log10(tail)


def _png_name(name: str) -> str:
    return name.replace("/", "__").removesuffix(".csv") + ".png"


# ----------------------------------------------------------------------------- NAB


def representative(corpus: nab.Corpus, result: nab.ProfileResult) -> list[str]:
    """One file per category: the one with the median score in it (the lower of two middles).

    A fixed rule, so the plots show typical behaviour rather than the best cases.
    """
    by_category: dict[str, list[str]] = defaultdict(list)
    for f in corpus.files:
        if f.windows.size:
            by_category[f.relpath.split("/")[0]].append(f.relpath)
    picks = []
    for paths in by_category.values():
        ranked = sorted(paths, key=lambda p: (result.files[p].score, p))
        picks.append(ranked[(len(ranked) - 1) // 2])
    return sorted(picks)


def _profile_rows(results: dict[str, nab.ProfileResult]) -> list[list[str]]:
    rows = [["profile", "score", "threshold", "windows hit", "false-positive rows"]]
    for r in results.values():
        hit = sum(f.windows_detected for f in r.files.values())
        total = sum(f.windows for f in r.files.values())
        fp = sum(f.fp for f in r.files.values())
        rows.append(
            [
                r.profile,
                f"{r.normalized_score:.2f}",
                f"{r.threshold:.6g}",
                f"{hit}/{total}",
                str(fp),
            ]
        )
    return rows


def _comparison_rows(results: dict[str, nab.ProfileResult]) -> list[list[str]]:
    ours = tuple(r.normalized_score for r in results.values())
    rows = [["detector", *results]]
    entries = sorted([("**this run**", ours), *PUBLISHED.items()], key=lambda e: -e[1][0])
    rows += [[name, *(f"{v:.2f}" for v in scores)] for name, scores in entries]
    return rows


def _category_rows(corpus: nab.Corpus, result: nab.ProfileResult) -> list[list[str]]:
    totals: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(5))
    for f in corpus.files:
        r = result.files[f.relpath]
        totals[f.relpath.split("/")[0]] += (1, r.windows, r.windows_detected, r.fp, r.score)
    rows = [["category", "files", "windows", "hit", "FP rows", "raw score"]]
    for name, (n, w, hit, fp, score) in sorted(totals.items()):
        rows.append([name, f"{n:.0f}", f"{w:.0f}", f"{hit:.0f}", f"{fp:.0f}", f"{score:.2f}"])
    return rows


def _file_rows(corpus: nab.Corpus, result: nab.ProfileResult) -> list[list[str]]:
    rows = [["file", "rows", "windows", "hit", "FP rows", "raw score"]]
    for f in corpus.files:
        r = result.files[f.relpath]
        rows.append(
            [
                f.relpath,
                str(f.rows),
                str(r.windows),
                str(r.windows_detected),
                str(r.fp),
                f"{r.score:.3f}",
            ]
        )
    return rows


def nab_report(
    out: str | Path,
    corpus: nab.Corpus,
    scored: Sequence[Scored],
    results: dict[str, nab.ProfileResult],
    command: str,
    detector: dict,
    profile: str = "standard",
) -> Path:
    """README.md with the three scores, published ones beside them, per-category and per-file
    tables, and one plot per category at `profile`'s threshold; returns the README's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    main = results[profile]
    by_name = {s.name: s for s in scored}
    plots = []
    for relpath in representative(corpus, main):
        png = plot_scored(
            out / _png_name(relpath),
            by_name[relpath],
            main.threshold,
            f"{relpath}: {main.files[relpath].score:+.2f} ({profile})",
            corpus[relpath].probation,
        )
        plots.append(f"![{relpath}]({png.name})")
    lines = [
        *_header("NAB v1.1 through the deployed engine", command, detector),
        "Every file is one stream of one `StreamEngine` with its default settings; the score "
        "is the engine's calibrated anomaly score (0 while a stream warms up). Thresholds are "
        "NAB's own per-profile optimisation over the whole corpus.",
        "",
        markdown_table(_profile_rows(results)),
        "",
        "## Beside published detectors",
        "",
        markdown_table(_comparison_rows(results)),
        "",
        f"## By category ({profile})",
        "",
        markdown_table(_category_rows(corpus, main)),
        "",
        f"## One file per category ({profile}: the median file of each)",
        "",
        "Red spans: NAB's windows; grey: the probationary period; triangles: readings at or "
        "above the threshold.",
        "",
        *plots,
        "",
        f"## Every file ({profile})",
        "",
        markdown_table(_file_rows(corpus, main)),
    ]
    return _write_readme(out, "\n".join(lines))


# ----------------------------------------------------------------------------- user CSVs


def _most_missed(per_file: Sequence[FileQuality]) -> list[str]:
    """Files with the most missed events first (then the most false alarms): what to look at."""
    ranked = sorted(
        (f for f in per_file if f.report.events),
        key=lambda f: (f.report.events_detected - f.report.events, -f.report.fp, f.name),
    )
    return [f.name for f in ranked[:MAX_PLOTS]]


def quality_report(
    out: str | Path,
    scored: Sequence[Scored],
    per_file: Sequence[FileQuality],
    overall: quality.QualityReport,
    command: str,
    detector: dict,
) -> Path:
    """README.md with the quality table and plots of the files that missed most; its path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by_name = {s.name: s for s in scored}
    quality_by_name = {f.name: f.report for f in per_file}
    plots = []
    for name in _most_missed(per_file):
        r = quality_by_name[name]
        recall = "-" if math.isnan(r.event_recall) else f"{r.event_recall:.2f}"
        title = f"{name}: {r.events_detected}/{r.events} events, {r.fp} false-alarm rows"
        png = plot_scored(out / _png_name(name), by_name[name], overall.threshold, title)
        plots.append(f"![{name}: event recall {recall}]({png.name})")
    lines = [
        *_header("Detection quality on labelled files", command, detector),
        f"Threshold {overall.threshold:.6g}. Point-wise counts are per row; an event is a run "
        "of labelled rows, found if a detection falls in it; delay is in rows from its start. "
        "AUCs do not depend on the threshold. The last row pools every file.",
        "",
        markdown_table(quality_rows(per_file, overall)),
        "",
        "## Files with the most missed events",
        "",
        "Red spans: labelled anomalies; triangles: readings at or above the threshold.",
        "",
        *(plots or ["No file has a labelled event."]),
    ]
    return _write_readme(out, "\n".join(lines))
