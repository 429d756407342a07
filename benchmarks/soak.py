"""Soak: the daemon under steady load for a long time, watched from outside.

Three processes, as in production: a real Mosquitto (`streamer.broker.Mosquitto`), the
daemon (`python -m streamer run`), and a load generator publishing JSON readings at QoS 1
at a fixed rate, stamped with the time of publishing. Every `--sample-s` seconds the
daemon's RSS (/proc/PID/status) and its /metrics (counters, queue depth, the
`streamer_latency_seconds` histogram) are sampled. The report gives:

* RSS growth after warm-up, in % and as a least-squares slope (MB per hour);
* latency p50/p99 (interpolated in histogram buckets, as Prometheus does) in the first
  and the last window after warm-up, and their drift;
* lost readings: published minus (scored + warming up + dropped by reason + refused).

Without --rate the rate is half the measured capacity: a --ramp-s burst at full speed,
capacity = readings the daemon took per second while a backlog stood.

    python -m benchmarks.soak --duration 3600 --rate 2000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import rss_bytes
from streamer.broker import Mosquitto, free_port

MB = 1024 * 1024
UNACKED_MAX = 5000  # the generator's window of messages the broker has not acknowledged yet

# --- the load generator (its own process: --publish-to) ---------------------------------


def publish(port: int, rate: float, streams: int, duration: float) -> int:
    """Publish `rate` readings/s (0: as fast as possible) for `duration` s; the count, all acked.

    Readings go round-robin over `streams` streams (`sensors/soak/<i>`), each a slow sine
    with noise, stamped with the publish time so the daemon's latency is end to end.
    """
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    topics = [f"sensors/soak/{i}" for i in range(streams)]
    rng = np.random.default_rng(0)
    pending: deque[mqtt.MQTTMessageInfo] = deque()
    sent = 0
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < duration:
        due = int(rate * elapsed) - sent if rate else UNACKED_MAX
        due = min(due, UNACKED_MAX - len(pending))  # paho's queue is unbounded; mids wrap at 65535
        noise = rng.standard_normal(max(due, 0)).tolist()
        for k in range(max(due, 0)):
            i = sent % streams
            now = time.time()
            value = 20.0 + math.sin(now / (60.0 + i)) + 0.05 * noise[k]
            pending.append(client.publish(topics[i], orjson.dumps({"value": value, "ts": now}), 1))
            sent += 1
        while pending and pending[0].is_published():
            pending.popleft()
        time.sleep(0.01 if rate else 0.001)
    for info in pending:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()
    return sent


# --- watching the daemon -----------------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since the soak started
    rss_mb: float
    accounted: int  # readings scored, warming up, dropped or refused so far
    depth: float
    latency: list[float]  # cumulative bucket counts of streamer_latency_seconds


def scrape(port: int) -> tuple[int, float, list[float], list[float]]:
    """(readings accounted for, queue depth, latency bucket bounds, cumulative counts)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    accounted, depth, bounds, counts = 0, 0.0, [], []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in (
                "streamer_readings_total",
                "streamer_readings_dropped_total",
                "streamer_parse_errors_total",
            ):
                accounted += int(s.value)
            elif s.name == "streamer_queue_depth":
                depth = s.value
            elif s.name == "streamer_latency_seconds_bucket":
                bounds.append(float(s.labels["le"]))
                counts.append(s.value)
    return accounted, depth, bounds, counts


def quantile(q: float, bounds: list[float], cumulative: list[float]) -> float:
    """Like PromQL histogram_quantile: linear inside the bucket the rank falls in."""
    total = cumulative[-1]
    if total == 0:
        return math.nan
    rank = q * total
    i = int(np.searchsorted(cumulative, rank, side="left"))
    if bounds[i] == math.inf:
        return bounds[i - 1]
    lower = bounds[i - 1] if i else 0.0
    below = cumulative[i - 1] if i else 0.0
    return lower + (bounds[i] - lower) * (rank - below) / (cumulative[i] - below)


