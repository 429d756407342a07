"""The load generator: MQTT PUBLISH packets written straight to a socket, in a process of its own.

Not paho: its Python publish path costs tens of microseconds a message (about 14,000
messages/s on the benchmark machine), the same order as the subscribers under test,
so a paho publisher would measure itself. Encoding MQTT 3.1.1 PUBLISH packets by hand
is a few lines and leaves the publisher far ahead of any Python subscriber, so the
subscriber (or the broker) is what a run measures.

Every message is built just before it is sent and stamped with that time, so a
reading's `ts` is its publish time (to within the chunk of about 1 ms of traffic sent
in one `sendall`). Payload kinds, each on topic `<prefix>/<id>` (prefix "sensors": the default route):

    json    {"value": v, "ts": t}                      one reading of stream s<i>
    number  21.503                                     one reading, stamped on arrival
    array   [{"value": v, "ts": t}, ...]               `batch` readings of stream s<i>,
                                                       `spacing_s` apart, the last at t
    senml   [{"bt": t, "n": "c0", "v": v}, {"n": "c1", "v": v}, ...]
                                                       one reading of each of `batch`
                                                       sensors c<k> of device d<i>

    python -m benchmarks.bench.publisher --port 1883 --payload json --readings 100000
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import orjson

PAYLOADS = ("json", "number", "array", "senml")
CHUNK_S = 0.001  # traffic per sendall when rate-limited: the resolution of the schedule
BURST_CHUNK = 512  # messages per sendall at full speed


@dataclass(frozen=True)
class Load:
    """What to publish. `readings` counts readings, not messages (a message holds `batch`)."""

    port: int
    payload: str = "json"
    streams: int = 10_000
    readings: int = 100_000
    batch: int = 1
    rate: float = 0.0  # readings/s; 0 = as fast as the broker takes them
    qos: int = 0
    spacing_s: float = 0.001
    prefix: str = "sensors"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.payload not in PAYLOADS:
            raise ValueError(f"payload must be one of {PAYLOADS}, got {self.payload!r}")
        if self.payload in ("json", "number") and self.batch != 1:
            raise ValueError(f"{self.payload} payloads hold one reading: batch must be 1")
        if self.readings % self.batch:
            raise ValueError("readings must be a multiple of batch")
        if self.topics < 1:
            raise ValueError("need at least one topic: streams >= batch for senml")

    @property
    def messages(self) -> int:
        return self.readings // self.batch

    @property
    def topics(self) -> int:
        """Distinct topics: streams, or devices of `batch` sensors each for SenML."""
        return self.streams // self.batch if self.payload == "senml" else self.streams


@dataclass
class Published:
    messages: int
    readings: int
    start: float  # wall clock of the first send
    end: float  # wall clock when the broker had everything (QoS 1: every PUBACK back)
    cpu_s: float

    @property
    def rate(self) -> float:
        return self.readings / max(self.end - self.start, 1e-9)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (128 if n else 0))
        if not n:
            return bytes(out)


def _packet(kind: int, body: bytes) -> bytes:
    return bytes((kind,)) + _varint(len(body)) + body


def _text(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("!H", len(raw)) + raw


class Payloads:
    """Message j's payload at time `now`; readings of one topic get strictly increasing times."""

    def __init__(self, load: Load) -> None:
        self.load = load
        rng = np.random.default_rng(load.seed)
        self.values = [round(float(v), 3) for v in rng.normal(20.0, 1.0, 4099)]
        self.last = [0.0] * load.topics
        letter = "d" if load.payload == "senml" else "s"
        self.topic_names = [f"{load.prefix}/{letter}{i}" for i in range(load.topics)]
        self.encode: Callable[[int, int, float], bytes] = getattr(self, f"_{load.payload}")

    def _value(self, j: int, k: int = 0) -> float:
        return self.values[(j * 7 + k) % len(self.values)]

    def _json(self, j: int, topic: int, now: float) -> bytes:
        return orjson.dumps({"value": self._value(j), "ts": now})

    def _number(self, j: int, topic: int, now: float) -> bytes:
        return repr(self._value(j)).encode()

    def _array(self, j: int, topic: int, now: float) -> bytes:
        k, spacing = self.load.batch, self.load.spacing_s
        # A pack never reaches back past the stream's previous one (only tight loops get here).
        end = max(now, self.last[topic] + k * spacing)
        self.last[topic] = end
        first = end - (k - 1) * spacing
        return orjson.dumps(
            [{"value": self._value(j, i), "ts": first + i * spacing} for i in range(k)]
        )

    def _senml(self, j: int, topic: int, now: float) -> bytes:
        records = [{"n": f"c{i}", "v": self._value(j, i)} for i in range(self.load.batch)]
        records[0]["bt"] = now
        return orjson.dumps(records)


