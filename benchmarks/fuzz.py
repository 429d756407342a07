"""Fuzz the whole ingest path: hostile topics and payloads, with good streams interleaved.

Every message goes through a real daemon's paho callback (parse, batcher, pipeline,
engines; see `benchmarks.OfflineDaemon`) on five routes that cover every payload format
and time unit. After each round of messages the invariants are checked:

* nothing escapes the callback and nothing is counted as an `internal` error;
* every message is accounted for exactly once: one parse error by reason, or at least
  one reading queued (or dropped by reason); every queued reading is then scored,
  warming up, or dropped by the engine by reason;
* the good streams' state (hidden state, normaliser, calibration, scores) is bit for
  bit what a second daemon that saw only the good streams holds;
* from time to time: the Prometheus exposition parses back with every hostile stream
  id intact, and every alert topic built from an accepted id is a valid MQTT topic.

    python -m benchmarks.fuzz --cases 1000000
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import string
import sys
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC

import numpy as np
import orjson
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import OfflineDaemon
from streamer.alerts import AlertPublisher
from streamer.engine import DROPPED, StreamEngine

# One route per payload format, with the other time units and a stream_id template.
ROUTES_TOML = """
[[routes]]
name = "sensors"
topic = "sensors/{stream+}"

[[routes]]
name = "plant"
topic = "plant/{site}/{line}"
stream_id = "{site}:{line}"
format = "json"
value_fields = ["temp"]
time_field = "when"
time_unit = "iso"

[[routes]]
name = "packs"
topic = "packs/{device+}"
format = "senml"

[[routes]]
name = "bulk"
topic = "bulk/{id}"
format = "array"
time_unit = "ms"

[[routes]]
name = "bare"
topic = "bare/{id}"
format = "number"
"""
# Per route: the topic prefix and how many levels follow it.
SHAPES = (("sensors", 1, 3), ("plant", 2, 2), ("packs", 1, 3), ("bulk", 1, 1), ("bare", 1, 1))
GOOD_PREFIX = b"sensors/good"  # route 0; no hostile topic starts with it
GOOD_STREAMS = 8
T0 = 1_700_000_000.0
MAX_PAYLOAD = 65536

# --- what the outside world sends ----------------------------------------------------

# Characters that break label escaping, log lines, MQTT topics or UTF-8 itself.
HOSTILE_CHARS = (
    *"\"\\{}[]/+#=,' $%:",
    *"\n\r\t\x00\x1b\x7f\x85\x9f",
    *"\u2028\u200b\ufeff\ufffe\uffff\ufdd0\U0010ffff\U0001fffe\ud800\udfff",
    *"é😀",
)
hostile_text = st.text(st.sampled_from(HOSTILE_CHARS) | st.characters(), max_size=12)
plain_text = st.text(
    st.sampled_from(string.ascii_letters + string.digits + "-_."), min_size=1, max_size=8
)
# A topic level: plain, wholly hostile, or plain with one hostile character inside.
levels = st.one_of(
    plain_text,
    hostile_text,
    st.tuples(plain_text, st.sampled_from(HOSTILE_CHARS), plain_text).map("".join),
)


def utf8(text: str) -> bytes:
    """Lone surrogates become invalid UTF-8 bytes instead of an error: devices send those."""
    return text.encode("utf-8", "surrogatepass")


def _topic(prefix: str, min_levels: int, max_levels: int) -> st.SearchStrategy[bytes]:
    """Mostly the route's shape with hostile levels (so parsing goes on), some raw bytes."""
    shaped = st.lists(levels, min_size=min_levels, max_size=max_levels).map(
        lambda ls: utf8("/".join([prefix, *ls]))
    )
    raw = st.one_of(
        st.binary(max_size=24).map(lambda b: prefix.encode() + b"/" + b), st.binary(max_size=40)
    )
    return st.one_of(*[shaped] * 6, raw).filter(lambda t: not t.startswith(GOOD_PREFIX))


