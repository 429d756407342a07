"""The sensor-streamer Grafana dashboard, as code.

    python deploy/grafana/dashboard.py            rewrites deploy/grafana/dashboards/streamer.json

Generated rather than exported from the Grafana UI so that every panel follows the same
conventions (the datasource variable, units, legends), the layout is computed instead
of placed by hand, and a change reviews as a few lines of Python instead of a JSON diff.
The JSON is committed because Grafana provisions it as it is; tests/test_deploy.py checks
that it matches this script and runs every query in it against a live Prometheus.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).parent / "dashboards" / "streamer.json"
UID = "sensor-streamer"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
STREAM = 'stream="$stream"'
GRID_WIDTH = 24
ENTER_THRESHOLD = 0.999  # engine.enter's default: where a stream becomes anomalous

Panel = dict[str, Any]


def query(expr: str, legend: str = "", *, instant: bool = False) -> dict[str, Any]:
    """A Prometheus target; instant ones (tables) read only the latest value."""
    return {
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "format": "table" if instant else "time_series",
    }


def quantiles(histogram: str, *qs: float) -> list[dict[str, Any]]:
    """p-quantile targets of a histogram over all series of the fleet."""
    return [
        query(
            f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket[{RATE}])))",
            f"p{round(q * 100)}",
        )
        for q in qs
    ]


def steps(*pairs: tuple[str, float | None]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in pairs]}


def panel(
    kind: str,
    title: str,
    targets: list[dict[str, Any]],
    *,
    size: tuple[int, int],
    description: str,
    unit: str = "short",
    defaults: dict[str, Any] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> Panel:
    """A panel of `size` (width, height) grid units; `layout` places it."""
    for ref, target in zip("ABCDEFGH", targets, strict=False):
        target["refId"] = ref
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"w": size[0], "h": size[1]},
        "targets": targets,
        "fieldConfig": {
            "defaults": {"unit": unit, **(defaults or {})},
            "overrides": overrides or [],
        },
        **extra,
    }


def stat(title: str, expr: str, description: str, **kw: Any) -> Panel:
    options = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"}
    return panel(
        "stat", title, [query(expr)], size=(4, 4), description=description, options=options, **kw
    )


def timeseries(
    title: str,
    targets: list[dict[str, Any]],
    description: str,
    *,
    size: tuple[int, int] = (8, 8),
    **kw: Any,
) -> Panel:
    options = {
        "legend": {"displayMode": "list", "placement": "bottom"},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return panel(
        "timeseries", title, targets, size=size, description=description, options=options, **kw
    )


def table(
    title: str, expr: str, description: str, *, size: tuple[int, int], hide: list[str], **kw: Any
) -> Panel:
    """An instant table without the columns in `hide`."""
    organize = {"id": "organize", "options": {"excludeByName": dict.fromkeys(hide, True)}}
    return panel(
        "table",
        title,
        [query(expr, instant=True)],
        size=size,
        description=description,
        transformations=[organize],
        **kw,
    )


def by_ref(ref: str, properties: dict[str, Any]) -> dict[str, Any]:
    """Field overrides for the series of one target."""
    return {
        "matcher": {"id": "byFrameRefID", "options": ref},
        "properties": [{"id": k, "value": v} for k, v in properties.items()],
    }


def fleet() -> list[Panel]:
    top = table(
        "Most anomalous streams",
        "topk(15, streamer_stream_anomaly_score)",
        "The 15 highest calibrated scores now. Click a stream to show it below.",
        size=(12, 10),
        hide=["Time", "__name__", "job", "instance"],
        unit="none",
        defaults={
            "decimals": 4,
            "thresholds": steps(("green", None), ("orange", 0.99), ("red", ENTER_THRESHOLD)),
            "custom": {"cellOptions": {"type": "color-text"}},
            "links": [
                {
                    "title": "Show ${__data.fields.stream}",
                    "url": f"/d/{UID}?var-stream=${{__data.fields.stream}}&${{__url_time_range}}",
                }
            ],
        },
    )
    connected = {
        "type": "value",
        "options": {
            "0": {"text": "disconnected", "color": "red", "index": 0},
            "1": {"text": "connected", "color": "green", "index": 1},
        },
    }
    return [
        stat(
            "Streams",
            "sum(streamer_streams_active)",
            "Streams held in the state store, all daemons and routes.",
            defaults={"thresholds": steps(("blue", None))},
        ),
        stat(
            "Anomalous now",
            "sum(streamer_streams_anomalous)",
            "Streams above the anomaly threshold now (with hysteresis).",
            defaults={"thresholds": steps(("green", None), ("red", 1))},
        ),
        stat(
            "Anomalies, last hour",
            "sum(increase(streamer_anomalies_total[1h]))",
            "Times any stream became anomalous in the last hour.",
            defaults={"decimals": 0, "thresholds": steps(("green", None), ("orange", 1))},
        ),
        stat(
            "Readings / s",
            f"sum(rate(streamer_readings_total[{RATE}]))",
            "Readings taken into the engines (scored and warming up).",
            unit="ops",
            defaults={"thresholds": steps(("blue", None))},
        ),
        stat(
            "Capacity used",
            "sum(streamer_streams_active) / sum(streamer_streams_capacity)",
            "Streams held over engine.capacity: beyond it the least recently seen are evicted.",
            unit="percentunit",
            defaults={"thresholds": steps(("green", None), ("orange", 0.8), ("red", 0.95))},
        ),
        stat(
            "Broker",
            "min(streamer_mqtt_connected)",
            "Whether every daemon is connected to its MQTT broker.",
            defaults={"mappings": [connected], "thresholds": steps(("red", None), ("green", 1))},
        ),
        top,
        timeseries(
            "Anomalous streams by route",
            [query("sum by (route) (streamer_streams_anomalous)", "{{route}}")],
            "How many streams are anomalous at once: a plant-wide event shows as a wall here.",
            size=(12, 10),
            defaults={"custom": {"fillOpacity": 20, "lineInterpolation": "stepAfter"}},
        ),
    ]


def stream() -> list[Panel]:
    value = f"streamer_stream_expected_value{{{STREAM}}}"
    band = f"streamer_stream_expected_band{{{STREAM}}}"
    lower = "expected − 2σ"
    shaded = {
        "custom.lineWidth": 0,
        "custom.fillOpacity": 20,
        "color": {"mode": "fixed", "fixedColor": "green"},
    }
    observed = timeseries(
        "Observed and expected",
        [
            query(f"streamer_stream_value{{{STREAM}}}", "observed {{channel}}"),
            query(value, "expected {{channel}}"),
            query(f"{value} + {band}", "expected + 2σ"),
            query(f"{value} - {band}", lower),
        ],
        "The last reading of the stream against what the model expected one step before, "
        "with the 2-sigma band (shaded for the first channel of a multichannel model).",
        size=(GRID_WIDTH, 10),
        overrides=[
            by_ref("B", {"custom.lineStyle": {"fill": "dash", "dash": [10, 10]}}),
            by_ref("C", {"custom.fillBelowTo": lower, **shaded}),
            by_ref("D", shaded),
        ],
    )
    score = timeseries(
        "Anomaly score",
        [
            query(f"streamer_stream_anomaly_score{{{STREAM}}}", "score"),
            query(f"streamer_stream_anomalous{{{STREAM}}}", "anomalous"),
        ],
        f"Calibrated score in [0, 1] and the anomalous flag; the line is engine.enter's "
        f"default ({ENTER_THRESHOLD}).",
        size=(GRID_WIDTH, 6),
        unit="none",
        defaults={
            "min": 0,
            "max": 1,
            "thresholds": steps(("transparent", None), ("red", ENTER_THRESHOLD)),
            "custom": {"thresholdsStyle": {"mode": "line"}},
        },
        overrides=[
            by_ref(
                "B",
                {
                    "custom.lineInterpolation": "stepAfter",
                    "custom.fillOpacity": 15,
                    "color": {"mode": "fixed", "fixedColor": "red"},
                },
            )
        ],
    )
    return [observed, score]


def health() -> list[Panel]:
    return [
        timeseries(
            "Readings and messages / s",
            [
                query(f"sum by (result) (rate(streamer_readings_total[{RATE}]))", "{{result}}"),
                query(f"sum(rate(streamer_messages_total[{RATE}]))", "MQTT messages"),
            ],
            "Readings by result (scored, or warming up), and MQTT messages received.",
            unit="ops",
        ),
        timeseries(
            "Refused and dropped / s",
            [
                query(
                    f"sum by (reason) (rate(streamer_parse_errors_total[{RATE}]))",
                    "refused: {{reason}}",
                ),
                query(
                    f"sum by (reason) (rate(streamer_readings_dropped_total[{RATE}]))",
                    "dropped: {{reason}}",
                ),
            ],
            "Messages the parser refused and readings not taken into the engine, by reason.",
            unit="ops",
        ),
        timeseries(
            "Queue depth",
            [query("sum by (instance) (streamer_queue_depth)", "{{instance}}")],
            "Readings waiting for the engine; a growing queue means the daemon falls behind.",
        ),
        timeseries(
            "Batch size",
            [
                *quantiles("streamer_batch_size", 0.5, 0.99),
                query(
                    f"sum(rate(streamer_batch_size_sum[{RATE}])) / sum(rate(streamer_batch_size_count[{RATE}]))",
                    "mean",
                ),
            ],
            "Readings per engine wave: larger waves are cheaper per reading.",
        ),
        timeseries(
            "Inference time per wave",
            quantiles("streamer_inference_seconds", 0.5, 0.99),
            "Wall time of one model step for a whole wave.",
            unit="s",
        ),
        timeseries(
            "Latency, reading to score",
            quantiles("streamer_latency_seconds", 0.5, 0.99),
            "From the reading's own timestamp to its score in the store: includes the sensors' "
            "clock offset and the broker.",
            unit="s",
        ),
        timeseries(
            "Evictions and gap resets / s",
            [
                query(f"sum(rate(streamer_streams_evicted_total[{RATE}]))", "evicted"),
                query(f"sum(rate(streamer_gap_resets_total[{RATE}]))", "gap resets"),
            ],
            "Streams evicted for capacity, and hidden states reset after a long silence.",
            unit="ops",
        ),
        timeseries(
            "MQTT connection",
            [
                query("min by (instance) (streamer_mqtt_connected)", "connected {{instance}}"),
                query(
                    f"sum by (instance) (increase(streamer_mqtt_reconnects_total[{RATE}]))",
                    "reconnects {{instance}}",
                ),
            ],
            "1 while connected; reconnections after the first connection.",
            defaults={"custom": {"lineInterpolation": "stepAfter"}},
        ),
        table(
            "Models",
            "streamer_model_info",
            "The step model serving each route of each daemon.",
            size=(8, 8),
            hide=["Time", "__name__", "job", "Value"],
        ),
    ]


def layout(sections: list[tuple[str, list[Panel]]]) -> list[Panel]:
    """Each section as a row of its panels, placed left to right and wrapped at the grid width."""
    placed: list[Panel] = []
    y = 0
    for title, panels in sections:
        placed.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"x": 0, "y": y, "w": GRID_WIDTH, "h": 1},
            }
        )
        y += 1
        x, line_height = 0, 0
        for p in panels:
            w, h = p["gridPos"]["w"], p["gridPos"]["h"]
            if x + w > GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
            x, line_height = x + w, max(line_height, h)
            placed.append(p)
        y += line_height
    for number, p in enumerate(placed, 1):
        p["id"] = number
    return placed


def variables() -> list[dict[str, Any]]:
    streams = "label_values(streamer_stream_anomaly_score, stream)"
    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "refresh": 1,
            "regex": "",
        },
        {
            "name": "stream",
            "label": "Stream",
            "type": "query",
            "datasource": DATASOURCE,
            "query": streams,
            "definition": streams,
            "current": {},
            "hide": 0,
            "refresh": 2,
            "sort": 1,
            "multi": False,
            "includeAll": False,
            "regex": "",
        },
    ]


def annotations() -> list[dict[str, Any]]:
    builtin = {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }
    anomalies = {
        "name": "Anomalies of $stream",
        "datasource": DATASOURCE,
        "enable": True,
        "iconColor": "red",
        "expr": f"streamer_stream_anomalous{{{STREAM}}} == 1",
        "titleFormat": "anomalous",
        "textFormat": "{{route}} {{stream}}",
        "tagKeys": "route,stream",
        "useValueForTime": False,
    }
    return [builtin, anomalies]


def dashboard() -> dict[str, Any]:
    return {
        "uid": UID,
        "title": "Sensor streamer",
        "description": "Fleet overview, one stream against its expectation, and the daemon's health.",
        "tags": ["sensor-streamer", "anomaly-detection", "mqtt"],
        "editable": False,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "annotations": {"list": annotations()},
        "templating": {"list": variables()},
        "links": [],
        "panels": layout(
            [
                ("Fleet", fleet()),
                ("Stream $stream", stream()),
                ("Daemon health", health()),
            ]
        ),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output", type=Path, default=OUTPUT, help=f"where to write (default {OUTPUT})"
    )
    args = parser.parse_args()
    args.output.write_text(render())


if __name__ == "__main__":
    main()
