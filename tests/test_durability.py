"""Durability: snapshots, restarts, hot model reloads, SIGKILL and broker restarts without losing a reading."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import orjson
import paho.mqtt.client as mqtt
import pytest
from conftest import Client, daemon_config, metric_value, scrape, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from streamer import snapshot
from streamer.calibration import CalibrationConfig
from streamer.engine import StreamEngine
from streamer.errors import ModelError, SnapshotError
from streamer.model import StepModel, file_sha256

T0 = 1_700_000_000.0


def readings(n_streams: int, steps: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(steps)[:, None]
    values = (
        5 * np.arange(n_streams)
        + np.sin(t / 7.0 + np.arange(n_streams))
        + 0.1 * rng.standard_normal((steps, n_streams))
    )
    return [f"s{i}" for i in range(n_streams)], values


def run(
    engine: StreamEngine, ids: list[str], values: np.ndarray, start: int, stop: int
) -> np.ndarray:
    scores = []
    for t in range(start, stop):
        scores.append(engine.step(ids, [T0 + 60 * t] * len(ids), values[t][:, None]).score)
    return np.array(scores)


def test_scores_after_a_restart_continue_as_if_there_had_been_none(model_path, tmp_path):
    ids, values = readings(5, 300)
    model = StepModel(model_path)
    straight = StreamEngine(model)
    expected = run(straight, ids, values, 0, 300)

    first = StreamEngine(model)
    before = run(first, ids, values, 0, 150)
    snapshot.save(tmp_path / "s.bin", [snapshot.capture("r", first.store, model.sha256)])
    second = StreamEngine(model)
    (state,) = snapshot.load(tmp_path / "s.bin")
    assert snapshot.restore(state, second.store) == 5
    after = run(second, ids, values, 150, 300)
    assert np.array_equal(np.r_[before, after], expected)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-10], "checksum"),
        (lambda b: b[:20], "truncated"),
        (lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:], "checksum"),
        (lambda b: b"NOTASNAP" + b[8:], "magic"),
        (lambda b: b[:8] + (99).to_bytes(4, "little") + b[12:], "version 99"),
        (lambda b: b[:8] + (1).to_bytes(4, "little") + b[12:], "version 1"),
        (lambda b: b[:8] + (2).to_bytes(4, "little") + b[12:], "version 2"),
        (lambda b: b[:8] + (3).to_bytes(4, "little") + b[12:], "version 3"),
    ],
)
def test_damaged_snapshots_are_refused_with_a_reason(model_path, tmp_path, damage, message):
    model = StepModel(model_path)
    engine = StreamEngine(model)
    ids, values = readings(3, 20)
    run(engine, ids, values, 0, 20)
    blob = snapshot.encode([snapshot.capture("r", engine.store, model.sha256)])
    with pytest.raises(SnapshotError, match=message):
        snapshot.decode(damage(blob))


@pytest.mark.parametrize(
    ("prefix", "field"),
    [
        ("env.", r"env\.high"),  # version 1's layout: restoring it would lose the value ranges
        ("seas.", r"seas\.table"),  # version 2's: it would lose the time-of-day profiles
        ("cal.recur", r"cal\.recur"),  # version 3's: it would forget the recurring surprises
    ],
)
def test_snapshot_of_an_older_layout_is_refused(model_path, prefix, field):
    model = StepModel(model_path)
    engine = StreamEngine(model)
    ids, values = readings(3, 20)
    run(engine, ids, values, 0, 20)
    state = snapshot.capture("r", engine.store, model.sha256)
    state.arrays = {k: v for k, v in state.arrays.items() if not k.startswith(prefix)}
    (old,) = snapshot.decode(snapshot.encode([state]))
    with pytest.raises(SnapshotError, match=field):
        snapshot.restore(old, StreamEngine(model).store)


def test_snapshot_with_another_number_of_harmonics_is_refused(model_path):
    model = StepModel(model_path)
    engine = StreamEngine(model)
    ids, values = readings(3, 20)
    run(engine, ids, values, 0, 20)
    (state,) = snapshot.decode(snapshot.encode([snapshot.capture("r", engine.store, model.sha256)]))
    other = StreamEngine(model, calibration=CalibrationConfig(seasonal_harmonics=2))
    with pytest.raises(SnapshotError, match=r"seas\.table.*shape"):
        snapshot.restore(state, other.store)


def small_model(path: Path, hidden: int) -> Path:
    """A real exported model of another size (untrained: only its shape matters here)."""
    from streamer.model import ModelInfo
    from training.export import export_onnx
    from training.model import ModelConfig, StepRNN

    export_onnx(
        StepRNN(ModelConfig(cell="gru", hidden_size=hidden)),
        ModelInfo("gru", 1, hidden, ["value", "log_gap"], ["value"]),
        path,
    )
    return path


def test_snapshot_of_another_state_size_is_refused(model_path, tmp_path):
    other = StepModel(small_model(tmp_path / "h8.onnx", 8))
    engine = StreamEngine(other)
    ids, values = readings(2, 10)
    run(engine, ids, values, 0, 10)
    (state,) = snapshot.decode(snapshot.encode([snapshot.capture("r", engine.store, other.sha256)]))
    with pytest.raises(SnapshotError, match="state size"):
        snapshot.restore(state, StreamEngine(StepModel(model_path)).store)


def publish_json(client: Client, stream: str, values, start: int = 0) -> None:
    for t, v in enumerate(values, start):
        client.client.publish(
            f"sensors/{stream}", orjson.dumps({"value": float(v), "ts": T0 + 60 * t}), qos=1
        )


def test_daemon_restores_its_snapshot_and_a_corrupt_one_means_a_cold_start(
    broker, start_daemon, mqtt_client, tmp_path
):
    state = tmp_path / "state"
    cfg = daemon_config(broker, STREAMER_STATE_DIR=str(state))
    d = start_daemon(cfg)
    publish_json(mqtt_client, "a", range(50))
    wait_until(
        lambda: d.engines[0].counts["scored"] + d.engines[0].counts["warmup"] == 50,
        what="50 readings",
    )
    d.shutdown()
    assert (state / "snapshot.bin").exists()

    d2 = start_daemon(cfg)
    assert d2.ops.restore == "restored"
    assert d2.engines[0].store.seen[d2.engines[0].store.index["a"]] == 50
    d2.shutdown()

    blob = bytearray((state / "snapshot.bin").read_bytes())
    blob[-5] ^= 0xFF
    (state / "snapshot.bin").write_bytes(bytes(blob))
    d3 = start_daemon(cfg)
    assert d3.ops.restore == "refused" and len(d3.engines[0].store) == 0
    assert metric_value(scrape(d3.metrics_port), "streamer_snapshot_restore", result="refused") == 1


def test_hot_reload_keeps_state_resets_on_new_shape_and_refuses_bad_files(
    broker, start_daemon, mqtt_client, model_path, tmp_path
):
    served = tmp_path / "model.onnx"
    shutil.copy(model_path, served)
    toml = tmp_path / "s.toml"
    toml.write_text(f'[[routes]]\nname = "sensors"\nmodel = "{served}"\n')
    from streamer import config

    cfg = config.load(
        toml,
        environ={
            "STREAMER_MQTT_PORT": str(broker.port),
            "STREAMER_METRICS_PORT": "0",
            "STREAMER_MQTT_CLIENT_ID": "reload",
        },
    )
    d = start_daemon(cfg)
    publish_json(mqtt_client, "a", range(20))
    wait_until(
        lambda: (
            "a" in d.engines[0].store.index
            and d.engines[0].store.seen[d.engines[0].store.index["a"]] == 20
        )
    )

    d.reload_models()  # same file: same shape
    assert d.ops.reloads["kept_state"] == 1 and "a" in d.engines[0].store.index

    served.write_bytes(b"this is not an onnx file")
    d.reload_models()
    assert d.ops.reloads["failed"] == 1
    assert d.engines[0].model.sha256 == file_sha256(model_path)  # the old model still serves
    publish_json(mqtt_client, "a", [20.0], start=20)
    wait_until(
        lambda: d.engines[0].store.seen[d.engines[0].store.index["a"]] == 21,
        what="scored after a bad reload",
    )

    small_model(served, 8)
    wait_until(
        lambda: d.ops.reloads["reset_state"] == 1, what="file change noticed"
    )  # the watcher, no signal
    assert d.engines[0].model.state_size == 8 and len(d.engines[0].store) == 0


def test_a_pinned_model_with_another_hash_is_refused(broker, tmp_path, model_path):
    from streamer import config
    from streamer.app import Daemon

    toml = tmp_path / "s.toml"
    toml.write_text(f'[[routes]]\nmodel = "{model_path}"\nmodel_sha256 = "{"0" * 64}"\n')
    with pytest.raises(ModelError, match="sha256"):
        Daemon(config.load(toml, environ={"STREAMER_MQTT_PORT": str(broker.port)}))


def start_process(broker, tmp_path: Path, jsonl: str = "scores.jsonl") -> subprocess.Popen:
    env = {
        **os.environ,
        "STREAMER_MQTT_PORT": str(broker.port),
        "STREAMER_MQTT_CLIENT_ID": "durable",
        "STREAMER_METRICS_ENABLED": "false",
        "STREAMER_STATE_DIR": str(tmp_path / "state"),
        "STREAMER_STATE_SNAPSHOT_INTERVAL_S": "1",
        "STREAMER_BATCH_MAX_DELAY_MS": "300",  # readings wait in the queue: a kill catches some
        "STREAMER_OUTPUT_JSONL": str(tmp_path / jsonl),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer", "run"], env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 20
    line = ""
    while "subscribed to" not in line and time.monotonic() < deadline:
        line = proc.stderr.readline()
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
    return proc


def wait_all_scored(sent: set, tmp_path: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (missing := sent - scored(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not missing, f"{len(missing)} readings never scored, e.g. {sorted(missing)[:5]}"


def scored(tmp_path: Path) -> set[tuple[str, float]]:
    path = tmp_path / "scores.jsonl"
    lines = path.read_bytes().splitlines() if path.exists() else []
    return {(r["stream"], r["ts"]) for r in map(orjson.loads, lines)}


def paced_publisher(
    port: int, streams: int, steps: int, rate_hz: float
) -> tuple[threading.Thread, set]:
    """Publishes `steps` readings per stream at `rate_hz` steps/s with QoS 1 and its own persistent session.

    Each step waits for its PUBACKs before the next one goes out, as a gateway that keeps
    each stream in order must: after a reconnect paho can send a new message before it
    resends the unacknowledged ones, and the daemon rightly drops the older reading of a
    stream that arrives second (out of order; it made this test fail now and then).
    """
    sent: set[tuple[str, float]] = set()
    acked: set[int] = set()
    puback = threading.Condition()

    def on_publish(client, userdata, mid, reason, properties) -> None:
        with puback:
            acked.add(mid)
            puback.notify_all()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="publisher", protocol=mqtt.MQTTv5)
    client.max_queued_messages_set(0)
    client.reconnect_delay_set(0.1, 0.5)  # paho takes floats here despite the int hints
    client.on_publish = on_publish
    client.connect("127.0.0.1", port, clean_start=False)
    client.loop_start()

    def go() -> None:
        for t in range(steps):
            mids = set()
            for s in range(streams):
                stream, ts = f"p{s}", T0 + 60 * t
                payload = orjson.dumps({"value": float(np.sin(t / 5 + s)), "ts": ts})
                mids.add(client.publish(f"sensors/{stream}", payload, qos=1).mid)
                sent.add((stream, ts))
            with puback:
                assert puback.wait_for(partial(mids.issubset, acked), timeout=30), (
                    "no PUBACK in 30 s"
                )
            time.sleep(1 / rate_hz)
        client.disconnect()
        client.loop_stop()

    thread = threading.Thread(target=go)
    thread.start()
    return thread, sent


def test_sigkill_mid_stream_loses_no_reading(broker, tmp_path):
    proc = start_process(broker, tmp_path)
    publisher, sent = paced_publisher(broker.port, streams=5, steps=300, rate_hz=100)
    time.sleep(1.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # readings keep arriving at the broker while the daemon is dead
    proc = start_process(broker, tmp_path)
    try:
        publisher.join(60)
        wait_until(
            lambda: sent <= scored(tmp_path), timeout_s=30, what="every published reading scored"
        )
    finally:
        proc.terminate()
        proc.wait(20)
    assert len(sent) == 1500 and not sent - scored(tmp_path)


def test_an_audit_trail_that_cannot_be_written_stops_the_daemon_and_loses_nothing(broker, tmp_path):
    sent = {(f"w{i}", T0 + 60 * t) for t in range(20) for i in range(3)}
    proc = start_process(broker, tmp_path, jsonl="/dev/full")  # every write: no space left
    c = Client(broker.port)
    try:
        for stream, ts in sorted(sent, key=lambda r: r[1]):
            c.publish(f"sensors/{stream}", orjson.dumps({"value": ts % 7, "ts": ts}))
        assert proc.wait(20) == 1
    finally:
        c.close()
        if proc.poll() is None:
            proc.kill()
    proc = start_process(broker, tmp_path)  # the disk has room again
    try:
        wait_until(lambda: sent <= scored(tmp_path), what="every reading scored after the restart")
    finally:
        proc.terminate()
        proc.wait(20)


def test_broker_restart_under_load_loses_no_reading(broker, start_daemon, tmp_path):
    d = start_daemon(
        daemon_config(
            broker,
            STREAMER_MQTT_RECONNECT_MIN_S="0.2",
            STREAMER_MQTT_RECONNECT_MAX_S="1",
            STREAMER_OUTPUT_JSONL=str(tmp_path / "scores.jsonl"),
        )
    )
    publisher, sent = paced_publisher(broker.port, streams=5, steps=300, rate_hz=100)
    time.sleep(1.0)
    broker.restart(down_s=0.5)
    publisher.join(60)
    wait_until(
        lambda: sent <= scored(tmp_path), timeout_s=30, what="every published reading scored"
    )
    assert d.ingest.connects >= 2
    assert len(sent) == 1500