NUMBER_LITERALS = (
    *(b"NaN", b"-nan", b"Infinity", b"-Infinity", b"inf", b"1e999", b"-1e999", b"1e308"),
    *(b"4.9e-324", b"-0", b"0x10", b"1_000", b" 12 ", b"\t7\n", b"12abc", b"", b" ", b"\x00"),
    *(b"9" * 400, b"9" * 5000, b"true", b"null", b"[]", b"{}", b'"1"', b"\xff\xfe1"),
)
numbers_text = st.one_of(
    st.sampled_from(NUMBER_LITERALS),
    st.floats().map(lambda f: repr(f).encode()),
    st.integers().map(lambda i: str(i).encode()),
)
huge_ints = st.integers(min_value=-(10**400), max_value=10**400)
json_numbers = st.floats() | huge_ints | st.sampled_from([1e308, -1e308, 3.5e38, 1e-320])
json_scalars = st.none() | st.booleans() | json_numbers | hostile_text
number_like = json_numbers | st.sampled_from(["12.5", "NaN", "inf", "1e999", " 3 ", "x", True])
iso_times = st.datetimes(timezones=st.none() | st.just(UTC)).map(lambda d: d.isoformat())
time_like = st.one_of(
    st.floats(1.6e9, 1.8e9),
    st.floats(1.6e12, 1.8e12),
    st.integers(-(2**70), 2**70),
    iso_times,
    json_scalars,
)
readings = st.fixed_dictionaries(
    {"value": number_like},
    optional={"ts": time_like, "temp": number_like, "when": time_like, "v": number_like},
)
senml_records = st.fixed_dictionaries(
    {},
    optional={
        **{k: levels | json_scalars for k in ("bn", "n", "u", "vs")},
        **{k: time_like for k in ("bt", "t")},
        **{k: number_like for k in ("bv", "v")},
        "x_": json_scalars,
    },
)
json_keys = st.sampled_from(["value", "ts", "temp", "when", "bn", "n", "v", "t", "x_"])
documents = st.one_of(
    st.recursive(
        json_scalars,
        lambda c: (
            st.lists(c, max_size=4) | st.dictionaries(json_keys | hostile_text, c, max_size=4)
        ),
        max_leaves=10,
    ),
    readings,
    st.lists(readings, max_size=6),
    st.lists(senml_records, max_size=6),
    st.lists(number_like, max_size=3),
)
json_payloads = st.tuples(documents, st.booleans()).map(
    lambda d: utf8(json.dumps(d[0], ensure_ascii=d[1]))
)


def _flip(payload: bytes, at: int, byte: int) -> bytes:
    if not payload:
        return bytes([byte])
    i = at % len(payload)
    return payload[:i] + bytes([byte]) + payload[i + 1 :]


payloads = st.one_of(
    st.binary(max_size=200),
    numbers_text,
    json_payloads,
    st.tuples(json_payloads, st.integers(0, 100)).map(lambda t: t[0][: t[1]]),  # truncated
    st.tuples(json_payloads, st.integers(0, 10**6), st.integers(0, 255)).map(lambda t: _flip(*t)),
    st.tuples(st.sampled_from([b"[", b'{"value":', b'[{"v":']), st.integers(1, 30000)).map(
        lambda t: t[0] * t[1]  # nesting far deeper than any parser's recursion limit
    ),
    st.integers(1, 64).map(lambda k: b"1" * (MAX_PAYLOAD + k)),  # oversized
)


@dataclass(frozen=True)
class Case:
    """One MQTT message as paho hands it over."""

    route: int
    topic: bytes
    payload: bytes
    qos: int


TOPICS = tuple(_topic(*shape) for shape in SHAPES)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    route = draw(st.integers(0, len(SHAPES) - 1))
    return Case(route, draw(TOPICS[route]), draw(payloads), draw(st.sampled_from([0, 1])))


@dataclass(frozen=True)
class Round:
    """Hostile messages, with where the good streams' readings and the drains fall among them."""

    cases: list[Case]
    good_at: list[int]  # per good stream: index into `cases` its reading comes before
    drain_at: frozenset[int]

    def events(self) -> Iterator[Case | int | None]:
        """The round in order: a Case, a good stream's index, or None for "drain now"."""
        for k in range(len(self.cases) + 1):
            yield from (i for i, at in enumerate(self.good_at) if at == k)
            if k in self.drain_at:
                yield None
            if k < len(self.cases):
                yield self.cases[k]


def rounds(max_cases: int = 40) -> st.SearchStrategy[Round]:
    positions = st.integers(0, max_cases)
    return st.builds(
        Round,
        st.lists(cases(), max_size=max_cases),
        st.lists(positions, min_size=GOOD_STREAMS, max_size=GOOD_STREAMS),
        st.frozensets(positions, max_size=3),
    )


# --- what must hold --------------------------------------------------------------------


