"""Real services for the tests: a Mosquitto per test on a free loopback port, a step model, a daemon."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from streamer import config
from streamer.app import Daemon
from streamer.broker import Mosquitto
from streamer.model import DEFAULT_MODEL, ModelInfo


def wait_until(
    predicate: Callable[[], object], timeout_s: float = 20.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(workdir=tmp_path / "mosquitto") as b:
        yield b


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The shipped default model: the tests exercise what users run."""
    assert DEFAULT_MODEL.is_file(), (
        f"the default model {DEFAULT_MODEL} is missing: run `streamer train-default`"
    )
    return DEFAULT_MODEL


def daemon_config(broker: Mosquitto, **overrides: str) -> config.Config:
    """A daemon config for `broker`, metrics on a free port; overrides as STREAMER_* env names."""
    env = {
        "STREAMER_MQTT_PORT": str(broker.port),
        "STREAMER_MQTT_CLIENT_ID": "streamer-test",
        "STREAMER_METRICS_PORT": "0",
        "STREAMER_BATCH_MAX_DELAY_MS": "2",
        **overrides,
    }
    return config.load(environ=env)


@pytest.fixture(scope="session")
def xyz_model(tmp_path_factory) -> Path:
    """A three-channel step model that predicts "no change, unit variance": built as a plain
    ONNX graph because only the wiring is under test, and exporting a torch model is slow."""
    import onnx
    from onnx import TensorProto, helper

    info = ModelInfo("gru", 1, 2, ["x", "y", "z", "log_gap"], ["x", "y", "z"], warmup=20)
    floats = TensorProto.FLOAT
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["lo"], value_ints=[0]),
            helper.make_node("Constant", [], ["hi"], value_ints=[3]),
            helper.make_node("Constant", [], ["axis"], value_ints=[1]),
            helper.make_node("Slice", ["x", "lo", "hi", "axis"], ["mean"]),
            helper.make_node("Sub", ["mean", "mean"], ["log_var"]),
            helper.make_node("Identity", ["h"], ["h_next"]),
        ],
        "persistence",
        [
            helper.make_tensor_value_info("x", floats, ["B", 4]),
            helper.make_tensor_value_info("h", floats, ["B", 2]),
        ],
        [
            helper.make_tensor_value_info(n, floats, ["B", w])
            for n, w in (("mean", 3), ("log_var", 3), ("h_next", 2))
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    helper.set_model_props(proto, info.to_metadata())
    path = tmp_path_factory.mktemp("xyz") / "xyz.onnx"
    onnx.save_model(proto, str(path))
    return path


@pytest.fixture
def start_daemon() -> Iterator[Callable[[config.Config], Daemon]]:
    started: list[Daemon] = []

    def start(cfg: config.Config) -> Daemon:
        d = Daemon(cfg)
        d.start()
        started.append(d)
        wait_until(d.ingest.subscribed.is_set, what="daemon subscribed")
        return d

    yield start
    for d in started:
        d.shutdown()


class Client:
    """A plain paho client for tests: publish, and collect what arrives on subscribed filters."""

    def __init__(self, port: int, client_id: str = "") -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.received: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.received.append(msg)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, qos)
        assert done.wait(5), "no SUBACK"

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mqtt_client(broker: Mosquitto) -> Iterator[Client]:
    c = Client(broker.port)
    yield c
    c.close()


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read().decode()


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of `name` in Prometheus text format."""
    out = []
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
        out.append((labels, float(value)))
    return out


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample of `name` whose labels are exactly `labels`, or None."""
    return next((v for lv, v in samples(text, name) if lv == labels), None)