def window_latency(a: Sample, b: Sample, bounds: list[float]) -> dict[str, float]:
    """p50/p99 (ms) of the readings scored between samples `a` and `b`."""
    diff = [y - x for x, y in zip(a.latency, b.latency, strict=True)]
    return {
        "p50_ms": round(1000 * quantile(0.5, bounds, diff), 2),
        "p99_ms": round(1000 * quantile(0.99, bounds, diff), 2),
        "readings": int(diff[-1]),
    }


@dataclass
class SoakReport:
    rate: float
    duration_s: float
    streams: int
    capacity_per_s: float | None  # measured by the ramp; None with --rate
    published: int = 0
    accounted: int = 0
    lost: int = 0
    rss_mb_after_warmup: float = 0.0
    rss_mb_end: float = 0.0
    rss_growth_pct: float = 0.0
    rss_slope_mb_per_h: float = 0.0
    latency_first: dict[str, float] = field(default_factory=dict)
    latency_last: dict[str, float] = field(default_factory=dict)
    p50_drift_pct: float = 0.0
    p99_drift_pct: float = 0.0
    max_queue_depth: float = 0.0
    daemon_exit: int | None = None
    samples: list[Sample] = field(default_factory=list)


class Soak:
    """A broker and a daemon, started; load generators run against them one after another."""

    def __init__(self, workdir: Path, capacity: int) -> None:
        self.broker = Mosquitto(persistence=False, workdir=workdir / "mosquitto").start()
        self.metrics_port = free_port()
        env = {
            **os.environ,
            "STREAMER_MQTT_PORT": str(self.broker.port),
            "STREAMER_MQTT_CLIENT_ID": "streamer-soak",
            "STREAMER_METRICS_PORT": str(self.metrics_port),
            "STREAMER_ENGINE_CAPACITY": str(capacity),
            "STREAMER_LOG_LEVEL": "warning",
        }
        self.log = (workdir / "daemon.log").open("wb")
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "streamer", "run"], env=env, stderr=self.log
        )
        self.start = time.monotonic()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.daemon.returncode}")
            try:
                urllib.request.urlopen(
                    f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=1
                ).close()
                return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("the daemon was not ready in time")

    def generator(self, rate: float, streams: int, duration: float) -> subprocess.Popen:
        args = ["--publish-to", str(self.broker.port), "--rate", str(rate)]
        args += ["--streams", str(streams), "--duration", str(duration)]
        return subprocess.Popen(
            [sys.executable, "-m", "benchmarks.soak", *args],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[1],
        )

    @staticmethod
    def published(gen: subprocess.Popen) -> int:
        """The generator's count, once it is done: every one of them acknowledged by the broker."""
        out = gen.communicate()[0]
        if gen.returncode != 0:
            raise RuntimeError(f"the load generator failed with exit status {gen.returncode}")
        return int(out)

    def sample(self) -> tuple[Sample, list[float]]:
        accounted, depth, bounds, counts = scrape(self.metrics_port)
        rss = rss_bytes(self.daemon.pid) / MB
        return Sample(
            time.monotonic() - self.start, round(rss, 1), accounted, depth, counts
        ), bounds

    def wait_accounted(self, published: int, timeout_s: float = 120.0) -> int:
        """Readings accounted for once the backlog is drained (or the timeout passed)."""
        deadline = time.monotonic() + timeout_s
        while (accounted := self.sample()[0].accounted) < published and time.monotonic() < deadline:
            time.sleep(0.2)
        return accounted

    def measure_capacity(self, streams: int, ramp_s: float) -> float:
        """Readings/s the daemon takes with a backlog standing: a burst at full speed."""
        before = self.sample()[0]
        gen = self.generator(0, streams, ramp_s)
        published = self.published(gen)
        during = self.sample()[0]
        self.wait_accounted(before.accounted + published)
        return (during.accounted - before.accounted) / (during.t - before.t)

    def stop(self) -> int:
        """SIGTERM the daemon (it drains and exits 0), then the broker; the daemon's exit status."""
        self.daemon.send_signal(signal.SIGTERM)
        try:
            return self.daemon.wait(60)
        finally:
            if self.daemon.poll() is None:  # it did not stop in time: that is a finding too
                self.daemon.kill()
            self.broker.stop()
            self.log.close()