def publish_topic_problem(topic: str) -> str | None:
    """Why `topic` breaks a MUST of MQTT 5 for a PUBLISH topic name (sections 1.5.4, 4.7.3)."""
    if not topic:
        return "empty"
    if "\x00" in topic:
        return "contains NUL"
    if "+" in topic or "#" in topic:
        return "contains a wildcard"
    try:
        size = len(topic.encode())
    except UnicodeEncodeError:
        return "not valid UTF-8 (lone surrogate)"
    return "longer than 65535 bytes" if size > 65535 else None


def broker_topic_problem(topic: str) -> str | None:
    """Why Mosquitto would refuse `topic` and disconnect the publisher (the spec's SHOULD NOTs).

    Mosquitto 2 rejects control characters (U+0000..U+001F, U+007F..U+009F) and Unicode
    non-characters; `tests/test_fuzz.py` checks that against a real broker.
    """
    for ch in topic:
        cp = ord(ch)
        if cp < 0x20 or 0x7F <= cp <= 0x9F:
            return f"control character U+{cp:04X}"
        if 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE:
            return f"non-character U+{cp:04X}"
    return None


class FuzzFailure(AssertionError):
    """An invariant broke; the message says which, with the message that broke it."""


def good_reading(stream: int, step: int) -> tuple[bytes, bytes]:
    """The well-behaved fleet: a smooth signal with a spike now and then (so scores move)."""
    value = 20.0 + 5.0 * math.sin(step / 7.0 + stream) + 0.1 * math.sin(1.3 * step + 2 * stream)
    if step % 150 == 149:
        value += 40.0
    payload = orjson.dumps({"value": value, "ts": T0 + 60.0 * step})
    return GOOD_PREFIX + f"/{stream}".encode(), payload


def state_bytes(engine: StreamEngine, ids: list[str]) -> bytes:
    """Every per-stream array's rows for `ids`, as raw bytes: equal means bit for bit equal."""
    rows = np.array([engine.store.index[s] for s in ids])
    return b"".join(a[rows].tobytes() for _, a in sorted(engine.store.arrays().items()))


