"""The results of a run as plain-text tables (the JSON file holds everything, these the gist)."""

from __future__ import annotations

from collections.abc import Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], int | float) for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, cells)])


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def e2e_table(summary: dict[str, dict]) -> str:
    rows = []
    for name, s in summary.items():
        cpu = s["cpu_share"]
        rows.append(
            [
                name,
                s["rate"],
                s.get("vs_bare_rate", float("nan")),
                s.get("vs_bare_cpu", float("nan")),
                s["cpu_per_reading_us"],
                s.get("latency_p50_ms", float("nan")),
                s.get("latency_p99_ms", float("nan")),
                s.get("latency_max_ms", float("nan")),
                f"{cpu.get('consumer', 0):.0%}/{cpu.get('broker', 0):.0%}/{cpu.get('publisher', 0):.0%}",
                s["rss_mb"],
                s["lost"],
                s["dropped"],
            ]
        )
    headers = [
        "scenario",
        "readings/s",
        "x bare",
        "x bare cpu",
        "cpu us/rd",
        "p50 ms",
        "p99 ms",
        "max ms",
        "cpu sub/brk/pub",
        "RSS MB",
        "lost",
        "dropped",
    ]
    return table(headers, rows)


def engine_table(rows: list[dict]) -> str:
    return table(
        [
            "hidden",
            "batch",
            "engine steps/s",
            "shuffled",
            "session.run",
            "x session",
            "shuffled x session",
            "naive torch",
            "x naive",
        ],
        [
            [
                r["hidden"],
                r["batch"],
                r["engine"],
                r["shuffled"],
                r["session"],
                r["vs_session"],
                r["shuffled_vs_session"],
                r["naive"],
                r["vs_naive"],
            ]
            for r in rows
        ],
    )


def memory_table(rows: list[dict]) -> str:
    return table(
        ["streams", "RSS MB", "peak MB", "RSS B/stream", "numpy B/stream", "fill s"],
        [
            [
                m["streams"],
                m["rss"] / 2**20,
                m["rss_peak"] / 2**20,
                m["bytes_per_stream"],
                m["numpy_bytes_per_stream"],
                m["fill_s"],
            ]
            for m in rows
        ],
    )


def verdict_table(verdicts: list[dict]) -> str:
    return table(
        ["target", "measured", "bound", "met"],
        [
            [
                v["target"],
                f"{_cell(v['value'])} {v['unit']}".strip(),
                f"{'>=' if v['higher_is_better'] else '<='} {_cell(v['bound'])} {v['unit']}".strip(),
                "yes" if v["met"] else "NO",
            ]
            for v in verdicts
        ],
    )


def render(results: dict) -> str:
    m = results["machine"]
    parts = [
        f"machine: {m['cpu']}, {m['cores']} cores, load {m['loadavg_at_start'][0]:.1f} -> "
        f"{m['loadavg_at_end'][0]:.1f}; python {m['python']}, onnxruntime {m['onnxruntime']}, "
        f"paho {m['paho_mqtt']}, {m['mosquitto']}; commit {m['commit']}"
    ]
    if "e2e" in results:
        parts += [
            "",
            "end to end (medians over repeats; ratios within a repeat)",
            e2e_table(results["e2e"]["summary"]),
        ]
    if "engine" in results:
        parts += ["", "engine alone (steps per CPU second)", engine_table(results["engine"])]
    if "memory" in results:
        parts += ["", "memory (default model)", memory_table(results["memory"])]
    if "startup" in results:
        s = results["startup"]
        parts += [
            "",
            f"start-up to /readyz 200: median {s['median_s']:.3f} s, max {s['max_s']:.3f} s "
            f"(python -c pass: {s['python_c_pass_s']:.3f} s)",
        ]
    parts += ["", "targets", verdict_table(results["verdicts"])]
    return "\n".join(parts)