def soak(
    duration: float,
    rate: float | None,
    streams: int = 1000,
    capacity: int = 100_000,
    sample_s: float = 10.0,
    warmup_s: float = 60.0,
    window_s: float = 60.0,
    ramp_s: float = 15.0,
) -> SoakReport:
    with tempfile.TemporaryDirectory(prefix="streamer-soak-") as tmp:
        s = Soak(Path(tmp), capacity)
        gen = None
        try:
            measured = None if rate else s.measure_capacity(streams, ramp_s)
            report = SoakReport(rate or round(measured / 2), duration, streams, measured)
            base = s.sample()[0].accounted
            gen = s.generator(report.rate, streams, duration)
            t0 = time.monotonic()
            while gen.poll() is None:
                report.samples.append(s.sample()[0])
                time.sleep(max(0.0, sample_s - (time.monotonic() - t0) % sample_s))
            report.published = s.published(gen)
            report.accounted = s.wait_accounted(base + report.published) - base
            last, bounds = s.sample()
            report.samples.append(last)
        finally:
            if gen is not None and gen.poll() is None:  # interrupted
                gen.kill()
            code = s.stop()
    report.daemon_exit = code
    summarise(report, bounds, report.samples[0].t + warmup_s, window_s)
    return report


def summarise(report: SoakReport, bounds: list[float], warm_t: float, window_s: float) -> None:
    """Fill in the figures from the samples: RSS after warm-up, latency windows, losses."""
    report.lost = report.published - report.accounted
    samples = report.samples
    warm = [x for x in samples if x.t >= warm_t] or samples[-2:]
    report.rss_mb_after_warmup, report.rss_mb_end = warm[0].rss_mb, warm[-1].rss_mb
    report.rss_growth_pct = round(100 * (warm[-1].rss_mb / warm[0].rss_mb - 1), 2)
    if len(warm) > 1:
        t = np.array([x.t for x in warm])
        slope = np.polyfit(t, [x.rss_mb for x in warm], 1)[0]
        report.rss_slope_mb_per_h = round(3600 * slope, 2)
    first_end = next((x for x in warm if x.t >= warm[0].t + window_s), warm[-1])
    last_start = next((x for x in reversed(warm) if x.t <= warm[-1].t - window_s), warm[0])
    report.latency_first = window_latency(warm[0], first_end, bounds)
    report.latency_last = window_latency(last_start, warm[-1], bounds)
    for q in ("p50", "p99"):
        a, b = report.latency_first[f"{q}_ms"], report.latency_last[f"{q}_ms"]
        setattr(report, f"{q}_drift_pct", round(100 * (b / a - 1), 1) if a else math.nan)
    report.max_queue_depth = max(x.depth for x in samples)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=__doc__.split("\n")[0]
    )
    p.add_argument("--duration", type=float, default=3600, help="seconds of steady load")
    p.add_argument(
        "--rate", type=float, default=0, help="readings/s; 0: half the measured capacity"
    )
    p.add_argument("--streams", type=int, default=1000, help="distinct streams in the load")
    p.add_argument("--capacity", type=int, default=100_000, help="engine.capacity of the daemon")
    p.add_argument("--sample-s", type=float, default=10, help="seconds between samples")
    p.add_argument("--warmup-s", type=float, default=60, help="seconds before RSS/latency count")
    p.add_argument("--window-s", type=float, default=60, help="latency window length")
    p.add_argument("--ramp-s", type=float, default=15, help="capacity burst length (no --rate)")
    p.add_argument("--out", type=Path, help="also write the report with every sample here")
    p.add_argument("--publish-to", type=int, help=argparse.SUPPRESS)  # the generator process
    args = p.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the broker, the daemon and the generator are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.publish_to:
        print(publish(args.publish_to, args.rate, args.streams, args.duration))
        return 0
    report = soak(
        args.duration,
        args.rate or None,
        args.streams,
        args.capacity,
        args.sample_s,
        args.warmup_s,
        args.window_s,
        args.ramp_s,
    )
    full = asdict(report)
    if args.out:
        args.out.write_text(json.dumps(full, indent=2))
    full.pop("samples")
    print(json.dumps(full, indent=2))
    return 0 if report.lost == 0 and report.daemon_exit == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