@dataclass
class Fuzzer:
    """Plays rounds into a fuzzed daemon, the good streams alone into a reference daemon."""

    fuzzed: OfflineDaemon
    reference: OfflineDaemon
    max_streams: int
    step: int = 0
    cases: int = 0
    queued: int = 0  # readings the fuzzed daemon's ingest queued
    daemon_s: float = 0.0  # time spent inside the fuzzed daemon (callback and waves)
    good_ids: list[str] = field(default_factory=lambda: [f"good/{i}" for i in range(GOOD_STREAMS)])

    @classmethod
    def build(cls, capacity: int = 20000, max_streams: int = 100000) -> Fuzzer:
        env = {
            "STREAMER_ENGINE_CAPACITY": str(capacity),
            "STREAMER_METRICS_MAX_STREAMS": str(max_streams),
            "STREAMER_BATCH_MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD),
        }
        return cls(OfflineDaemon.build(ROUTES_TOML, **env), OfflineDaemon.build(**env), max_streams)

    def play(self, rnd: Round) -> None:
        """One round, then every per-round invariant; FuzzFailure if one breaks."""
        self.step += 1
        engines_before = self.fuzzed.taken_or_dropped()
        queued_before = self.queued
        for event in rnd.events():
            if event is None:
                self._drain()
            elif isinstance(event, Case):
                self._deliver_checked(event)
            else:
                topic, payload = good_reading(event, self.step)
                before = self.fuzzed.daemon.batcher.depth()
                self.fuzzed.deliver(0, topic, payload)
                self.reference.deliver(0, topic, payload)
                self.queued += self.fuzzed.daemon.batcher.depth() - before
        self._drain()
        self.reference.drain()
        accounted = self.fuzzed.taken_or_dropped() - engines_before
        if accounted != self.queued - queued_before:
            raise FuzzFailure(
                f"{self.queued - queued_before} readings queued, {accounted} taken or dropped"
            )
        self._check_good_streams()

    def _deliver_checked(self, case: Case) -> None:
        ingest = self.fuzzed.daemon.ingest

        def tally() -> tuple[int, int, int]:
            depth = self.fuzzed.daemon.batcher.depth()
            return sum(ingest.errors.values()), depth, sum(ingest.dropped.values())

        e0, q0, d0 = tally()
        t0 = time.perf_counter()
        self.fuzzed.deliver(case.route, case.topic, case.payload, case.qos)
        self.daemon_s += time.perf_counter() - t0
        e1, q1, d1 = tally()
        self.cases += 1
        self.queued += q1 - q0
        internal = sum(n for (_, reason), n in ingest.errors.items() if reason == "internal")
        if internal:
            raise FuzzFailure(f"an internal error (a bug) on {case!r}")
        errors, queued, dropped = e1 - e0, q1 - q0, d1 - d0
        refused = errors == 1 and queued == dropped == 0
        taken = errors == 0 and queued + dropped > 0
        if not (refused or taken):
            raise FuzzFailure(
                f"errors +{errors}, queued +{queued}, dropped +{dropped} on one message {case!r}"
            )

    def _drain(self) -> None:
        t0 = time.perf_counter()
        self.fuzzed.drain()
        self.daemon_s += time.perf_counter() - t0

    def _check_good_streams(self) -> None:
        fuzzed, reference = self.fuzzed.daemon.engines[0], self.reference.daemon.engines[0]
        if state_bytes(fuzzed, self.good_ids) != state_bytes(reference, self.good_ids):
            raise FuzzFailure(
                f"round {self.step}: a good stream's state differs from the reference"
            )

    def check_exposition(self) -> int:
        """Parse /metrics back: every exported stream id is a held stream, with its own values."""
        d = self.fuzzed.daemon
        text = generate_latest(d.registry).decode()
        readings: dict[str, dict[str, float]] = defaultdict(dict)
        for family in text_string_to_metric_families(text):
            if family.name == "streamer_stream_readings":
                for s in family.samples:
                    readings[s.labels["route"]][s.labels["stream"]] = s.value
        for name, engine in zip(self.fuzzed.route_names, d.engines, strict=True):
            store, exported = engine.store, readings[name]
            if len(exported) != min(len(store), self.max_streams):
                raise FuzzFailure(f"route {name}: {len(exported)} of {len(store)} streams exported")
            for sid, value in exported.items():
                row = store.index.get(sid)
                if row is None or store.seen[row] != value:
                    raise FuzzFailure(f"route {name}: exported stream {sid!r} does not round-trip")
        return sum(len(v) for v in readings.values())

    def alert_topic_problems(
        self, rule: Callable[[str], str | None]
    ) -> Iterator[tuple[str, str, str]]:
        """(stream id, alert topic, problem) for every held stream whose alert topic breaks `rule`."""
        d = self.fuzzed.daemon
        alerts = AlertPublisher(d.ingest.receiver, d.cfg.alerts)
        for name, engine in zip(self.fuzzed.route_names, d.engines, strict=True):
            for sid in engine.store.index:
                topic = alerts.topic(name, sid)
                problem = rule(topic)
                if problem:
                    yield sid, topic, problem

    def check_alert_topics(self) -> None:
        for sid, topic, problem in self.alert_topic_problems(publish_topic_problem):
            raise FuzzFailure(f"stream {sid!r}: alert topic {topic!r} is invalid: {problem}")

    def reasons(self) -> Counter[str]:
        """Bad input by reason: parse errors, readings dropped by ingest and by the engines."""
        d = self.fuzzed.daemon
        out: Counter[str] = Counter()
        for (_, reason), n in (*d.ingest.errors.items(), *d.ingest.dropped.items()):
            out[reason] += n
        for engine in d.engines:
            for reason in DROPPED:
                out[reason] += engine.counts[reason]
        return +out


