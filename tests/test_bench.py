"""The performance harness at toy sizes: every part runs and reports sane figures (no timings checked)."""

import argparse
import json
import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.bench import __main__ as cli
from benchmarks.bench.publisher import PAYLOADS, Load, Payloads
from streamer.parse import Parser, PayloadSpec, TopicTemplate

T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    assert cli.main(["all", "--quick", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_every_end_to_end_scenario_delivers_every_reading(quick):
    plan, runs = quick["plan"], quick["e2e"]["runs"]
    assert len(runs) == plan["repeats"]
    for name, o in runs[0].items():
        assert o["handled"] == o["published"] == o["scenario"]["readings"], name
        assert o["lost"] == 0 and not o["dropped"], name
        assert o["rate"] > 0 and o["seconds"] > 0, name
        assert o["cpu_s"]["consumer"] >= 0 and o["rss"]["consumer"] > 10 * 2**20, name
        if o["scenario"]["consumer"] == "daemon":
            assert o["mean_wave"] >= 1, name
            assert 0 <= o["latency"]["p50"] <= o["latency"]["p99"] <= o["latency"]["max"], name


def test_ratios_are_taken_against_the_baseline_of_the_same_shape(quick):
    summary = quick["e2e"]["summary"]
    daemons = [name for name in summary if " daemon" in name]
    assert len(daemons) == 6  # 4 shapes + 2 paced
    for name in daemons:
        assert summary[name.replace(" daemon", " bare")]["rate"] > 0
        assert summary[name]["vs_bare_rate"] > 0 and summary[name]["vs_bare_cpu"] > 0


def test_engine_rows_compare_engine_session_and_naive(quick):
    rows = quick["engine"]
    assert [(r["hidden"], r["batch"]) for r in rows] == [(16, 1), (16, 64)]
    for r in rows:
        assert min(r["engine"], r["shuffled"], r["session"], r["naive"]) > 0
        assert math.isclose(r["vs_session"], r["engine"] / r["session"])
        assert math.isclose(r["shuffled_vs_session"], r["shuffled"] / r["session"])
    assert rows[1]["engine"] > rows[0]["engine"]  # a batch of 64 beats 64 single steps


def test_memory_and_startup_are_measured(quick):
    (mem,) = quick["memory"]
    assert mem["streams"] == 2000 and 0 < mem["numpy_bytes_per_stream"] < 4096
    assert mem["rss"] >= mem["rss_before"] > 0
    startup = quick["startup"]
    assert 0 < startup["python_c_pass_s"] < startup["median_s"] < 60


def test_verdicts_name_a_measured_value_and_the_report_renders(quick, capsys):
    assert {v["target"] for v in quick["verdicts"]} >= {
        "one-reading msgs, QoS 0: daemon / bare rate",
        "numpy state per stream",
        "process start to /readyz 200",
    }
    for v in quick["verdicts"]:
        assert v["met"] == (
            v["value"] >= v["bound"] if v["higher_is_better"] else v["value"] <= v["bound"]
        )
    text = cli.report.render(quick)
    assert "json qos0 daemon @half" in text and "targets" in text


@given(
    payload=st.sampled_from(PAYLOADS),
    batch=st.integers(1, 12),
    streams=st.integers(1, 40),
    messages=st.integers(1, 30),
)
@settings(max_examples=60, deadline=None)
def test_what_the_load_generator_publishes_the_daemon_reads_in_full(
    payload, batch, streams, messages
):
    batch = 1 if payload in ("json", "number") else batch
    streams = max(streams, batch)
    load = Load(1, payload, streams, messages * batch, batch)
    payloads = Payloads(load)
    parser = Parser(TopicTemplate("sensors/{stream+}"), PayloadSpec())
    last: dict[str, float] = {}
    for j in range(load.messages):
        topic = j % load.topics
        now = T0 + j // load.topics  # a new stamp per round over the topics, as in `publish`
        runs = parser.parse(
            payloads.topic_names[topic], payloads.encode(j, topic, now), arrival=now
        )
        assert sum(len(r.ts) for r in runs) == batch
        for r in runs:
            for ts in r.ts:
                assert ts <= now and ts > last.get(r.stream, 0.0)  # never ahead, never backwards
                last[r.stream] = ts
    sensors_per_topic = batch if payload == "senml" else 1
    assert len(last) == min(load.topics, load.messages) * sensors_per_topic


@given(st.from_regex(r"[a-z]{1,8}\.[a-z_]{1,12}=[^\n]{0,10}", fullmatch=True))
def test_set_flags_become_streamer_environment_variables(text):
    key, value = cli._setting(text)
    section, name = text.split("=", 1)[0].split(".")
    assert key == f"STREAMER_{section}_{name}".upper() and value == text.split("=", 1)[1]


def test_a_setting_without_a_section_is_refused():
    with pytest.raises(argparse.ArgumentTypeError, match=r"section\.key=value"):
        cli._setting("max_delay_ms=3")


def test_payload_kinds_are_what_the_parser_calls_them():
    load = Load(1, "senml", 20, 20, 10)
    pack = orjson.loads(Payloads(load).encode(0, 0, T0))
    assert pack[0]["bt"] == T0 and [r["n"] for r in pack] == [f"c{i}" for i in range(10)]


def test_the_parts_benchmark_times_every_part_of_the_path():
    """`python -m benchmarks.parts` at tiny sizes: it runs and every figure is a time (not timings)."""
    from benchmarks import parts

    engine = parts.engine_parts(64, 1)
    assert {"lookup", "calibration", "profile, nothing to learn"} <= set(engine)
    assert all(v > 0 for v in engine.values())
    versus = parts.engine_ratio(64, 1)
    assert versus["engine"] > 0 and versus["session"] > 0 and versus["ratio"] > 0
    assert all(v > 0 for v in parts.parsing(1).values())
    assert parts.ingest_take(1, 50) > 0
