"""The receiver process: frames, acknowledgements across the process boundary, and its lifetime."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import paho.mqtt.client as mqtt
from conftest import daemon_config, wait_until
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from streamer.app import Daemon
from streamer.config import LogConfig, MqttConfig
from streamer.errors import BadInput
from streamer.parse import Parser, PayloadSpec, TopicTemplate
from streamer.receiver import (
    PACK_FROM_READINGS,
    PARSE_FROM_BYTES,
    Receiver,
    decode,
    encode,
    pack,
    unpack,
)

frames = st.lists(
    st.tuples(st.text(max_size=8), st.lists(st.integers() | st.binary(max_size=40), max_size=5)),
    max_size=6,
)


@given(frames=frames, cuts=st.lists(st.integers(0, 400), max_size=8))
def test_frames_come_out_whole_and_in_order_however_the_bytes_are_cut(frames, cuts):
    wire = b"".join(encode(f) for f in frames)
    buffer, got, at = bytearray(), [], 0
    for cut in [*sorted(cuts), len(wire)]:
        buffer += wire[at : max(at, cut)]
        at = max(at, cut)
        got += decode(buffer)
    assert got == frames
    assert not buffer


finite = st.floats(allow_nan=False)


@given(
    n=st.integers(0, 3 * PACK_FROM_READINGS),
    channels=st.integers(1, 3),
    data=st.data(),
)
def test_a_run_travels_packed_or_as_it_is_and_reads_back_the_same(n, channels, data):
    """Times and values (NaN and infinities too) come back bit for bit, in shape [n, channels]."""
    ts = data.draw(st.lists(finite, min_size=n, max_size=n))
    value = st.floats() | st.sampled_from([float("nan"), float("inf"), -0.0])
    values = data.draw(st.lists(st.tuples(*[value] * channels), min_size=n, max_size=n))
    stream, *columns = decode(bytearray(encode(pack("s", ts, values))))[0]
    assert stream == "s"
    if n < PACK_FROM_READINGS:
        assert repr(columns) == repr([ts, values])  # repr: NaN is not equal to itself
        return
    got_ts, got_values = unpack(*columns)
    assert got_values.shape == (n, channels)
    assert got_ts.tobytes() == np.array(ts, np.float64).tobytes()
    assert got_values.tobytes() == np.array(values, np.float64).reshape(n, channels).tobytes()


def _publish(port: int, n: int, payload=lambda i: str(i).encode()) -> None:
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="pub", protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    for i in range(n):
        pub.publish(f"sensors/s{i}", payload(i), qos=1).wait_for_publish(5)
    pub.disconnect()
    pub.loop_stop()


def _frames(receiver: Receiver, timeout_s: float = 20.0):
    """The receiver's frames, one by one, until it exits; fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while (frames := receiver.receive(max(0.0, deadline - time.monotonic()))) is not None:
        if time.monotonic() > deadline:
            raise AssertionError(f"no more frames within {timeout_s} s")
        yield from frames


def _receive(receiver: Receiver, n: int) -> list[tuple]:
    """The first `n` messages the receiver forwards (after its session is up)."""
    got: list[tuple] = []
    for kind, *args in _frames(receiver):
        if kind == "messages":
            got += args[0]
            if len(got) >= n:
                return got
    raise AssertionError(f"the receiver exited after {len(got)} of {n} messages")


def _events(receiver: Receiver, kind: str) -> list[tuple]:
    """Frames until one of `kind`, that one included."""
    seen: list[tuple] = []
    for frame in _frames(receiver):
        seen.append(frame)
        if frame[0] == kind:
            return seen
    raise AssertionError(f"the receiver exited without {kind!r}: {seen}")


def _parser(pattern: str = "sensors/{id}") -> Parser:
    return Parser(TopicTemplate(pattern), PayloadSpec())


def _receiver(port: int) -> Receiver:
    cfg = MqttConfig(port=port, client_id="receiver-test", qos=1)
    r = Receiver(cfg, [_parser()], LogConfig(level="warning"))
    r.start()
    return r


def test_only_unacknowledged_messages_are_delivered_again(broker):
    first = _receiver(broker.port)
    assert [f[0] for f in _events(first, "subscribed")] == ["connected", "subscribed"]
    threading.Thread(target=_publish, args=(broker.port, 20), daemon=True).start()
    got = _receive(first, 20)
    assert [(route, topic, payload) for route, topic, payload, _, _ in got] == [
        (0, f"sensors/s{i}", str(i).encode()) for i in range(20)
    ]
    assert {qos for *_, qos in got} == {1}
    first.send("ack", [(mid, qos) for _, _, _, mid, qos in got[:15]])
    first.close()
    assert first.proc.returncode == 0

    second = _receiver(broker.port)  # the same client id: the broker kept the session
    again = _receive(second, 5)
    assert [payload for _, _, payload, _, _ in again] == [str(i).encode() for i in range(15, 20)]
    second.close()


def test_large_payloads_arrive_parsed_small_ones_as_they_came(broker):
    """Many readings are parsed in the receiver (off the engine thread), one is not."""
    reading = b'{"value": 1.5, "ts": 1700000000.25}'
    n = PARSE_FROM_BYTES // len(reading) + 1
    array = b"[" + b",".join([reading] * n) + b"]"
    payloads = [reading, array, b"[" + b"x" * PARSE_FROM_BYTES + b"]"]
    r = _receiver(broker.port)
    _events(r, "subscribed")
    threading.Thread(target=_publish, args=(broker.port, 3, payloads.__getitem__)).start()
    small, large, bad = (body for _, _, body, _, _ in _receive(r, 3))
    r.close()
    assert small == reading
    [(stream, ts, values)] = large  # packed: float64 bytes, read back as numpy views
    assert stream == "s1"
    ts, values = unpack(ts, values)
    assert ts.tolist() == [1700000000.25] * n and values.tolist() == [[1.5]] * n
    assert type(bad) is BadInput and bad.reason == "bad_json"


def test_signals_to_the_process_group_leave_it_to_the_daemon_and_a_gone_daemon_ends_it(broker):
    r = _receiver(broker.port)
    _events(r, "subscribed")
    for sig in (signal.SIGINT, signal.SIGTERM):
        os.kill(r.proc.pid, sig)  # a Ctrl-C or a stop of the whole cgroup: the daemon drains
    time.sleep(0.3)
    assert not r.exited()
    r.sock.close()  # the daemon is gone: nothing can take its messages
    r.proc.wait(5)
    assert r.proc.returncode == 0


def test_a_daemon_whose_receiver_died_is_not_ready_and_exits_with_failure(broker):
    d = Daemon(daemon_config(broker, STREAMER_METRICS_ENABLED="false"))
    killed = threading.Event()

    def kill_receiver() -> None:
        wait_until(d.ingest.subscribed.is_set, 20, "subscription")
        d.ingest.receiver.proc.kill()
        wait_until(lambda: not d.ready()[0], 5, "not ready")
        killed.set()

    threading.Thread(target=kill_receiver, daemon=True).start()
    assert d.run_forever() == 1
    assert killed.is_set()
    assert d.ready() == (False, "the MQTT receiver process exited")


def test_the_receiver_takes_the_password_read_when_the_daemon_was_built(broker, monkeypatch):
    monkeypatch.setenv("STREAMER_MQTT_PASSWORD", "first")
    r = Receiver(MqttConfig(port=broker.port, username="u"), [_parser("a/{rest+}")], LogConfig())
    monkeypatch.setenv("STREAMER_MQTT_PASSWORD", "second")
    assert r.password == "first"
