"""Hostile topics and payloads through the real ingest path: counted by reason, never a crash,
never a change to anybody else's scores; hostile stream ids stay harmless downstream.

The harness (`benchmarks.fuzz`) is the one `python -m benchmarks.fuzz` runs a million
cases through; here it runs a few thousand.
"""

import json
import logging
import time

import numpy as np
import orjson
import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks import OfflineDaemon, fuzz
from benchmarks.fuzz import (
    ROUTES_TOML,
    T0,
    Fuzzer,
    broker_topic_problem,
    levels,
    publish_topic_problem,
    rounds,
    utf8,
)
from streamer.alerts import AlertPublisher
from streamer.engine import StreamEngine
from streamer.model import StepModel

FUZZ = settings(
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
)


@pytest.fixture(autouse=True)
def quiet_logs():
    """Bad input is logged (throttled); thousands of lines would only slow the run."""
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def test_hostile_messages_are_counted_and_leave_good_streams_bit_identical():
    fuzzer = Fuzzer.build(capacity=5000)

    @settings(FUZZ, max_examples=600)
    @given(rounds())
    def play(rnd):
        fuzzer.play(rnd)  # raises FuzzFailure on any broken invariant

    play()
    assert fuzzer.cases > 1000
    assert fuzzer.step >= 600
    reasons = fuzzer.reasons()
    assert "internal" not in reasons
    assert {"bad_topic", "topic_mismatch", "bad_stream_id", "oversized", "bad_json"} <= set(reasons)
    assert fuzzer.check_exposition() > 0
    fuzzer.check_alert_topics()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_the_long_run_mutates_a_corpus_and_reports(capsys):
    assert fuzz.main(["--cases", "3000", "--corpus", "100", "--capacity", "5000"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cases"] >= 3000
    assert report["internal_errors"] == 0
    assert report["failure"] is None
    assert sum(report["by_reason"].values()) > 0


@pytest.mark.parametrize(
    ("route", "topic", "payload", "reason"),
    [
        (0, b"sensors/\xff\xfe", b"1", "bad_topic"),
        (0, b"elsewhere/a", b"1", "topic_mismatch"),
        (0, b"sensors/a+b", b"1", "bad_stream_id"),
        (0, b"sensors/a\x00b", b"1", "bad_stream_id"),
        (0, b"sensors/x", b"1" * 65537, "oversized"),
        (0, b"sensors/x", b"[" * 50000, "bad_json"),
        (0, b"sensors/x", b'{"value": ' + b"9" * 5000 + b"}", "bad_json"),
        (0, b"sensors/x", b'{"value": true}', "wrong_type"),
        (0, b"sensors/x", b'{"value": 1, "ts": "yesterday"}', "bad_timestamp"),
        (2, b"packs/x", b'[{"bn": "d/", "n": "t", "v": 1', "bad_json"),
        (2, b"packs/x", b'[{"n": "\\ud800", "v": 1}]', "bad_stream_id"),
        (2, b"packs/x", b'[{"n": "t", "v": 1, "x_": 1}]', "bad_senml"),
        (4, b"bare/a", b"\xff", "not_utf8"),
        (4, b"bare/a", b"", "empty"),
    ],
)
def test_each_kind_of_bad_message_has_its_reason(route, topic, payload, reason):
    d = OfflineDaemon.build(ROUTES_TOML)
    d.deliver(route, topic, payload)
    assert dict(d.daemon.ingest.errors) == {(d.route_names[route], reason): 1}
    assert d.daemon.batcher.depth() == 0


@pytest.mark.parametrize("literal", [b"NaN", b"-Infinity", b"1e999", b"9" * 400])
def test_non_finite_values_reach_the_engine_and_are_dropped_there(literal):
    d = OfflineDaemon.build()
    d.deliver(0, b"sensors/x", b'{"value": ' + literal + b"}")
    d.drain()
    assert d.daemon.engines[0].counts["not_finite"] == 1
    assert len(d.daemon.engines[0].store) == 0


@pytest.fixture(scope="module")
def shared_fuzzer() -> Fuzzer:
    """One daemon for many examples: ids pile up, so each scrape parses every id seen so far."""
    return Fuzzer.build(capacity=5000)


@settings(FUZZ, max_examples=150)
@given(hostile_levels=st.lists(levels, min_size=1, max_size=3))
def test_hostile_stream_ids_round_trip_through_the_exposition(shared_fuzzer, hostile_levels):
    d = shared_fuzzer.fuzzed
    store = d.daemon.engines[0].store
    held = len(store)
    d.deliver(0, utf8("/".join(["sensors", *hostile_levels])), orjson.dumps({"value": 1.5}))
    d.drain()
    if len(store) > held:
        assert shared_fuzzer.check_exposition() == sum(len(e.store) for e in d.daemon.engines)
        shared_fuzzer.check_alert_topics()


def _new_alert_topics(fuzzer: Fuzzer, route: int, topic: bytes, payload: bytes) -> list[str]:
    """Alert topics of the streams a message created."""
    d = fuzzer.fuzzed
    store = d.daemon.engines[route].store
    before = set(store.index)
    d.deliver(route, topic, payload)
    d.drain()
    alerts = AlertPublisher(d.daemon.ingest.receiver, d.daemon.cfg.alerts)
    return [alerts.topic(d.route_names[route], sid) for sid in set(store.index) - before]


@settings(FUZZ, max_examples=200)
@given(names=st.lists(levels, min_size=1, max_size=2))
def test_alert_topics_of_accepted_senml_names_are_accepted_by_the_broker(shared_fuzzer, names):
    pack = [{"bn": names[0], "n": names[-1], "v": 1.0}]
    payload = json.dumps(pack).encode()  # escapes lone surrogates, which orjson refuses
    for topic in _new_alert_topics(shared_fuzzer, 2, b"packs/dev", payload):
        assert broker_topic_problem(topic) is None, topic


def _broker_accepts(port: int, topic: str) -> bool:
    """Publish `topic` at QoS 1: True on PUBACK, False when the broker drops the connection."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    info = client.publish(topic, b"1", qos=1)
    deadline = time.monotonic() + 10
    while not info.is_published() and time.monotonic() < deadline:
        if client.loop(0.05) != mqtt.MQTT_ERR_SUCCESS:
            break  # the broker closed the connection
    client.disconnect()
    return info.is_published()


def test_the_broker_rules_we_check_are_mosquittos(broker):
    for topic in [
        "alerts/plain",
        "alerts/a\"b\\c{d}e'f g",
        "alerts/\u2028\u200b\ufeff",
        "alerts/é😀",
        "alerts/a\x85b",
        "alerts/\x9f",
        "alerts/\x7f",
        "alerts/\ufffe",
        "alerts/\ufdd0",
        "alerts/\U0001ffff",
    ]:
        assert publish_topic_problem(topic) is None
        assert _broker_accepts(broker.port, topic) == (broker_topic_problem(topic) is None), topic


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_huge_finite_value_does_not_poison_its_stream(model_path):
    engine = StreamEngine(StepModel(model_path))
    values = [1.0, 2.0, 1e300, *np.sin(np.arange(300) / 5.0)]
    for i, v in enumerate(values):
        engine.step(["s"], [T0 + 60.0 * i], np.array([[v]]))
    row = engine.store.index["s"]
    assert np.isfinite(engine.store.normalizer.mean[row]).all()
    assert np.isfinite(engine.store.score[row])
