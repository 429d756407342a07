"""The parser against every payload form, every rejection reason, and arbitrary bytes and topics."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import NamedTuple

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streamer.errors import BadInput, ConfigError
from streamer.parse import (
    MAX_STREAM_ID,
    MAX_TS,
    MIN_TS,
    SENML_RELATIVE_BELOW,
    TIME_UNITS,
    Parser,
    PayloadSpec,
    Run,
    TopicTemplate,
    check_stream_id,
)

TOPIC = "sensors/d1/temp"
STREAM = "d1/temp"
ARRIVAL = 1_700_000_000.25
REASONS = {
    "topic_mismatch",
    "oversized",
    "not_utf8",
    "bad_json",
    "bad_number",
    "wrong_type",
    "missing_field",
    "bad_timestamp",
    "bad_senml",
    "bad_stream_id",
    "too_many_readings",
    "empty",
}


def make(pattern: str = "sensors/{device}/{channel}", stream_id: str | None = None, **spec):
    return Parser(TopicTemplate(pattern, stream_id), PayloadSpec(**spec))


class Reading(NamedTuple):
    """One reading of a parsed message: its runs, flattened."""

    stream: str
    ts: float
    values: tuple[float, ...]


def readings(runs: list[Run]) -> list[Reading]:
    return [Reading(r.stream, t, v) for r in runs for t, v in zip(r.ts, r.values, strict=True)]


def parse(payload: bytes, topic: str = TOPIC, **spec) -> list[Reading]:
    return readings(make(**spec).parse(topic, payload, ARRIVAL))


def one(payload: bytes, **spec) -> Reading:
    (reading,) = parse(payload, **spec)
    return reading


def utc(*args: int, **offset: int) -> float:
    tz = timezone(timedelta(**offset)) if offset else UTC
    return datetime(*args, tzinfo=tz).timestamp()


# -- topics ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "stream_id", "topic", "topic_filter", "stream"),
    [
        ("sensors/{device}/{channel}", None, "sensors/d1/temp", "sensors/+/+", "d1/temp"),
        ("sensors/{device}/{channel}", "{device}:{channel}", "sensors/d1/t", "sensors/+/+", "d1:t"),
        ("sensors/{device}/{channel}", "{channel}", "sensors/d1/t", "sensors/+/+", "t"),
        ("site/{site}/{rest+}", None, "site/s1/a/b//c", "site/+/#", "s1/a/b//c"),
        ("{device}/x/{channel}", None, "d9/x/hum", "+/x/+", "d9/hum"),
        ("home/kitchen/temp", "kitchen", "home/kitchen/temp", "home/kitchen/temp", "kitchen"),
        ("{id+}", None, "a/b", "#", "a/b"),
        ("sensors/{device}/{channel}", None, "sensors/Küche/°C", "sensors/+/+", "Küche/°C"),
        ("s/{x}", "{{{x}}}", "s/7", "s/+", "{7}"),
    ],
)
def test_template_filter_and_stream_id(pattern, stream_id, topic, topic_filter, stream):
    template = TopicTemplate(pattern, stream_id)
    assert template.topic_filter == topic_filter
    assert template.stream_of(topic) == stream


@pytest.mark.parametrize(
    ("pattern", "topic"),
    [
        ("sensors/{device}/{channel}", "sensors/d1"),
        ("sensors/{device}/{channel}", "sensors/d1/temp/extra"),
        ("sensors/{device}/{channel}", "other/d1/temp"),
        ("sensors/{device}/{channel}", "sensors//temp"),
        ("sensors/{device}/{channel}", "Sensors/d1/temp"),
        ("site/{rest+}", "site"),
        ("site/{rest+}", "site/"),
        ("a.b/{x}", "aXb/1"),
    ],
)
def test_topic_mismatch(pattern, topic):
    with pytest.raises(BadInput) as e:
        TopicTemplate(pattern).stream_of(topic)
    assert e.value.reason == "topic_mismatch"


@pytest.mark.parametrize(
    ("pattern", "stream_id", "problem"),
    [
        ("sensors/dev{device}", None, "whole level"),
        ("sensors/{device}x", None, "whole level"),
        ("sensors/+/temp", None, "not + or #"),
        ("sensors/#", None, "not + or #"),
        ("{rest+}/temp", None, "only the last level"),
        ("{a}/{a}", None, "appears twice"),
        ("{a}/{a+}", None, "appears twice"),
        ("s/{1x}", None, "identifier"),
        ("s/{}", None, "identifier"),
        ("s/{a-b}", None, "identifier"),
        ("fixed/topic", None, "stream_id must be given"),
        ("s/{a}", "{b}", "not in the pattern"),
        ("s/{a}", "{}", "not in the pattern"),
        ("s/{a}", "{a:>9}", "plain"),
        ("s/{a}", "{a!r}", "plain"),
        ("s/{a}", "{a", "stream_id"),
    ],
)
def test_template_config_errors(pattern, stream_id, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)) as e:
        TopicTemplate(pattern, stream_id)
    assert repr(pattern) in str(e.value)


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ({"format": "xml"}, "format"),
        ({"time_unit": "us"}, "time_unit"),
        ({"value_fields": ()}, "value_fields"),
        ({"value_fields": ("x", "x")}, "value_fields"),
        ({"value_fields": ("x", "ts")}, "value_fields"),
        ({"format": "number", "value_fields": ("x", "y")}, "value_fields"),
        ({"format": "senml", "value_fields": ("x", "y")}, "value_fields"),
        ({"max_bytes": 0}, "max_bytes"),
        ({"max_readings": 0}, "max_readings"),
    ],
)
def test_payload_spec_config_errors(spec, key):
    with pytest.raises(ConfigError, match=f"payload {key} = "):
        PayloadSpec(**spec)


def test_payload_spec_takes_a_list_of_fields_as_a_tuple():
    assert PayloadSpec(value_fields=["x", "y"]).value_fields == ("x", "y")


# -- accepted payloads -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        (b"21.5", "21.5"),
        (b" -3e2\r\n", "-3e2"),
        (b"+7", "7"),
        (b"0", "0"),
        (b"nan", "nan"),
        (b"-Infinity", "-inf"),
        (b"1e999", "inf"),
    ],
)
@pytest.mark.parametrize("fmt", ["auto", "number"])
def test_bare_number(payload, text, fmt):
    reading = one(payload, format=fmt)
    assert (reading.stream, reading.ts) == (STREAM, ARRIVAL)
    assert reading.values == pytest.approx((float(text),), nan_ok=True)


@pytest.mark.parametrize(
    ("ts", "unit", "seconds"),
    [
        (1_700_000_000.5, "auto", 1_700_000_000.5),
        (1_700_000_000, "s", 1_700_000_000.0),
        (1_700_000_000_123, "auto", 1_700_000_000.123),
        (1_700_000_000_123, "ms", 1_700_000_000.123),
        ("1700000000.5", "auto", 1_700_000_000.5),
        ("1700000000123", "ms", 1_700_000_000.123),
        ("2024-01-01T00:00:00Z", "auto", utc(2024, 1, 1)),
        ("2024-01-01T00:00:00Z", "iso", utc(2024, 1, 1)),
        ("2024-01-01T02:30:00+02:30", "iso", utc(2024, 1, 1)),
        ("2024-06-01 12:00:00.250-05:00", "auto", utc(2024, 6, 1, 12, 0, 0, 250_000, hours=-5)),
        ("2024-01-01T00:00:00", "iso", utc(2024, 1, 1)),
        ("2024-01-01", "auto", utc(2024, 1, 1)),
    ],
)
def test_json_object_timestamps(ts, unit, seconds):
    reading = one(orjson.dumps({"value": 21.5, "ts": ts}), time_unit=unit)
    assert reading == Reading(STREAM, pytest.approx(seconds, abs=1e-6), (21.5,))


@pytest.mark.parametrize("fmt", ["auto", "json"])
def test_json_object_without_timestamp_is_stamped_on_arrival(fmt):
    assert one(b'{"value": 3, "unit": "C"}', format=fmt) == Reading(STREAM, ARRIVAL, (3.0,))


def test_json_object_custom_fields_and_numeric_strings():
    payload = b'{"x": 1, "y": "2.5", "z": -3e-1, "time": "2024-01-01T00:00:00Z"}'
    reading = one(payload, value_fields=("z", "x", "y"), time_field="time")
    assert reading == Reading(STREAM, utc(2024, 1, 1), (-0.3, 1.0, 2.5))


@pytest.mark.parametrize(
    ("literal", "check"),
    [
        (b"NaN", math.isnan),
        (b"Infinity", lambda v: v == math.inf),
        (b"-1e999", lambda v: v == -math.inf),
    ],
)
def test_json_non_finite_values_reach_the_engine(literal, check):
    (value,) = one(b'{"value": ' + literal + b', "ts": 1700000000}').values
    assert check(value)


def test_json_huge_integer_is_infinite_not_an_error():
    (value,) = one(b'{"value": -' + b"9" * 400 + b"}").values
    assert value == -math.inf


@pytest.mark.parametrize("fmt", ["auto", "array"])
def test_array_of_objects_gives_readings_in_order(fmt):
    payload = b'[{"value": 1, "ts": 1700000002}, {"value": 2, "ts": 1700000001}, {"value": 3}]'
    assert parse(payload, format=fmt) == [
        Reading(STREAM, 1_700_000_002.0, (1.0,)),
        Reading(STREAM, 1_700_000_001.0, (2.0,)),
        Reading(STREAM, ARRIVAL, (3.0,)),
    ]


@pytest.mark.parametrize("fmt", ["auto", "array"])
def test_array_of_numbers_is_one_multivariate_reading(fmt):
    reading = one(b'[1, "2", 3.5]', format=fmt, value_fields=("x", "y", "z"))
    assert reading == Reading(STREAM, ARRIVAL, (1.0, 2.0, 3.5))


def test_auto_reads_objects_with_configured_senml_like_fields_as_an_array():
    payload = b'[{"v": 4, "t": 1700000000}]'
    assert one(payload, value_fields=("v",), time_field="t") == Reading(STREAM, 1.7e9, (4.0,))


@pytest.mark.parametrize("fmt", ["auto", "senml"])
def test_senml_resolves_base_name_time_and_value(fmt):
    pack = [
        {"bn": "dev1/", "bt": 1_700_000_000, "bu": "Cel", "bver": 10, "n": "temp", "v": 20},
        {"n": "temp", "t": 10, "v": 21.5},
        {"n": "label", "vs": "kitchen"},
        {"n": "door", "vb": True},
        {"bn": "dev2/", "bv": 100, "n": "hum", "t": -5, "v": 1},
        {"bn": "", "bt": 0, "t": -2, "v": 7},
    ]
    assert parse(orjson.dumps(pack), format=fmt) == [
        Reading(f"{STREAM}/dev1/temp", 1_700_000_000.0, (20.0,)),
        Reading(f"{STREAM}/dev1/temp", 1_700_000_010.0, (21.5,)),
        Reading(f"{STREAM}/dev2/hum", 1_699_999_995.0, (101.0,)),
        Reading(STREAM, ARRIVAL - 2, (107.0,)),
    ]


def test_senml_times_below_2_pow_28_are_relative_to_arrival():
    pack = [{"n": "a", "t": 0, "v": 1}, {"n": "a", "t": SENML_RELATIVE_BELOW - 1, "v": 2}]
    times = [r.ts for r in parse(orjson.dumps(pack))]
    assert times == [ARRIVAL, ARRIVAL + SENML_RELATIVE_BELOW - 1]


def test_readings_of_one_senml_name_form_one_run_in_pack_order():
    pack = [{"n": "a", "t": -i, "v": i} for i in range(3)] + [
        {"n": "b", "v": 9},
        {"n": "a", "v": 3},
    ]
    runs = make().parse(TOPIC, orjson.dumps(pack), ARRIVAL)
    assert [(r.stream, [v for (v,) in r.values]) for r in runs] == [
        (f"{STREAM}/a", [0.0, 1.0, 2.0, 3.0]),
        (f"{STREAM}/b", [9.0]),
    ]


# -- rejections --------------------------------------------------------------------------

TWO = {"value_fields": ("x", "y")}


REJECTIONS = (
    ("topic_mismatch", b"1", {}, "sensors/d1"),
    ("oversized", b"123456789", {"max_bytes": 8}, TOPIC),
    ("oversized", b"[" + b"1," * 40_000 + b"1]", {}, TOPIC),
    ("not_utf8", b"\xff\xfe", {}, TOPIC),
    ("not_utf8", b'{"value": "\xe9"}', {}, TOPIC),
    ("not_utf8", b'[{"n": "\xc3", "v": 1}]', {"format": "senml"}, TOPIC),
    ("bad_json", b'{"value": 1', {}, TOPIC),
    ("bad_json", b'{"value": 1} x', {}, TOPIC),
    ("bad_json", b"[" * 2000 + b"]" * 2000, {}, TOPIC),
    ("bad_json", b"{'value': 1}", {}, TOPIC),
    ("wrong_type", b"21.5", {"format": "json"}, TOPIC),
    ("bad_number", b"warm", {}, TOPIC),
    ("bad_number", b"0x10", {"format": "number"}, TOPIC),
    ("bad_number", b"12\x00", {}, TOPIC),
    ("bad_number", b'{"value": "warm"}', {}, TOPIC),
    ("bad_number", b'["1", "two"]', TWO, TOPIC),
    ("wrong_type", b'{"value": true}', {}, TOPIC),
    ("wrong_type", b'{"value": null}', {}, TOPIC),
    ("wrong_type", b'{"value": [1]}', {}, TOPIC),
    ("wrong_type", b'"21.5"', {"format": "json"}, TOPIC),
    ("wrong_type", b'[{"value": 1}]', {"format": "json"}, TOPIC),
    ("wrong_type", b'{"value": 1}', {"format": "array"}, TOPIC),
    ("wrong_type", b"[1, 2, 3]", {}, TOPIC),
    ("wrong_type", b"[1, 2, 3]", TWO, TOPIC),
    ("wrong_type", b"[1, 2]", {"format": "array"}, TOPIC),
    ("wrong_type", b'[{"value": 1}, 2]', {}, TOPIC),
    ("wrong_type", b"[true, 2]", TWO, TOPIC),
    ("wrong_type", b"21.5", TWO, TOPIC),
    ("wrong_type", b'[{"n": "a", "v": 1}]', TWO, TOPIC),
    ("missing_field", b'{"temp": 1}', {}, TOPIC),
    ("missing_field", b'{"x": 1, "z": 2}', TWO, TOPIC),
    ("missing_field", b'[{"value": 1}, {"ts": 1700000000}]', {}, TOPIC),
    ("bad_timestamp", b'{"value": 1, "ts": 5}', {}, TOPIC),
    ("bad_timestamp", b'{"value": 1, "ts": 1e17}', {}, TOPIC),
    ("bad_timestamp", b'{"value": 1, "ts": 1e15}', {"time_unit": "ms"}, TOPIC),
    ("bad_timestamp", b'{"value": 1, "ts": NaN}', {}, TOPIC),
    ("bad_timestamp", b'{"value": 1, "ts": Infinity}', {}, TOPIC),
    ("bad_timestamp", b'{"value": 1, "ts": "yesterday"}', {}, TOPIC),
    ("bad_timestamp", b'{"value": 1, "ts": true}', {}, TOPIC),
    ("bad_timestamp", b'{"value": 1, "ts": null}', {}, TOPIC),
    ("bad_timestamp", b'{"value": 1, "ts": "1960-01-01T00:00:00Z"}', {}, TOPIC),
    ("bad_timestamp", b'{"value": 1, "ts": "2024-01-01T00:00:00Z"}', {"time_unit": "s"}, TOPIC),
    ("bad_timestamp", b'{"value": 1, "ts": 1700000000}', {"time_unit": "iso"}, TOPIC),
    ("bad_timestamp", b'[{"bt": 1e12, "v": 1}]', {}, TOPIC),
    ("bad_timestamp", b'[{"t": -1e300, "v": 1}]', {}, TOPIC),
    ("bad_senml", b'{"v": 1}', {"format": "senml"}, TOPIC),
    ("bad_senml", b'[{"v": 1}, 3]', {}, TOPIC),
    ("bad_senml", b'[{"bn": 5, "v": 1}]', {}, TOPIC),
    ("bad_senml", b'[{"n": null, "v": 1}]', {}, TOPIC),
    ("bad_senml", b'[{"v": "1"}]', {}, TOPIC),
    ("bad_senml", b'[{"v": true}]', {}, TOPIC),
    ("bad_senml", b'[{"bt": "now", "v": 1}]', {}, TOPIC),
    ("bad_senml", b'[{"n": "a", "vs": "x"}, {"n": "b", "vb": false}]', {}, TOPIC),
    ("bad_senml", b'[{"n": "a", "v": 1, "crit_": 1}]', {}, TOPIC),
    ("bad_senml", b'[{"value": 1}]', {"format": "senml"}, TOPIC),
    ("bad_stream_id", b"1", {}, "sensors/a+b/temp"),
    ("bad_stream_id", b"1", {}, "sensors/a\x01/temp"),
    ("bad_stream_id", b"1", {}, "sensors/a\x7f/temp"),
    ("bad_stream_id", b"1", {}, "sensors/\ud800/temp"),
    ("bad_stream_id", b"1", {}, "sensors/" + "x" * MAX_STREAM_ID + "/temp"),
    ("bad_stream_id", b'[{"n": "a#", "v": 1}]', {}, TOPIC),
    ("bad_stream_id", b'[{"n": "a\\n", "v": 1}]', {}, TOPIC),
    ("bad_stream_id", b'[{"n": "' + b"x" * MAX_STREAM_ID + b'", "v": 1}]', {}, TOPIC),
    (
        "too_many_readings",
        b"[" + b'{"value": 1},' * 3 + b'{"value": 1}]',
        {"max_readings": 3},
        TOPIC,
    ),
    ("too_many_readings", b'[{"v": 1}, {"v": 2}]', {"max_readings": 1}, TOPIC),
    ("empty", b"", {}, TOPIC),
    ("empty", b" \n\t", {}, TOPIC),
    ("empty", b"", {"format": "json"}, TOPIC),
    ("empty", b"[]", {}, TOPIC),
    ("empty", b" [ ] ", {"format": "senml"}, TOPIC),
)


@pytest.mark.parametrize(("reason", "payload", "spec", "topic"), REJECTIONS)
def test_rejections(reason, payload, spec, topic):
    with pytest.raises(BadInput) as e:
        make(**spec).parse(topic, payload, ARRIVAL)
    assert e.value.reason == reason
    assert e.value.detail


def test_every_documented_reason_has_an_example():
    assert {row[0] for row in REJECTIONS} == REASONS


def test_stream_id_rules_at_the_length_limit():
    assert check_stream_id("x" * MAX_STREAM_ID) == "x" * MAX_STREAM_ID
    for bad in ("", "x" * (MAX_STREAM_ID + 1), "a\x00b"):
        with pytest.raises(BadInput, match="bad_stream_id"):
            check_stream_id(bad)


# -- properties --------------------------------------------------------------------------

PARSERS = [
    make(),
    make(format="number"),
    make(format="json", time_unit="iso"),
    make(format="array", value_fields=("x", "y"), time_unit="ms"),
    make(format="senml"),
    make("{id+}", value_fields=("v",), time_field="t", time_unit="s"),
    make("sensors/{device}/{channel}", "{device}:{channel}", value_fields=("x", "y", "z")),
    make(max_bytes=64, max_readings=2),
]
KEYS = st.sampled_from(["value", "ts", "x", "y", "z", "t", "v", "n", "bn", "bt", "bv", "vs", "a_"])
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.floats()
    | st.integers()
    | st.sampled_from([2**64, -(10**400), 1_700_000_000_000])
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(KEYS | st.text(max_size=5), inner),
    max_leaves=25,
)
VALID_ID = st.text(
    st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="+#"), min_size=1
)


@settings(max_examples=400, deadline=None)
@given(
    parser=st.sampled_from(PARSERS),
    topic=st.text() | VALID_ID.map(lambda s: f"sensors/{s}/t") | st.just(TOPIC),
    payload=st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()),
    arrival=st.floats(MIN_TS, MAX_TS),
)
def test_any_message_gives_readings_or_bad_input(parser, topic, payload, arrival):
    try:
        runs = parser.parse(topic, payload, arrival)
    except BadInput as e:
        assert e.reason in REASONS
        return
    assert isinstance(runs, list) and runs
    assert all(type(run) is Run and len(run.ts) == len(run.values) > 0 for run in runs)
    for r in readings(runs):
        assert type(r.ts) is float
        assert check_stream_id(r.stream) == r.stream
        assert r.ts == arrival or MIN_TS <= r.ts <= MAX_TS
        assert len(r.values) == len(parser.spec.value_fields)  # what ingest relies on
        assert all(type(v) is float for v in r.values)


FINITE = st.floats(allow_nan=False, allow_infinity=False)
TS = st.floats(MIN_TS, MAX_TS)
ROUND_TRIP = make("s/{id+}")


@settings(deadline=None)
@given(stream=VALID_ID.filter(lambda s: len(s) <= MAX_STREAM_ID), value=FINITE, ts=TS)
def test_number_and_json_round_trip(stream, value, ts):
    topic = f"s/{stream}"
    expected = [Reading(stream, ts, (value,))]
    assert readings(ROUND_TRIP.parse(topic, repr(value).encode(), ts)) == expected
    payload = orjson.dumps({"value": value, "ts": ts})
    assert readings(ROUND_TRIP.parse(topic, payload, ARRIVAL)) == expected


@settings(deadline=None)
@given(
    ms=st.integers(int(MIN_TS * 1000), int(MAX_TS * 1000)),
    seconds=st.integers(int(MIN_TS), int(MAX_TS)),
)
def test_millisecond_and_iso_timestamps_round_trip(ms, seconds):
    reading = one(orjson.dumps({"value": 1, "ts": ms}), time_unit="ms")
    assert reading.ts == ms / 1000
    iso = datetime.fromtimestamp(seconds, UTC).isoformat()
    assert one(orjson.dumps({"value": 1, "ts": iso})).ts == seconds


@settings(deadline=None)
@given(
    stream=VALID_ID.filter(lambda s: len(s) <= 100),
    name=VALID_ID.filter(lambda s: len(s) <= 99) | st.just(""),
    value=FINITE,
    ts=st.floats(SENML_RELATIVE_BELOW, MAX_TS),
    offset=st.floats(-1e6, 1e6),
)
def test_senml_round_trip(stream, name, value, ts, offset):
    expected = f"{stream}/{name}" if name else stream
    pack = orjson.dumps([{"bn": name, "bt": ts, "v": value}, {"n": "", "bt": offset, "v": value}])
    assert readings(ROUND_TRIP.parse(f"s/{stream}", pack, ARRIVAL)) == [
        Reading(expected, ts, (value,)),
        Reading(expected, ARRIVAL + offset, (value,)),
    ]


@settings(deadline=None)
@given(rows=st.lists(st.tuples(FINITE, TS), min_size=1, max_size=50))
def test_arrays_of_n_objects_give_n_readings_in_order(rows):
    payload = orjson.dumps([{"value": v, "ts": t} for v, t in rows])
    assert parse(payload) == [Reading(STREAM, t, (v,)) for v, t in rows]


NUMBER_LIKE = (
    st.floats(allow_nan=False)
    | st.integers()
    | st.booleans()
    | st.none()
    | st.text(max_size=4)
    | FINITE.map(repr)
)
TIME_LIKE = (
    TS
    | st.integers(int(MIN_TS), int(MAX_TS))
    | st.integers(int(MIN_TS * 1000), int(MAX_TS * 1000))
    | NUMBER_LIKE
    | TS.map(lambda t: datetime.fromtimestamp(t, UTC).isoformat())
)


@settings(max_examples=300, deadline=None)
@example(objects=[{"value": "NAN"}], unit="auto")
@given(
    objects=st.lists(
        st.fixed_dictionaries({"value": NUMBER_LIKE}, optional={"ts": TIME_LIKE}),
        min_size=1,
        max_size=12,
    ),
    unit=st.sampled_from(TIME_UNITS),
)
def test_an_array_of_objects_reads_as_its_objects_one_by_one(objects, unit):
    """Arrays are read a field at a time when they can be; the result must not show it."""
    parser = make(time_unit=unit)

    def outcome(value: object) -> list[Reading] | str:
        try:
            return readings(parser.parse(TOPIC, json.dumps(value).encode(), ARRIVAL))
        except BadInput as e:
            return e.reason

    singles = [outcome(obj) for obj in objects]
    errors = [r for r in singles if isinstance(r, str)]
    expected = errors[0] if errors else [r for rs in singles for r in rs]
    assert repr(outcome(objects)) == repr(expected)  # repr: a NaN value equals itself


# Mostly the plain shape (which the columns read), sometimes something they must refuse.
SENML_NAMES = st.text(alphabet="abcdef", min_size=2, max_size=3)
SENML_ODD_NAMES = st.text(alphabet="a+\x00") | st.integers()
SENML_PLAIN = st.fixed_dictionaries({"n": SENML_NAMES, "v": FINITE | st.integers(-5, 5)})
SENML_ODD = st.fixed_dictionaries(
    {"n": SENML_NAMES | SENML_ODD_NAMES, "v": NUMBER_LIKE},
    optional={"t": st.floats(0, 5), "u": st.just("Cel"), "bv": FINITE},
)
SENML_BASE = st.fixed_dictionaries(
    {},
    optional={
        "bn": st.sampled_from(["dev/", "dev/", "dev/", "", "x+", 7]),
        "bt": st.one_of(
            TS, TS, st.floats(0, 10), st.integers(int(MIN_TS), int(MAX_TS)), NUMBER_LIKE
        ),
        "bver": st.just(10),
    },
)


@settings(max_examples=300, deadline=None)
@given(
    base=SENML_BASE,
    records=st.lists(SENML_PLAIN, min_size=1, max_size=8),
    odd=st.none() | st.tuples(st.integers(0, 7), SENML_ODD),
    drop_v=st.integers(0, 5).map(lambda i: i == 0),
)
def test_a_senml_pack_read_by_columns_reads_as_its_records_one_by_one(base, records, odd, drop_v):
    """Packs of one reading per sensor are read a field at a time when they can be; the
    result must not show it."""
    parser = make("sensors/{device}")
    if odd is not None:
        records[odd[0] % len(records)] = odd[1]
    pack = [{**base, **records[0]}, *records[1:]]
    if drop_v:
        pack[-1].pop("v")

    def outcome(read) -> list[Reading] | str:
        try:
            runs = read("sensors/d1", pack, ARRIVAL)
        except BadInput as e:
            return e.reason
        # 0.0 +: the records add the base value (0.0 by default), which turns -0.0 into 0.0
        return [(s, t, tuple(0.0 + v for v in vs)) for s, t, vs in readings(runs)]

    assert repr(outcome(parser._senml)) == repr(outcome(parser._senml_records))


def test_a_pack_of_one_reading_per_sensor_is_read_by_columns():
    pack = [{"bn": "dev/", "bt": 1_700_000_000, "n": "t", "v": 21}, {"n": "h", "v": 0.5}]
    runs = make("sensors/{device}")._senml_columns("d1", pack, ARRIVAL)
    assert runs == [
        Run("d1/dev/t", [1_700_000_000.0], [(21.0,)]),
        Run("d1/dev/h", [1_700_000_000.0], [(0.5,)]),
    ]
