"""A flood of distinct stream ids: state, memory and /metrics stay bounded by configuration.

`flood` is the harness `python -m benchmarks.flood` runs with a million ids; here with
fewer ids and a smaller store, then once more through a real broker and /metrics.
"""

import orjson
from conftest import daemon_config, metric_value, samples, scrape, wait_until

from benchmarks.flood import flood


def test_a_flood_of_new_ids_evicts_and_keeps_memory_flat():
    r = flood(ids=100_000, capacity=2000, max_streams=300, batch=4000)
    assert r.held == 2000
    assert r.evicted == 100_000 - 2000
    assert r.streams_exported == 300
    assert set(r.series_by_family.values()) == {300}  # every per-stream family is capped
    # 50,000 ids come and go in the second half: a trace of 32 bytes each would be 1.5 MB.
    assert r.rss_growth_second_half_mb < 1.0, r.rss_mb


def test_a_flood_through_the_broker_is_bounded_on_metrics(broker, start_daemon, mqtt_client):
    ids, capacity, max_streams = 3000, 500, 40
    d = start_daemon(
        daemon_config(
            broker,
            STREAMER_ENGINE_CAPACITY=str(capacity),
            STREAMER_BATCH_MAX_SIZE=str(capacity),
            STREAMER_METRICS_MAX_STREAMS=str(max_streams),
        )
    )
    for k in range(ids):
        payload = orjson.dumps({"value": float(k % 7), "ts": 1.7e9 + k})
        mqtt_client.client.publish(f"sensors/flood/{k}", payload, qos=0)
    engine = d.engines[0]
    wait_until(lambda: engine.counts["warmup"] == ids, what="every id taken")
    text = scrape(d.metrics_port)
    assert metric_value(text, "streamer_streams_evicted_total", route="sensors") == ids - capacity
    assert metric_value(text, "streamer_streams_active", route="sensors") == capacity
    streams = {lv["stream"] for lv, _ in samples(text, "streamer_stream_readings_total")}
    assert len(streams) == max_streams
    assert streams <= set(engine.store.index)
