"""The daemon under test: `streamer.app.Daemon` as `streamer run` builds it, plus a latency probe.

Configured by the same STREAMER_* environment variables as `streamer run` (the
benchmark turns the HTTP endpoint off: it would idle, and the counters are read
from the same registry directly). The one addition is `LatencyProbe`: the pipeline's latency histogram, which also keeps every
sample, so that p50/p99/max are exact instead of interpolated between buckets (after
a warm-up, see `procs.Latencies`).
Prints "ready" once subscribed; then, when every expected reading is accounted for
(scored, warming up, or dropped or refused by reason) or nothing moved for --idle-s,
one JSON line: latencies, the counters from its own /metrics, CPU and RSS.

    STREAMER_MQTT_PORT=1883 python -m benchmarks.bench.runner --expected 100000
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import numpy as np
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamer import config, logs
from streamer.app import Daemon
from streamer.engine import DROPPED, TAKEN
from streamer.metrics import Buckets

from .procs import (
    Latencies,
    Progress,
    announce_ready,
    cpu_seconds,
    memory,
    own_usage,
    thread_cpu,
)


class LatencyProbe(Buckets):
    """The latency histogram, also keeping every sample and counting readings as they score."""

    def __init__(self, bounds: np.ndarray, progress: Progress) -> None:
        super().__init__(bounds)
        self.progress = progress
        self.latencies = Latencies()

    def observe(self, values: np.ndarray | float) -> None:
        super().observe(values)
        values = np.atleast_1d(np.asarray(values, np.float32))
        now = time.time()
        self.latencies.add(now, values)
        self.progress.add(len(values), now)


def accounted(daemon: Daemon) -> int:
    """Readings with a fate: taken or dropped by the engines, dropped by ingest, or refused."""
    engines = sum(e.counts[k] for e in daemon.engines for k in (*TAKEN, *DROPPED))
    ingest = daemon.ingest
    return engines + sum(ingest.dropped.values()) + sum(ingest.errors.values())


def exported(daemon: Daemon) -> dict[str, dict[str, float]]:
    """The counters the daemon exports, as a scrape would read them: {name: {label: value}}."""
    wanted = {
        "streamer_readings_total": "result",
        "streamer_readings_dropped_total": "reason",
        "streamer_parse_errors_total": "reason",
        "streamer_messages_total": "route",
        "streamer_gap_resets_total": "route",
        "streamer_batch_size_count": "",
        "streamer_batch_size_sum": "",
        "streamer_inference_seconds_sum": "",
    }
    out: dict[str, dict[str, float]] = defaultdict(dict)
    text = generate_latest(daemon.registry).decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in wanted:
                key = s.labels.get(wanted[s.name], "")
                out[s.name][key] = out[s.name].get(key, 0.0) + s.value
    return dict(out)


def run(expected: int, idle_s: float, warmup_s: float) -> dict:
    cfg = config.load(environ=None)
    logs.setup("warning")
    daemon = Daemon(cfg)
    progress = Progress()
    probe = LatencyProbe(daemon.pipeline.latency.bounds, progress)
    daemon.pipeline.latency = probe
    daemon.start()
    receiver = daemon.ingest.receiver.proc.pid
    progress.cpu = lambda: time.process_time() + cpu_seconds(receiver)
    if not daemon.ingest.subscribed.wait(30):
        raise TimeoutError("the daemon did not subscribe within 30 s")
    announce_ready()
    queue_peak = 0

    def count() -> int:
        nonlocal queue_peak
        queue_peak = max(queue_peak, daemon.batcher.depth())
        return accounted(daemon)

    def threads() -> dict[str, float]:
        return {**thread_cpu(), "receiver": cpu_seconds(receiver)}

    threads_before = threads()
    progress.wait(expected, idle_s, count)
    usage = own_usage()
    usage["rss"] += memory(receiver)["rss"]  # the daemon's footprint: both processes
    thread_cpu_s = {k: v - threads_before.get(k, 0.0) for k, v in threads().items()}
    summary = progress.summary()
    daemon.shutdown()
    return {
        **summary,
        **usage,
        "accounted": accounted(daemon),
        "waves": daemon.pipeline.waves,
        "queue_peak": queue_peak,
        "thread_cpu_s": thread_cpu_s,
        "latency": probe.latencies.summary(warmup_s),
        "metrics": exported(daemon),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--expected", type=int, required=True, help="readings to wait for")
    p.add_argument("--idle-s", type=float, default=3.0, help="give up after this long without one")
    p.add_argument("--warmup-s", type=float, default=1.0, help="latencies before this are left out")
    args = p.parse_args(argv)
    print(json.dumps(run(args.expected, args.idle_s, args.warmup_s)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
