"""The MQTT connection, in a process of its own: receives messages and hands them to the daemon.

Why a process: paho's Python costs about 30 us a message, and in the daemon's
process it shared one interpreter lock with parsing and the engine, which made
every part wait for the others (one-reading messages: 0.60 x a bare subscriber's
rate; with the engine removed and its thread idle, still 0.78-0.81). Here paho runs alone, one thread on our
own select loop (a second thread, even one waking each millisecond to flush, cost
17% of the rate). Per message it appends (route, topic, body, mid, qos) to a batch
and ships the batch to the daemon as one frame when the socket has no more to read,
when it holds BATCH_MAX messages or when its oldest waited BATCH_AGE_S.

The body is the payload as it came, or, for a payload of PARSE_FROM_BYTES or more,
what the route's parser made of it (its runs of readings, a long run's columns as
float64 bytes, or the BadInput it raised). A small payload is one or a few readings, and here paho's per-message cost
is the bound, so it goes on as it is; a large one is many readings, and then the
engine thread is the bound, so its per-reading parsing is better done here, on
the other core.

The daemon talks back on the same socket pair: acknowledgements of QoS 1 messages
once their readings are stepped, alerts to publish, unsubscribe, close.
Back-pressure: while more than BACKLOG_BYTES wait for the daemon to read them,
the broker's socket is not read, so the broker keeps the backlog (QoS 1) exactly as
when the daemon's own thread was slow.

The process ignores SIGINT and SIGTERM (a Ctrl-C reaches the whole process group,
systemd signals the whole cgroup): it stops when the daemon says close, after the
last acknowledgements, or when the daemon is gone (its socket reads end of file).

    python -m streamer.receiver FD    (started by `Receiver`, never by hand)
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from itertools import chain
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from . import logs
from .client import connect, make_client, read_password
from .config import LogConfig, MqttConfig
from .errors import BadInput
from .parse import Parser

log = logging.getLogger("streamer.receiver")  # run as __main__ in its process

BATCH_MAX = 512  # messages in one frame
BATCH_AGE_S = 0.002  # under a steady flow, the longest a message waits for its frame
BACKLOG_BYTES = 8 << 20  # frames the daemon has not read yet; beyond it the broker waits
MISC_S = 0.5  # keep-alive and reconnect checks at least this often
CLOSE_S = 5.0  # after close, the longest the relay waits to send the broker what it has
PARSE_FROM_BYTES = 512  # a payload this large (about ten readings or more) is parsed here
PACK_FROM_READINGS = 8  # a parsed run this long travels as float64 bytes, not Python floats
HEADER = struct.Struct("<I")

# A message as it travels: (route index or -1 when no route matched, topic (None when
# not UTF-8), body (the payload, or what the receiver parsed it into), mid, qos).
# A parsed run is a Run's fields; a long one's times and values as float64 bytes (`pack`).
Body = (
    bytes
    | list[tuple[str, list[float], list[tuple[float, ...]]] | tuple[str, bytes, bytes]]
    | BadInput
)
Message = tuple[int, str | None, Body, int, int]


def encode(frame: tuple) -> bytes:
    data = pickle.dumps(frame, pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def decode(buffer: bytearray) -> list[tuple]:
    """The complete frames at the start of `buffer`, removed from it; a partial one stays."""
    frames, at = [], 0
    while len(buffer) - at >= HEADER.size:
        (n,) = HEADER.unpack_from(buffer, at)
        end = at + HEADER.size + n
        if end > len(buffer):
            break
        frames.append(pickle.loads(buffer[at + HEADER.size : end]))
        at = end
    del buffer[:at]
    return frames


class Receiver:
    """The daemon's handle on the receiver process: start it, read its frames, talk back.

    `send` may be called from any thread (acks from the engine thread, alerts, stop
    from the main thread); one lock keeps frames whole.
    """

    def __init__(self, cfg: MqttConfig, parsers: list[Parser], log_cfg: LogConfig) -> None:
        self.cfg = cfg
        self.parsers = parsers  # one per route, in route order; each subscribes its topic filter
        self.log_cfg = log_cfg
        self.password = read_password(cfg)  # now: the environment may change before start()
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._inbox = bytearray()  # bytes from the receiver, not a whole frame yet
        self.closed = False  # its end of the socket is closed: it has exited

    def start(self) -> None:
        ours, theirs = socket.socketpair()
        fd = theirs.fileno()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamer.receiver", str(fd)], pass_fds=(fd,)
        )
        theirs.close()
        self.sock = ours
        self.send(
            "start",
            dataclasses.asdict(self.cfg),
            self.password,
            self.parsers,
            self.log_cfg.level,
            self.log_cfg.json,
        )

    def receive(self, timeout: float) -> list[tuple] | None:
        """The whole frames that came, waiting up to `timeout` s for bytes; None once, when
        the receiver has just exited (then, like before it started, [] after `timeout`).
        One read at a time, so a caller between waves reads a bounded amount."""
        if self.sock is None or self.closed:
            time.sleep(timeout)
            return []
        if not select.select([self.sock], [], [], timeout)[0]:
            return []
        try:
            data = self.sock.recv(1 << 20)
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return None
        self._inbox += data
        return decode(self._inbox)

    def send(self, kind: str, *args: Any) -> bool:
        """False when the receiver is not running (`receive` notices its exit)."""
        if self.sock is None:
            return False
        data = encode((kind, *args))
        with self._lock:
            try:
                self.sock.sendall(data)
            except OSError:
                return False
        return True

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        """For `AlertPublisher`: published on the receiver's connection."""
        self.send("publish", topic, payload, qos)

    def exited(self) -> bool:
        """True once a started receiver is gone: nothing more can arrive."""
        return self.proc is not None and (self.closed or self.proc.poll() is not None)

    def close(self, timeout_s: float = CLOSE_S + 1.0) -> None:
        """Disconnect cleanly after every acknowledgement sent so far; kill if it hangs."""
        if self.proc is None:
            return
        self.send("close")
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.error("the MQTT receiver did not stop within %.0f s; killed", timeout_s)
            self.proc.kill()
            self.proc.wait()
        self.sock.close()