def corpus(size: int, seed_: int) -> list[Case]:
    """`size` cases drawn by the hypothesis strategies above (no shrinking, no database)."""
    out: list[Case] = []

    @settings(
        max_examples=size,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @seed(seed_)
    @given(cases())
    def collect(case: Case) -> None:
        out.append(case)

    collect()
    return out


@dataclass
class Havoc:
    """AFL-style mutation of a hypothesis-drawn corpus: a million varied cases at the daemon's pace.

    Hypothesis draws a few hundred structured cases a second on this machine, far fewer
    than the daemon handles, so the long run draws a corpus once and derives every
    case from one or two corpus entries with cheap byte-level mutations.
    """

    corpus: list[Case]
    rng: random.Random

    def case(self) -> Case:
        base = self.rng.choice(self.corpus)
        topic, payload = base.topic, base.payload
        for _ in range(self.rng.randrange(4)):
            mutate = self.rng.choice(self._MUTATIONS)
            if self.rng.random() < 0.25:
                topic = mutate(self, topic)
            else:
                payload = mutate(self, payload)
        return Case(base.route, topic, payload, base.qos)

    def round(self, max_cases: int = 40) -> Round:
        n = self.rng.randrange(max_cases + 1)
        return Round(
            [self.case() for _ in range(n)],
            [self.rng.randrange(n + 1) for _ in range(GOOD_STREAMS)],
            frozenset(self.rng.randrange(n + 1) for _ in range(self.rng.randrange(3))),
        )

    def _flip(self, data: bytes) -> bytes:
        return _flip(data, self.rng.randrange(1 << 20), self.rng.randrange(256))

    def _insert_hostile(self, data: bytes) -> bytes:
        i = self.rng.randrange(len(data) + 1)
        return data[:i] + utf8(self.rng.choice(HOSTILE_CHARS)) + data[i:]

    def _truncate(self, data: bytes) -> bytes:
        return data[: self.rng.randrange(len(data) + 1)]

    def _splice(self, data: bytes) -> bytes:
        other = self.rng.choice(self.corpus).payload
        return (
            data[: self.rng.randrange(len(data) + 1)] + other[self.rng.randrange(len(other) + 1) :]
        )

    def _repeat(self, data: bytes) -> bytes:
        i, j = sorted(self.rng.randrange(len(data) + 1) for _ in range(2))
        return data[:j] + data[i:j] * self.rng.randrange(2, 50) + data[j:]

    _MUTATIONS = (_flip, _insert_hostile, _truncate, _splice, _repeat)


def run(fuzzer: Fuzzer, havoc: Havoc, cases: int, check_every: int = 50_000) -> None:
    """Play rounds until `cases` hostile messages were delivered; scrape-check every so often."""
    start = time.monotonic()
    next_check = check_every
    while fuzzer.cases < cases:
        fuzzer.play(havoc.round())
        if fuzzer.cases >= next_check:
            next_check += check_every
            fuzzer.check_exposition()
            fuzzer.check_alert_topics()
            rate = fuzzer.cases / (time.monotonic() - start)
            print(f"{fuzzer.cases} cases, {rate:.0f}/s", file=sys.stderr, flush=True)
    fuzzer.check_exposition()
    fuzzer.check_alert_topics()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.fuzz", description=__doc__.split("\n")[0]
    )
    p.add_argument("--cases", type=int, default=1_000_000, help="hostile messages to deliver")
    p.add_argument("--seed", type=int, default=0, help="seed of the corpus and the mutations")
    p.add_argument("--corpus", type=int, default=5000, help="cases hypothesis draws to mutate")
    p.add_argument("--capacity", type=int, default=20000, help="engine.capacity per route")
    p.add_argument("--max-streams", type=int, default=2000, help="metrics.max_streams")
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)  # every bad message is logged (throttled): noise here
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # huge values: see RELIABILITY.md
    fuzzer = Fuzzer.build(args.capacity, args.max_streams)
    t0 = time.monotonic()
    havoc = Havoc(corpus(args.corpus, args.seed), random.Random(args.seed))
    corpus_s = time.monotonic() - t0
    start = time.monotonic()
    failure = None
    try:
        run(fuzzer, havoc, args.cases)
    except FuzzFailure as e:
        failure = str(e)
    elapsed = time.monotonic() - start
    d = fuzzer.fuzzed.daemon
    report = {
        "corpus": {"cases": len(havoc.corpus), "seconds": round(corpus_s, 1)},
        "cases": fuzzer.cases,
        "rounds": fuzzer.step,
        "seconds": round(elapsed, 1),
        "cases_per_s": round(fuzzer.cases / elapsed),
        "daemon_cases_per_s": round(fuzzer.cases / fuzzer.daemon_s),
        "readings_queued": fuzzer.queued,
        "by_reason": dict(fuzzer.reasons().most_common()),
        "taken": {k: sum(e.counts[k] for e in d.engines) for k in ("scored", "warmup")},
        "streams_held": sum(len(e.store) for e in d.engines),
        "evicted": sum(e.store.evicted for e in d.engines),
        "internal_errors": sum(n for (_, r), n in d.ingest.errors.items() if r == "internal"),
        "broker_refused_alert_topics": sum(
            1 for _ in fuzzer.alert_topic_problems(broker_topic_problem)
        ),
        "failure": failure,
    }
    print(json.dumps(report, indent=2))
    return 1 if failure or report["internal_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