class Connection:
    """One MQTT 3.1.1 connection that only publishes; a thread counts the broker's PUBACKs."""

    def __init__(self, port: int, client_id: str, qos: int) -> None:
        self.qos = qos
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        # Each chunk is sent when stamped: Nagle would hold it for the broker's delayed ACK
        # (up to 40 ms at QoS 0, where nothing comes back to carry the ACK).
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        variable = _text("MQTT") + bytes((4, 0x02)) + struct.pack("!H", 0)  # clean, no keepalive
        self.sock.sendall(_packet(0x10, variable + _text(client_id)))
        connack = self._recv_exactly(4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise ConnectionError(f"broker refused the connection: {connack!r}")
        self.acked = 0
        self._next_id = 0
        self._reader = threading.Thread(target=self._count_acks, daemon=True)
        self._reader.start()

    def _recv_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            data += chunk
        return data

    def _count_acks(self) -> None:
        """Only PUBACKs (4 bytes each) come back to a client that never subscribes."""
        received = 0
        while chunk := self.sock.recv(1 << 16):
            received += len(chunk)
            self.acked = received // 4

    def publish_packet(self, topic: bytes, payload: bytes) -> bytes:
        """`topic` is already length-prefixed."""
        if self.qos == 0:
            return _packet(0x30, topic + payload)
        self._next_id = self._next_id % 0xFFFF + 1
        return _packet(0x32, topic + struct.pack("!H", self._next_id) + payload)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def finish(self, messages: int, timeout_s: float = 120.0) -> None:
        """Wait until the broker has taken every message, then disconnect."""
        if self.qos:
            deadline = time.monotonic() + timeout_s
            while self.acked < messages and time.monotonic() < deadline:
                time.sleep(0.001)
            if self.acked < messages:
                raise TimeoutError(f"{messages - self.acked} PUBACKs missing after {timeout_s} s")
        self.sock.sendall(b"\xe0\x00")
        self.sock.close()


def publish(load: Load) -> Published:
    """Publish `load` and return when the broker has all of it."""
    payloads = Payloads(load)
    topics = [_text(name) for name in payloads.topic_names]
    conn = Connection(load.port, f"bench-pub-{os.getpid()}", load.qos)
    per_chunk = BURST_CHUNK if not load.rate else max(1, int(load.rate * CHUNK_S / load.batch))
    per_chunk = min(per_chunk, load.topics)  # a topic at most once per chunk: one stamp per chunk
    cpu0 = time.process_time()
    start = now = time.time()
    sent = 0
    while sent < load.messages:
        if load.rate:
            _sleep_until(start + sent * load.batch / load.rate)
        now = max(time.time(), now + 1e-6)  # strictly increasing from chunk to chunk
        n = min(per_chunk, load.messages - sent)
        chunk = []
        for j in range(sent, sent + n):
            topic = j % load.topics
            chunk.append(conn.publish_packet(topics[topic], payloads.encode(j, topic, now)))
        conn.send(b"".join(chunk))
        sent += n
    conn.finish(sent)
    return Published(sent, sent * load.batch, start, time.time(), time.process_time() - cpu0)


def _sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    for name, f in Load.__dataclass_fields__.items():
        if name != "port":
            p.add_argument(f"--{name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = vars(p.parse_args(argv))
    print(json.dumps(asdict(publish(Load(**args)))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