class Relay:
    """The receiver process: one paho client, one thread, one select loop."""

    def __init__(
        self, cfg: MqttConfig, password: str | None, parsers: list[Parser], parent: socket.socket
    ) -> None:
        self.cfg = cfg
        self.parsers = parsers
        self.filters = [p.template.topic_filter for p in parsers]
        self.parent = parent
        parent.setblocking(False)
        self.batch: list[Message] = []
        self.batch_since = 0.0
        self.client = make_client(cfg, manual_ack=cfg.qos > 0, password=password)
        connect(self.client, cfg)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        for index, topic_filter in enumerate(self.filters):
            self.client.message_callback_add(topic_filter, self._forwarder(index))
        self.client.on_message = self._forwarder(-1)
        self.out = bytearray()  # frames for the daemon, not sent yet
        self.inbox = bytearray()  # bytes from the daemon, not a whole frame yet
        self.stopping = False  # unsubscribed: the daemon is draining
        self.closing = 0.0  # when the daemon said close
        self.gone = False  # the daemon's end of the socket is closed
        self.delay = cfg.reconnect_min_s
        self.retry_at = 0.0
        self.misc_at = 0.0

    # -- messages to the daemon

    def _forwarder(self, route: int):
        batch = self.batch
        parser = self.parsers[route] if route >= 0 else None

        def on_message(client, userdata, msg: mqtt.MQTTMessage) -> None:
            if not batch:
                self.batch_since = time.monotonic()
            try:
                topic = msg.topic
            except UnicodeDecodeError:
                topic = None
            body: Body = msg.payload
            if len(body) >= PARSE_FROM_BYTES and parser is not None and topic is not None:
                body = _parse(parser, topic, body)
            batch.append((route, topic, body, msg.mid, msg.qos))
            if len(batch) >= BATCH_MAX:
                self._flush()

        return on_message

    def _flush(self) -> None:
        self.out += encode(("messages", self.batch))
        self.batch.clear()

    def _tell(self, kind: str, *args: Any) -> None:
        if self.batch:  # keep the order: messages received before this event go first
            self._flush()
        self.out += encode((kind, *args))

    # -- paho's callbacks (run inside loop_read, on our one thread)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        cfg = self.cfg
        if reason_code.is_failure:
            log.error("broker %s:%s refused the connection: %s", cfg.host, cfg.port, reason_code)
            return
        self.delay = cfg.reconnect_min_s
        session = bool(getattr(flags, "session_present", False))
        log.info(
            "connected to %s:%s (%s session)", cfg.host, cfg.port, "resumed" if session else "new"
        )
        if not self.stopping:
            client.subscribe([(f, cfg.qos) for f in self.filters])
        self._tell("connected", session)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            log.error("broker refused subscriptions: %s", ", ".join(refused))
        else:
            log.info("subscribed to %s", ", ".join(self.filters))
        self._tell("subscribed", refused)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._back_off()
        if not (self.stopping or self.closing):
            log.warning("disconnected from broker (%s); reconnecting with backoff", reason_code)
        self._tell("disconnected", str(reason_code))

    # -- the loop

    def run(self) -> None:
        while not self._finished():
            sock = self.client.socket()
            if sock is None and not self.closing:
                self._reconnect()
                sock = self.client.socket()
            readable = [self.parent]
            if sock is not None and len(self.out) < BACKLOG_BYTES:
                readable.append(sock)
            writable = [self.parent] if self.out else []
            if sock is not None and self.client.want_write():
                writable.append(sock)
            buffered = sock is not None and _tls_pending(sock)
            timeout = 0.0 if self.batch or buffered else MISC_S
            r, w, _ = select.select(readable, writable, [], timeout)
            if (sock is not None and sock in r) or buffered:
                self.client.loop_read()
            if self.parent in r:
                self._commands()
            if sock is not None and sock in w:
                self.client.loop_write()
            if self.parent in w:
                self._send()
            now = time.monotonic()
            if self.batch and (not r or now - self.batch_since >= BATCH_AGE_S):
                self._flush()  # the socket had nothing more, or the oldest waited long enough
            if now >= self.misc_at:
                self.client.loop_misc()
                self.misc_at = now + MISC_S

    def _finished(self) -> bool:
        if self.gone:
            return True
        if not self.closing:
            return False
        unsent = self.client.socket() is not None and self.client.want_write()
        return not unsent or time.monotonic() - self.closing > CLOSE_S

    def _reconnect(self) -> None:
        now = time.monotonic()
        if now < self.retry_at:
            return
        try:
            self.client.reconnect()
        except (OSError, ValueError) as e:  # refused, unreachable, TLS handshake, bad host
            log.warning(
                "cannot reach broker %s:%s (%s); retrying in %.1f s",
                self.cfg.host,
                self.cfg.port,
                e,
                self.delay,
            )
            self._back_off()

    def _back_off(self) -> None:
        """The next connection attempt waits `delay`, which doubles up to reconnect_max_s
        (and is back at reconnect_min_s after a successful connection)."""
        self.retry_at = time.monotonic() + self.delay
        self.delay = min(self.delay * 2, self.cfg.reconnect_max_s)

    def _send(self) -> None:
        try:
            n = self.parent.send(self.out)
        except BlockingIOError:
            return
        except OSError:
            self.gone = True
            return
        del self.out[:n]

    def _commands(self) -> None:
        try:
            data = self.parent.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.gone = True
            return
        self.inbox += data
        self.dispatch(decode(self.inbox))

    def dispatch(self, commands: list[tuple]) -> None:
        for kind, *args in commands:
            getattr(self, f"_do_{kind}")(*args)

    # -- the daemon's commands

    def _do_ack(self, acks: list[tuple[int, int]]) -> None:
        ack = self.client.ack
        for mid, qos in acks:
            ack(mid, qos)

    def _do_publish(self, topic: str, payload: bytes, qos: int) -> None:
        self.client.publish(topic, payload, qos=qos)

    def _do_unsubscribe(self) -> None:
        self.stopping = True
        if self.client.is_connected():
            self.client.unsubscribe(self.filters)

    def _do_close(self) -> None:
        """The daemon reads nothing more: what it did not take stays unacknowledged, and the
        broker delivers it again. Only the acknowledgements before this are still due."""
        self.closing = time.monotonic()
        self.batch.clear()
        self.out.clear()
        if self.client.is_connected():
            self.client.disconnect()


