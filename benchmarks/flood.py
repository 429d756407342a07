"""Cardinality flood: far more distinct stream ids than the state store holds.

A misconfigured fleet (a counter or a timestamp in the topic) sends every reading under
a new stream id. The daemon must stay bounded: the store evicts the least recently seen
stream, /metrics exports at most `metrics.max_streams` per-stream series, and nothing
else may keep a per-id trace (RSS flat once the store is full).

Drives the real daemon without a socket (`benchmarks.OfflineDaemon`: paho callback ->
parser -> batcher -> pipeline -> engine -> collector) so that the measured RSS is the
daemon's own and a million ids take a minute, not an hour of broker round trips.

    python -m benchmarks.flood --ids 1000000 --capacity 10000
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import orjson
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import OfflineDaemon, rss_bytes

T0 = 1_700_000_000.0
MB = 1024 * 1024


@dataclass
class FloodResult:
    ids: int
    capacity: int
    max_streams: int
    seconds: float
    ids_per_s: float
    held: int
    evicted: int
    rss_before_mb: float = 0.0  # the daemon built, no stream yet
    rss_mb: list[tuple[int, float]] = field(default_factory=list)  # (ids sent, RSS MB)
    rss_growth_second_half_mb: float = 0.0  # the store is long full by then: should be ~0
    state_mb: float = 0.0  # the store's preallocated arrays, for scale
    series_by_family: dict[str, int] = field(default_factory=dict)  # per-stream families only
    streams_exported: int = 0
    scrape_s: float = 0.0


def per_stream_series(daemon: OfflineDaemon) -> tuple[Counter[str], set[str], float]:
    """(per-stream samples by family, distinct stream ids exported, scrape seconds) of /metrics."""
    t0 = time.perf_counter()
    text = generate_latest(daemon.daemon.registry).decode()
    scrape_s = time.perf_counter() - t0
    series: Counter[str] = Counter()
    streams: set[str] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "stream" in sample.labels:
                series[family.name] += 1
                streams.add(sample.labels["stream"])
    return series, streams, scrape_s


def flood(
    ids: int, capacity: int, max_streams: int, batch: int = 4000, samples: int = 10
) -> FloodResult:
    """Send one reading under each of `ids` new stream ids; sample RSS `samples` times.

    Use ids >= 4 * capacity, so the second half of the flood runs against a full store.
    """
    d = OfflineDaemon.build(
        STREAMER_ENGINE_CAPACITY=str(capacity),
        STREAMER_METRICS_MAX_STREAMS=str(max_streams),
        STREAMER_BATCH_MAX_SIZE=str(min(batch, capacity)),
    )
    engine = d.daemon.engines[0]
    result = FloodResult(ids, capacity, max_streams, 0.0, 0.0, 0, 0)
    result.state_mb = round(engine.store.bytes_per_stream() * capacity / MB, 1)
    result.rss_before_mb = round(rss_bytes() / MB, 1)
    marks = [ids * (i + 1) // samples for i in range(samples)]
    start = time.monotonic()
    for first in range(0, ids, batch):
        sent = min(first + batch, ids)
        for k in range(first, sent):
            d.deliver(0, b"sensors/flood/%d" % k, orjson.dumps({"value": k % 97, "ts": T0 + k}))
        d.drain()
        while marks and sent >= marks[0]:
            marks.pop(0)
            result.rss_mb.append((sent, round(rss_bytes() / MB, 1)))
    result.seconds = round(time.monotonic() - start, 1)
    result.ids_per_s = round(ids / result.seconds)
    result.held = len(engine.store)
    result.evicted = engine.store.evicted
    halfway = next(mb for sent, mb in result.rss_mb if sent >= ids // 2)
    result.rss_growth_second_half_mb = round(result.rss_mb[-1][1] - halfway, 1)
    series, streams, result.scrape_s = per_stream_series(d)
    result.series_by_family = dict(series)
    result.streams_exported = len(streams)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.flood", description=__doc__.split("\n")[0]
    )
    p.add_argument("--ids", type=int, default=1_000_000, help="distinct stream ids to send")
    p.add_argument("--capacity", type=int, default=10_000, help="engine.capacity")
    p.add_argument("--max-streams", type=int, default=1000, help="metrics.max_streams")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    r = flood(args.ids, args.capacity, args.max_streams)
    print(json.dumps(asdict(r), indent=2))
    bounded = r.evicted == args.ids - args.capacity and r.streams_exported <= args.max_streams
    return 0 if bounded else 1


if __name__ == "__main__":
    sys.exit(main())
