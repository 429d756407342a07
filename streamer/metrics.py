"""Prometheus metrics, computed at scrape time from the engine's arrays.

Nothing is written per message: per-stream values are read from the state store
when Prometheus asks, counters are the engine's and the subscriber's own plain
counters, and histograms are numpy bucket arrays updated once per wave. Per-stream
series are capped (`metrics.max_streams`): beyond the cap the most anomalous
streams are shown, so the series count, and the scrape cost, stay bounded.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .app import Pipeline

LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
INFERENCE_BOUNDS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1)
BATCH_BOUNDS = (1, 4, 16, 64, 256, 1024, 4096, 16384)


class Buckets:
    """A histogram fed with arrays: one vectorised update per wave instead of one call per reading."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = np.asarray(bounds, np.float64)
        self._bounds = [float(b) for b in bounds]
        self.counts = np.zeros(len(bounds) + 1, np.int64)
        self.sum = 0.0

    def observe(self, values: np.ndarray | float) -> None:
        if isinstance(values, int | float):  # wave size and step time: no arrays for one value
            self.counts[bisect_left(self._bounds, values)] += 1
            self.sum += values
            return
        values = np.atleast_1d(np.asarray(values, np.float64))
        idx = np.searchsorted(self.bounds, values, side="left")
        self.counts += np.bincount(idx, minlength=len(self.counts))
        self.sum += float(values.sum())

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative = np.cumsum(self.counts)
        buckets = [(_le(b), float(c)) for b, c in zip(self.bounds, cumulative[:-1], strict=True)]
        buckets.append(("+Inf", float(cumulative[-1])))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.sum)


def _le(bound: float) -> str:
    return repr(float(bound))


# Per-stream gauges: (metric suffix, store field, help). Channel-wise ones get a `channel` label.
STREAM_GAUGES = (
    (
        "anomaly_score",
        "score",
        "Calibrated anomaly score in [0, 1]: how unusual the last reading was for this stream",
    ),
    (
        "raw_score",
        "raw",
        "Raw surprise of the last reading: its negative log-likelihood under the model's"
        " prediction plus 0.5 z^2 under the stream's long-run distribution",
    ),
    (
        "anomalous",
        "anomalous",
        "1 while the stream is anomalous (entered above engine.enter, not yet below engine.leave)",
    ),
)
CHANNEL_GAUGES = (
    ("value", "value", "Last observed value, sensor units"),
    ("expected_value", "expected", "Value the model expected for the last reading, sensor units"),
    (
        "expected_band",
        "band",
        "Half-width of the expected 2-sigma band around expected_value, sensor units",
    ),
)


