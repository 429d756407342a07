"""The daemon end to end against a real Mosquitto: formats, metrics, alerts, isolation, faults, shutdown."""

import dataclasses
import os
import signal
import subprocess
import sys
import time

import numpy as np
import orjson
import pytest
from conftest import Client, daemon_config, metric_value, samples, scrape, wait_until

from streamer.config import RouteConfig
from streamer.engine import StreamEngine
from streamer.model import StepModel
from streamer.receiver import PARSE_FROM_BYTES

T0 = 1_700_000_000.0


def taken(daemon) -> int:
    c = daemon.engines[0].counts
    return c["scored"] + c["warmup"]


def series(n: int, phase: float, spike_at: int | None = None) -> np.ndarray:
    v = (
        20
        + np.sin(np.arange(n) / 6.0 + phase)
        + 0.01 * np.random.default_rng(int(phase * 10)).standard_normal(n)
    )
    if spike_at is not None:
        v[spike_at] += 40
    return v


def test_every_payload_format_is_scored_and_exported(broker, start_daemon, mqtt_client):
    d = start_daemon(daemon_config(broker))
    c = mqtt_client
    c.publish("sensors/num", b"21.5")
    c.publish("sensors/obj", orjson.dumps({"value": 1.0, "ts": T0}))
    c.publish("sensors/obj", orjson.dumps({"value": 2.0, "ts": (T0 + 1) * 1000}))  # epoch ms
    c.publish(
        "sensors/obj", orjson.dumps({"value": 3.0, "ts": "2023-11-14T22:13:22Z"})
    )  # T0 + 2, ISO
    c.publish("sensors/arr", orjson.dumps([{"value": i, "ts": T0 + i} for i in range(5)]))
    senml = [{"bn": "dev1/", "bt": T0, "n": "temp", "v": 20.0}, {"n": "temp", "t": 1, "v": 20.5}]
    c.publish("sensors/pack", orjson.dumps(senml))
    wait_until(lambda: taken(d) == 1 + 3 + 5 + 2, what="11 readings taken")
    store = d.engines[0].store
    assert set(store.index) == {"num", "obj", "arr", "pack/dev1/temp"}
    assert store.last_ts[store.index["obj"]] == T0 + 2
    text = scrape(d.metrics_port)
    assert metric_value(text, "streamer_stream_readings_total", route="sensors", stream="arr") == 5
    assert (
        metric_value(
            text, "streamer_stream_value", route="sensors", stream="pack/dev1/temp", channel="value"
        )
        == 20.5
    )
    assert metric_value(text, "streamer_messages_total", route="sensors") == 6
    assert scrape(d.metrics_port, "/readyz").strip() == "ready"
    assert scrape(d.metrics_port, "/healthz").strip() == "ok"


def test_bad_input_is_counted_by_reason_and_does_not_stop_anything(
    broker, start_daemon, mqtt_client
):
    d = start_daemon(daemon_config(broker))
    c = mqtt_client
    for payload in (
        b"",
        b"\xff\xfe",
        b"{not json",
        b'{"value": "abc"}',
        b'{"value": true}',
        b"x" * 70000,
    ):
        c.publish("sensors/bad", payload)
    c.publish("sensors/bad", b"NaN")
    c.publish("sensors/good", b"1.0")
    wait_until(lambda: taken(d) == 1, what="the good reading")
    text = scrape(d.metrics_port)
    errors = {labels["reason"]: v for labels, v in samples(text, "streamer_parse_errors_total")}
    assert sum(errors.values()) == 6 and "oversized" in errors
    assert (
        metric_value(text, "streamer_readings_dropped_total", reason="not_finite", route="sensors")
        == 1
    )
    assert d.worker.is_alive()