def _parse(parser: Parser, topic: str, payload: bytes) -> Body:
    """The payload's runs as plain tuples (`pack`), or the BadInput it raised; the payload
    itself if parsing failed unexpectedly (the daemon parses it again, and counts and logs
    the failure).

    Plain tuples, because a NamedTuple is pickled through its class: 6 times the cost
    (80 vs 14 us to pickle 100 one-reading runs of a SenML pack).
    """
    try:
        return [pack(*run) for run in parser.parse(topic, payload, time.time())]
    except BadInput as e:
        return e
    except Exception:
        return payload


def pack(stream: str, ts: list[float], values: list[tuple[float, ...]]) -> tuple:
    """A run as it travels. A long one's times and values go as float64 bytes: the engine
    thread unpickles two objects instead of one per time, value and reading (an array of
    100 readings: 12 -> 0.6 us), and steps them as numpy views (`unpack`)."""
    n = len(ts)
    if n < PACK_FROM_READINGS:
        return (stream, ts, values)
    flat = np.fromiter(chain.from_iterable(values), np.float64, n * len(values[0]))
    return (stream, np.fromiter(ts, np.float64, n).tobytes(), flat.tobytes())


def unpack(ts: bytes, values: bytes) -> tuple[np.ndarray, np.ndarray]:
    """A packed run's times [n] and values [n, channels], read-only views of the bytes."""
    times = np.frombuffer(ts)
    return times, np.frombuffer(values).reshape(len(times), -1)


def _tls_pending(sock: Any) -> bool:
    """Bytes TLS already decrypted: select() cannot see them, so they are read without waiting."""
    pending = getattr(sock, "pending", None)
    return pending is not None and pending() > 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    parent = socket.socket(fileno=int(argv[0]))
    inbox = bytearray()
    while not (frames := decode(inbox)):
        data = parent.recv(1 << 16)
        if not data:
            return 1
        inbox += data
    (kind, mqtt_cfg, password, parsers, level, as_json), *rest = frames
    if kind != "start":
        return 1
    logs.setup(level, as_json)
    relay = Relay(MqttConfig(**mqtt_cfg), password, parsers, parent)
    relay.inbox += inbox
    relay.dispatch(rest)
    relay.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