class StreamerCollector(Collector):
    """Every streamer_* metric of one pipeline, read at scrape time."""

    def __init__(self, pipeline: Pipeline, max_streams: int) -> None:
        self.pipeline = pipeline
        self.max_streams = max_streams

    def collect(self) -> Iterator[Metric]:
        p = self.pipeline
        yield from self._process_metrics(p)
        with p.lock:
            snapshot = [
                self._stream_rows(name, engine)
                for name, engine in zip(p.route_names, p.engines, strict=True)
            ]
        yield from self._stream_metrics(p, snapshot)

    def _process_metrics(self, p: Pipeline) -> Iterator[Metric]:
        readings = CounterMetricFamily(
            "streamer_readings", "Readings by result", labels=["route", "result"]
        )
        dropped = CounterMetricFamily(
            "streamer_readings_dropped",
            "Readings not taken into the engine, by reason",
            labels=["route", "reason"],
        )
        resets = CounterMetricFamily(
            "streamer_gap_resets", "Hidden states reset after a long gap", labels=["route"]
        )
        anomalies = CounterMetricFamily(
            "streamer_anomalies", "Times a stream became anomalous", labels=["route"]
        )
        evicted = CounterMetricFamily(
            "streamer_streams_evicted", "Streams evicted for capacity", labels=["route"]
        )
        active = GaugeMetricFamily(
            "streamer_streams_active", "Streams held in the state store", labels=["route"]
        )
        capacity = GaugeMetricFamily(
            "streamer_streams_capacity", "Streams the state store can hold", labels=["route"]
        )
        anomalous = GaugeMetricFamily(
            "streamer_streams_anomalous", "Streams anomalous now", labels=["route"]
        )
        info = GaugeMetricFamily(
            "streamer_model_info",
            "The step model serving a route",
            labels=["route", "cell", "layers", "hidden_size", "provider", "sha256"],
        )
        for name, engine in zip(p.route_names, p.engines, strict=True):
            counts = engine.counts
            for result in ("scored", "warmup"):
                readings.add_metric([name, result], counts[result])
            for reason in ("not_finite", "out_of_order", "duplicate"):
                dropped.add_metric([name, reason], counts[reason])
            resets.add_metric([name], counts["gap_resets"])
            anomalies.add_metric([name], counts["anomalies"])
            evicted.add_metric([name], engine.store.evicted)
            active.add_metric([name], len(engine.store))
            capacity.add_metric([name], engine.store.capacity)
            anomalous.add_metric([name], int(engine.store.anomalous.sum()))
            m = engine.model
            info.add_metric(
                [
                    name,
                    m.info.cell,
                    str(m.info.layers),
                    str(m.info.hidden_size),
                    m.provider,
                    m.sha256[:12],
                ],
                1,
            )
        if p.ingest is not None:
            for (route, reason), n in sorted(p.ingest.dropped.items()):
                dropped.add_metric([route, reason], n)
        yield from (
            readings,
            dropped,
            resets,
            anomalies,
            evicted,
            active,
            capacity,
            anomalous,
            info,
        )
        yield from self._ingest_metrics(p)
        yield GaugeMetricFamily(
            "streamer_queue_depth", "Readings waiting for the engine", value=p.batcher.depth()
        )
        yield p.batch_sizes.family("streamer_batch_size", "Readings per engine wave")
        yield p.inference.family(
            "streamer_inference_seconds", "Wall time of one model step for a wave"
        )
        yield p.latency.family(
            "streamer_latency_seconds",
            "From the reading's own timestamp to its score being in the store",
        )

    def _ingest_metrics(self, p: Pipeline) -> Iterator[Metric]:
        if p.ingest is None:
            return
        ing = p.ingest
        messages = CounterMetricFamily(
            "streamer_messages", "MQTT messages received", labels=["route"]
        )
        errors = CounterMetricFamily(
            "streamer_parse_errors", "Messages refused, by reason", labels=["route", "reason"]
        )
        for name in p.route_names:
            messages.add_metric([name], ing.messages[name])
        for (route, reason), n in sorted(ing.errors.items()):
            errors.add_metric([route, reason], n)
        yield messages
        yield errors
        yield GaugeMetricFamily(
            "streamer_mqtt_connected",
            "1 while connected to the broker",
            value=ing.connected.is_set(),
        )
        yield CounterMetricFamily(
            "streamer_mqtt_reconnects",
            "Connections made after the first",
            value=max(0, ing.connects - 1),
        )

    def _stream_rows(
        self, route: str, engine
    ) -> tuple[str, list[str], dict[str, np.ndarray], list[str]]:
        """Copy the rows to export under the lock: all streams, or the most anomalous beyond the cap."""
        store = engine.store
        ids = list(store.index)
        rows = np.fromiter(store.index.values(), np.int64, len(ids))
        if len(rows) > self.max_streams:
            keep = np.argsort(-store.score[rows], kind="stable")[: self.max_streams]
            rows = rows[keep]
            ids = [ids[i] for i in keep]
        fields = {f: getattr(store, f)[rows].copy() for _, f, _ in STREAM_GAUGES + CHANNEL_GAUGES}
        fields["warming_up"] = store.seen[rows] <= engine.warmup
        fields["readings"] = store.seen[rows].copy()
        fields["anomalies"] = store.anomalies[rows].copy()
        fields["contrib"] = store.contrib[rows].copy()
        return route, ids, fields, list(engine.model.info.output_features)

    def _stream_metrics(self, p: Pipeline, snapshot) -> Iterator[Metric]:
        labels = ["route", "stream"]
        gauges = {
            f: GaugeMetricFamily(f"streamer_stream_{s}", doc, labels=labels)
            for s, f, doc in STREAM_GAUGES
        }
        channel = {
            f: GaugeMetricFamily(f"streamer_stream_{s}", doc, labels=[*labels, "channel"])
            for s, f, doc in CHANNEL_GAUGES
        }
        warming = GaugeMetricFamily(
            "streamer_stream_warming_up", "1 while the stream cannot alert yet", labels=labels
        )
        readings = CounterMetricFamily(
            "streamer_stream_readings", "Readings taken for the stream", labels=labels
        )
        entered = CounterMetricFamily(
            "streamer_stream_anomalies", "Times the stream became anomalous", labels=labels
        )
        top = GaugeMetricFamily(
            "streamer_stream_top_channel",
            "1 for the channel that contributed most to the last reading's surprise"
            " (models with several channels)",
            labels=[*labels, "channel"],
        )
        for route, ids, fields, channels in snapshot:
            for i, sid in enumerate(ids):
                lv = [route, sid]
                for f, fam in gauges.items():
                    fam.add_metric(lv, float(fields[f][i]))
                for f, fam in channel.items():
                    for c, cname in enumerate(channels):
                        fam.add_metric([*lv, cname], float(fields[f][i, c]))
                warming.add_metric(lv, float(fields["warming_up"][i]))
                readings.add_metric(lv, float(fields["readings"][i]))
                entered.add_metric(lv, float(fields["anomalies"][i]))
                if len(channels) > 1:
                    top.add_metric([*lv, channels[fields["contrib"][i]]], 1.0)
        yield from gauges.values()
        yield from channel.values()
        yield from (warming, readings, entered, top)