def test_a_multichannel_route_names_the_channel_that_surprised(
    broker, start_daemon, mqtt_client, xyz_model
):
    route = RouteConfig(
        name="pumps", topic="plant/{pump}", value_fields=("x", "y", "z"), model=str(xyz_model)
    )
    d = start_daemon(dataclasses.replace(daemon_config(broker), routes=(route,)))
    t = np.arange(60)
    x, y, z = np.sin(t / 5), np.cos(t / 7), 0.5 * np.sin(t / 3)
    y[-1] += 30  # the last reading: y jumps
    for i, xyz in enumerate(zip(x.tolist(), y.tolist(), z.tolist(), strict=True)):
        body = {**dict(zip("xyz", xyz, strict=True)), "ts": T0 + i}
        mqtt_client.client.publish("plant/p1", orjson.dumps(body), qos=1)
    wait_until(lambda: taken(d) == len(t), what="every reading")
    text = scrape(d.metrics_port)
    top = {lab["channel"]: v for lab, v in samples(text, "streamer_stream_top_channel")}
    assert top == {"y": 1.0}
    value = metric_value(text, "streamer_stream_value", route="pumps", stream="p1", channel="y")
    assert value == pytest.approx(y[-1], rel=1e-6)  # float32 in the store


def test_a_message_bigger_than_the_queue_is_refused_not_waited_for(
    broker, start_daemon, mqtt_client
):
    d = start_daemon(
        daemon_config(broker, STREAMER_BATCH_MAX_SIZE="4", STREAMER_BATCH_QUEUE_SIZE="8")
    )
    pack = [{"value": float(i), "ts": T0 + i} for i in range(9)]
    mqtt_client.client.publish("sensors/big", orjson.dumps(pack), qos=1)
    mqtt_client.client.publish("sensors/small", orjson.dumps(pack[:8]), qos=1)
    wait_until(lambda: taken(d) == 8, what="the message that fits")
    errors = dict(d.ingest.errors)
    assert errors == {("sensors", "too_many_readings"): 1}


def publish_fleet(client: Client, streams: dict[str, np.ndarray], junk_every: int = 0) -> int:
    """Publish each stream's series in time order, interleaved; return the readings published."""
    n = len(next(iter(streams.values())))
    for t in range(n):
        for sid, values in streams.items():
            client.client.publish(
                f"sensors/{sid}",
                orjson.dumps({"value": float(values[t]), "ts": T0 + 60 * t}),
                qos=1,
            )
            if junk_every and t % junk_every == 0:
                client.client.publish(f"sensors/{sid}", b'{"value": "garbage"}', qos=1)
                client.client.publish(
                    "sensors/junk", orjson.dumps({"value": float(t), "ts": T0 - t}), qos=1
                )
    return n * len(streams)


def assert_state_as_replayed(
    d, streams: dict[str, np.ndarray], model_path, fields: tuple[str, ...]
) -> None:
    """The daemon's per-stream `fields` equal those of a direct engine replay of `streams`
    (readings 60 s apart from T0, all streams in every wave)."""
    replay = StreamEngine(StepModel(model_path))
    for t in range(len(next(iter(streams.values())))):
        replay.step(list(streams), [T0 + 60 * t] * len(streams), [[v[t]] for v in streams.values()])
    live = d.engines[0].store
    with d.pipeline.lock:
        rows = live.rows_of(list(streams))
        for field in fields:
            assert np.array_equal(
                getattr(live, field)[rows],
                getattr(replay.store, field)[replay.store.rows_of(list(streams))],
            ), field


def test_mqtt_path_equals_direct_engine_replay(broker, start_daemon, mqtt_client, model_path):
    streams = {f"m{i}": series(150, i) for i in range(3)}
    d = start_daemon(daemon_config(broker))
    n = publish_fleet(mqtt_client, streams, junk_every=5)
    wait_until(lambda: taken(d) >= n, what="all readings")
    assert_state_as_replayed(d, streams, model_path, ("score", "raw", "h", "expected", "anomalies"))