@dataclass
class OpsStats:
    """What the daemon's housekeeping did: snapshots, restores, model reloads."""

    snapshots_ok: int = 0
    snapshots_failed: int = 0
    last_snapshot: float = 0.0
    last_snapshot_bytes: int = 0
    restore: str = "none"  # none | restored | refused
    reloads: Counter[str] = field(default_factory=Counter)

    def snapshot_ok(self, size: int) -> None:
        self.snapshots_ok += 1
        self.last_snapshot = time.time()
        self.last_snapshot_bytes = size


class OpsCollector(Collector):
    def __init__(self, stats: OpsStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        snaps = CounterMetricFamily(
            "streamer_snapshots", "State snapshots written, by result", labels=["result"]
        )
        snaps.add_metric(["ok"], s.snapshots_ok)
        snaps.add_metric(["failed"], s.snapshots_failed)
        yield snaps
        if s.last_snapshot:
            yield GaugeMetricFamily(
                "streamer_snapshot_age_seconds",
                "Seconds since the last good snapshot",
                value=time.time() - s.last_snapshot,
            )
            yield GaugeMetricFamily(
                "streamer_snapshot_bytes", "Size of the last snapshot", value=s.last_snapshot_bytes
            )
        restore = GaugeMetricFamily(
            "streamer_snapshot_restore",
            "How this run started: from a snapshot or cold",
            labels=["result"],
        )
        for result in ("none", "restored", "refused"):
            restore.add_metric([result], float(s.restore == result))
        yield restore
        reloads = CounterMetricFamily(
            "streamer_model_reloads", "Model reloads, by result", labels=["result"]
        )
        for result in ("kept_state", "reset_state", "failed"):
            reloads.add_metric([result], s.reloads[result])
        yield reloads