def test_arrays_parsed_and_packed_in_the_receiver_score_as_a_direct_replay(
    broker, start_daemon, mqtt_client, model_path
):
    """Arrays of 25 readings (over PARSE_FROM_BYTES) are parsed in the receiver process and
    travel packed (float64 bytes): the engine must end exactly where a replay ends."""
    streams = {f"a{i}": series(150, i) for i in range(3)}
    d = start_daemon(daemon_config(broker))
    for start in range(0, 150, 25):
        for sid, values in streams.items():
            pack = [
                {"value": float(values[t]), "ts": T0 + 60 * t} for t in range(start, start + 25)
            ]
            payload = orjson.dumps(pack)
            assert len(payload) >= PARSE_FROM_BYTES
            mqtt_client.client.publish(f"sensors/{sid}", payload, qos=1)
    wait_until(lambda: taken(d) >= 450, what="all readings")
    fields = ("score", "raw", "h", "expected", "value", "anomalies")
    assert_state_as_replayed(d, streams, model_path, fields)


def test_anomaly_enter_and_leave_events_on_mqtt(broker, start_daemon, mqtt_client):
    d = start_daemon(daemon_config(broker, STREAMER_ENGINE_WARMUP="30"))
    mqtt_client.subscribe("streamer/alerts/#")
    publish_fleet(mqtt_client, {"hot": series(200, 0.0, spike_at=150)})
    wait_until(lambda: taken(d) >= 200, what="all readings")
    wait_until(lambda: len(mqtt_client.received) >= 2, what="enter and leave events")
    events = [orjson.loads(m.payload) for m in mqtt_client.received]
    enter = next(e for e in events if e["event"] == "enter")
    assert enter["stream"] == "hot" and enter["time"] == T0 + 60 * 150
    assert enter["observed"][0] > enter["expected"][0] + enter["band"][0]
    assert any(e["event"] == "leave" for e in events)
    assert mqtt_client.received[0].topic == "streamer/alerts/hot"


def test_reconnects_and_resubscribes_after_broker_restart(broker, start_daemon, mqtt_client):
    d = start_daemon(
        daemon_config(
            broker, STREAMER_MQTT_RECONNECT_MIN_S="0.2", STREAMER_MQTT_RECONNECT_MAX_S="1"
        )
    )
    mqtt_client.publish("sensors/a", b"1")
    wait_until(lambda: taken(d) == 1, what="first reading")
    broker.restart()
    wait_until(lambda: d.ingest.connects >= 2, what="reconnect")
    time.sleep(0.3)
    c2 = Client(broker.port)
    c2.publish("sensors/a", b"2")
    wait_until(lambda: taken(d) == 2, what="reading after the restart")
    c2.close()
    assert metric_value(scrape(d.metrics_port), "streamer_mqtt_reconnects_total") >= 1


def test_shutdown_drains_the_queue(broker, start_daemon, mqtt_client):
    d = start_daemon(daemon_config(broker, STREAMER_BATCH_MAX_DELAY_MS="50"))
    n = publish_fleet(mqtt_client, {f"q{i}": series(100, i) for i in range(5)})
    wait_until(lambda: d.ingest.messages["sensors"] >= n, what="all messages received")
    d.shutdown()
    assert taken(d) == n


def test_sigterm_exits_zero(broker, tmp_path):
    env = {**os.environ, "STREAMER_MQTT_PORT": str(broker.port), "STREAMER_METRICS_PORT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer", "run"], env=env, stderr=subprocess.PIPE, text=True
    )
    c = Client(broker.port)
    try:
        deadline = time.monotonic() + 20
        log = ""
        while "subscribed to" not in log and time.monotonic() < deadline:
            log += proc.stderr.readline()
        c.publish("sensors/x", b"1.0")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        c.close()
        if proc.poll() is None:
            proc.kill()


def test_demo_runs_broker_fleet_daemon_and_live_view():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamer",
            "demo",
            "--duration",
            "3",
            "--streams",
            "4",
            "--metrics-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    frames = out.stdout.split("sensor-streamer demo")
    assert len(frames) >= 2
    assert "plant1/" in frames[-1] and "streams 0 " not in frames[-1]
