"""MQTT topic + payload bytes -> readings: the first, hottest and most exposed step of the daemon.

Every message the broker delivers passes through `Parser.parse`, so two rules shape this
module. It is cheap: JSON goes through orjson, the topic through one precompiled regex,
and everything that depends only on configuration is decided once in `Parser.__init__`.
It is total: whatever the bytes and whatever the topic, the result is a list of
`Run`s or a `BadInput` whose `reason` is a metric label; nothing else escapes, so
one malformed device cannot stop the daemon.

Payload forms (`PayloadSpec.format`, "auto" sniffs the first non-space byte):

    number  b"21.5"                          one reading at arrival time
    json    {"value": 21.5, "ts": 1.7e9}     one reading; several `value_fields` = one
                                             multivariate reading, values in field order
    array   [{...}, {...}]                   one reading per object, in order, own timestamps
            [1.0, 2.0, 3.0]                  one multivariate reading at arrival time, only when
                                             its length equals len(value_fields) > 1
    senml   [{"bn": "dev/", "n": "t", ...}]  RFC 8428 pack: one reading per numeric record

A message's readings come out as one `Run` per stream, their order kept: a pack of a hundred
readings is a few lists, not a hundred objects, on the way to the engine.
Every reading carries exactly `len(value_fields)` values, so the single-value forms
(bare numbers and SenML) need a single value field. Non-finite numbers (NaN,
Infinity, 1e999) are kept in `values`: the engine counts them, the parser does not.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import NamedTuple

import numpy as np
import orjson

from .errors import BadInput, ConfigError

MAX_STREAM_ID = 200
MIN_TS = 1e8  # 1973: anything earlier is a device that lost its clock
MAX_TS = 1e11  # year 5138: anything later was never seconds
MS_ABOVE = 1e11  # time_unit "auto": a number above this is epoch milliseconds
SENML_RELATIVE_BELOW = 2.0**28  # RFC 8428 4.5.3: smaller SenML times are relative to now
FORMATS = ("auto", "number", "json", "array", "senml")
TIME_UNITS = ("auto", "s", "ms", "iso")

# What an id must not hold: control characters (C0, DEL, C1) would corrupt logs and label
# values; '+' and '#' would turn an alert topic built from the id into a wildcard; lone
# surrogates cannot be encoded; and brokers refuse topics with Unicode non-characters.
_BAD_ID_CHAR = re.compile(
    "[\x00-\x1f\x7f-\x9f+#\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff"
    + "".join(f"{chr(p << 16 | 0xFFFE)}{chr(p << 16 | 0xFFFF)}" for p in range(1, 17))
    + "]"
)
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_SENML_KEYS = frozenset(
    {"bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "vs", "vb", "vd", "s", "t", "ut"}
)
_NUMBERS = frozenset({float, int})  # JSON numbers (a bool is neither)
_FLOAT = frozenset({float})
_SENML_BASE_OR_VALUE = frozenset({"bn", "bt", "bv", "n", "v", "vs", "vb", "vd"})
_SENML_PLAIN = frozenset({"n", "v", "u"})  # a record of a pack of one reading per sensor
_SENML_PLAIN_FIRST = _SENML_PLAIN | {"bn", "bt", "bu", "bver"}
_STR = frozenset({str})


class Run(NamedTuple):
    """One stream's readings from one message, oldest first: columns, not an object per reading.

    A tuple, so that a run parsed here and one shipped by the receiver process (a plain
    tuple, `receiver.pack`) are unpacked alike as (stream, ts, values)."""

    stream: str
    ts: list[float]  # epoch seconds; the arrival time when the payload carries none
    values: list[tuple[float, ...]]  # per reading, one per channel, possibly non-finite


def _clip(text: object, limit: int = 80) -> str:
    """repr() short enough for a log line: details come from untrusted, unbounded input."""
    r = repr(text)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def check_stream_id(stream: str) -> str:
    """`stream` if usable as a stream id (1..200 characters, none of `_BAD_ID_CHAR`), else BadInput."""
    if not 0 < len(stream) <= MAX_STREAM_ID or _BAD_ID_CHAR.search(stream):
        raise BadInput("bad_stream_id", _clip(stream))
    return stream


@dataclass(frozen=True)
class TopicTemplate:
    """Where the stream id sits in the topic, e.g. "sensors/{device}/{channel}".

    A placeholder fills a whole level; "{name+}" as the last level captures one or
    more levels. `stream_id` formats the captures ("{device}:{channel}"); by default
    they are joined with "/". A placeholder never captures an empty level, and
    "{rest+}" needs at least one character, so "sensors" does not match
    "sensors/{rest+}" although the broker delivers it for "sensors/#".
    """

    pattern: str
    stream_id: str | None = None
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _filter: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names: list[str] = []
        regex: list[str] = []
        mqtt: list[str] = []
        levels = self.pattern.split("/")
        for i, level in enumerate(levels):
            name, multi = self._placeholder(level, last=i == len(levels) - 1)
            if name is None:
                regex.append(re.escape(level))
                mqtt.append(level)
                continue
            if name in names:
                raise self._error(f"placeholder {{{name}}} appears twice")
            names.append(name)
            regex.append(f"(?P<{name}>.+)" if multi else f"(?P<{name}>[^/]+)")
            mqtt.append("#" if multi else "+")
        self._check_stream_id_format(names)
        object.__setattr__(self, "_regex", re.compile("/".join(regex), re.DOTALL))
        object.__setattr__(self, "_filter", "/".join(mqtt))

    def _error(self, problem: str) -> ConfigError:
        return ConfigError(f"topic template {self.pattern!r}: {problem}")

    def _placeholder(self, level: str, last: bool) -> tuple[str | None, bool]:
        """(name, multi-level) of a placeholder level, (None, False) for a literal one."""
        m = _PLACEHOLDER.fullmatch(level)
        if m is None:
            if any(c in level for c in "{}"):
                raise self._error(f"level {level!r}: a placeholder must fill a whole level")
            if any(c in level for c in "+#"):
                raise self._error(f"level {level!r}: write {{name}} or {{name+}}, not + or #")
            return None, False
        name = m.group(1)
        multi = name.endswith("+")
        name = name.removesuffix("+")
        if not name.isidentifier():
            raise self._error(f"placeholder {{{m.group(1)}}}: the name must be an identifier")
        if multi and not last:
            raise self._error(f"{{{name}+}} captures the rest of the topic: only the last level")
        return name, multi

    def _check_stream_id_format(self, names: list[str]) -> None:
        if self.stream_id is None:
            if not names:
                raise self._error("no placeholders, so stream_id must be given")
            return
        try:
            fields = list(string.Formatter().parse(self.stream_id))
        except ValueError as e:
            raise self._error(f"stream_id {self.stream_id!r}: {e}") from None
        for _, name, spec, conversion in fields:
            if name is None:
                continue
            if name not in names:
                raise self._error(
                    f"stream_id {self.stream_id!r} uses {{{name}}}, not in the pattern"
                )
            if spec or conversion:
                raise self._error(f"stream_id {self.stream_id!r}: plain {{{name}}} only")

    @property
    def topic_filter(self) -> str:
        """The MQTT subscription filter: "{x}" -> "+", "{x+}" -> "#", literals kept."""
        return self._filter

    def stream_of(self, topic: str) -> str:
        """The validated stream id for `topic`; BadInput("topic_mismatch") if it does not fit."""
        m = self._regex.fullmatch(topic)
        if m is None:
            raise BadInput("topic_mismatch", f"{_clip(topic)} does not fit {self.pattern!r}")
        if self.stream_id is None:
            return check_stream_id("/".join(m.groups()))
        return check_stream_id(self.stream_id.format_map(m.groupdict()))


@dataclass(frozen=True)
class PayloadSpec:
    """How payloads are read; validated at construction so a bad config stops start-up.

    `time_field` is the only field read as the timestamp; without it a reading is
    stamped with its arrival time. `time_unit` "auto" reads numbers above 1e11 as
    milliseconds, others as seconds, and strings as ISO 8601 (naive = UTC) or, failing
    that, as numbers. SenML times are always seconds (RFC 8428).
    """

    format: str = "auto"
    value_fields: tuple[str, ...] = ("value",)
    time_field: str = "ts"
    time_unit: str = "auto"
    max_bytes: int = 65536
    max_readings: int = 10000

    def __post_init__(self) -> None:
        object.__setattr__(self, "value_fields", tuple(self.value_fields))
        fields = self.value_fields
        checks = (
            ("format", self.format in FORMATS, f"one of {FORMATS}"),
            ("time_unit", self.time_unit in TIME_UNITS, f"one of {TIME_UNITS}"),
            (
                "value_fields",
                fields and len(set(fields)) == len(fields) and self.time_field not in fields,
                "distinct names, at least one, none of them the time_field",
            ),
            (
                "value_fields",
                len(fields) == 1 or self.format not in ("number", "senml"),
                f"a single field: {self.format} payloads carry one value",
            ),
            ("max_bytes", self.max_bytes >= 1, "at least 1"),
            ("max_readings", self.max_readings >= 1, "at least 1"),
        )
        for key, ok, want in checks:
            if not ok:
                raise ConfigError(f"payload {key} = {getattr(self, key)!r}: must be {want}")


def _number(raw: object, what: str) -> float:
    """A JSON value as a float: numbers and numeric strings; bools and the rest are not numbers."""
    kind = type(raw)
    if kind is float:
        return raw  # type: ignore[return-value]
    if kind is int:
        try:
            return float(raw)  # type: ignore[arg-type]
        except OverflowError:
            return math.inf if raw > 0 else -math.inf  # type: ignore[operator]
    if kind is str:
        try:
            return float(raw)  # type: ignore[arg-type]
        except ValueError:
            raise BadInput("bad_number", f"{what} = {_clip(raw)}") from None
    raise BadInput("wrong_type", f"{what} is {kind.__name__}, not a number")


def _in_range(ts: float) -> float:
    if not MIN_TS <= ts <= MAX_TS:  # also false for NaN
        raise BadInput("bad_timestamp", f"{ts!r} s is outside [{MIN_TS:g}, {MAX_TS:g}]")
    return ts


def _time_number(raw: object) -> float:
    try:
        return _number(raw, "timestamp")
    except BadInput as e:
        raise BadInput("bad_timestamp", e.detail) from None


def _iso_seconds(raw: object) -> float | None:
    """Epoch seconds of an ISO 8601 string (naive = UTC), None if `raw` is not one."""
    if type(raw) is not str:
        return None
    try:
        dt = datetime.fromisoformat(raw)  # type: ignore[arg-type]
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    except (ValueError, OverflowError):
        return None


def _ts_seconds(raw: object) -> float:
    return _in_range(_time_number(raw))


def _ts_millis(raw: object) -> float:
    return _in_range(_time_number(raw) / 1000.0)


def _ts_iso(raw: object) -> float:
    seconds = _iso_seconds(raw)
    if seconds is None:
        raise BadInput("bad_timestamp", f"{_clip(raw)} is not an ISO 8601 time")
    return _in_range(seconds)


def _ts_auto(raw: object) -> float:
    if type(raw) is float and MIN_TS <= raw <= MAX_TS:  # the common case, on every reading
        return raw  # type: ignore[return-value]
    seconds = _iso_seconds(raw)
    if seconds is None:
        n = _time_number(raw)
        seconds = n / 1000.0 if n > MS_ABOVE else n
    return _in_range(seconds)


_TIME_READERS: dict[str, Callable[[object], float]] = {
    "s": _ts_seconds,
    "ms": _ts_millis,
    "iso": _ts_iso,
    "auto": _ts_auto,
}


def _bare_number(payload: bytes) -> float:
    try:
        return float(payload)
    except ValueError:
        pass
    if not payload.strip():
        raise BadInput("empty", "no payload")
    try:
        payload.decode()
    except UnicodeDecodeError:
        raise BadInput("not_utf8", "payload is not UTF-8") from None
    raise BadInput("bad_number", _clip(payload))


def _load_json(payload: bytes) -> object:
    """Parsed JSON; the stdlib parser is the fallback for what strict orjson refuses but
    devices send anyway (NaN, Infinity, 1e999), so those reach the engine as non-finite."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        error = e
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        raise BadInput("not_utf8", "payload is not UTF-8") from None
    if not text.strip():
        raise BadInput("empty", "no payload")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise BadInput("bad_json", str(error)) from None


def _senml_number(record: dict, key: str) -> float:
    raw = record[key]
    kind = type(raw)
    if kind is float:
        return raw
    if kind is int:
        return _number(raw, key)
    raise BadInput("bad_senml", f"{key} is {kind.__name__}, not a number")


def _senml_text(record: dict, key: str) -> str:
    raw = record[key]
    if type(raw) is not str:
        raise BadInput("bad_senml", f"{key} is {type(raw).__name__}, not a string")
    return raw


def _check_senml_record(record: object) -> None:
    if type(record) is not dict:
        raise BadInput("bad_senml", f"a record is {type(record).__name__}, not an object")
    # RFC 8428 4.4: a label ending in '_' must be understood; this reader knows none.
    if not record.keys() <= _SENML_KEYS and any(k.endswith("_") for k in record):
        raise BadInput("bad_senml", "a must-understand label ('_' suffix) is not supported")


class Parser:
    """Turns one MQTT message into runs of readings for the engine, or raises BadInput.

    JSON arrays: an array of objects gives one reading per object, each with its own
    timestamp. An array of numbers is one multivariate reading (at arrival time) only
    when its length equals len(value_fields) > 1; any other array of numbers is
    rejected as "wrong_type" because all its readings would share one arrival
    timestamp and the engine would drop all but one as duplicates.

    In "auto" format an array is read as a SenML pack when its first element is an
    object with a SenML name, base or value label (bn, bt, bv, n, v, vs, vb, vd) that
    is not one of the configured fields.
    """

    def __init__(self, template: TopicTemplate, spec: PayloadSpec) -> None:
        self.template = template
        self.spec = spec
        self._fields = spec.value_fields
        self._width = len(spec.value_fields)
        self._time_field = spec.time_field
        self._read_time = _TIME_READERS[spec.time_unit]
        self._senml_markers = _SENML_BASE_OR_VALUE - {*spec.value_fields, spec.time_field}
        self._body: Callable[[str, bytes, float], list[Run]] = {
            "auto": self._auto,
            "number": self._number_body,
            "json": self._object_body,
            "array": self._array_body,
            "senml": self._senml_body,
        }[spec.format]

    def __reduce__(self) -> tuple:
        """Pickled by its configuration (it holds bound methods): the receiver process gets one."""
        return Parser, (self.template, self.spec)

    def parse(self, topic: str, payload: bytes, arrival: float) -> list[Run]:
        """Readings in `payload` for the stream named by `topic`; `arrival` is trusted epoch seconds."""
        stream = self.template.stream_of(topic)
        if len(payload) > self.spec.max_bytes:
            raise BadInput("oversized", f"{len(payload)} bytes > max_bytes {self.spec.max_bytes}")
        return self._body(stream, payload, arrival)

    def _auto(self, stream: str, payload: bytes, arrival: float) -> list[Run]:
        head = payload[:1]
        if head.isspace():
            head = payload.lstrip()[:1]
        if head == b"[":
            items = _load_json(payload)
            if self._is_senml(items):
                if self._width != 1:
                    raise BadInput("wrong_type", f"a SenML pack, but {self._width} value fields")
                return self._senml(stream, items, arrival)
            return [self._array(stream, items, arrival)]
        if head == b"{":
            return self._object_body(stream, payload, arrival)
        return self._number_body(stream, payload, arrival)

    def _is_senml(self, items: object) -> bool:
        return (
            type(items) is list
            and len(items) > 0
            and type(items[0]) is dict
            and not self._senml_markers.isdisjoint(items[0])
        )

    def _number_body(self, stream: str, payload: bytes, arrival: float) -> list[Run]:
        value = _bare_number(payload)
        if self._width != 1:
            raise BadInput("wrong_type", f"a bare number, but {self._width} value fields")
        return [Run(stream, [arrival], [(value,)])]

    def _object_body(self, stream: str, payload: bytes, arrival: float) -> list[Run]:
        ts, values = self._object(_load_json(payload), arrival)
        return [Run(stream, [ts], [values])]

    def _array_body(self, stream: str, payload: bytes, arrival: float) -> list[Run]:
        return [self._array(stream, _load_json(payload), arrival)]

    def _senml_body(self, stream: str, payload: bytes, arrival: float) -> list[Run]:
        return self._senml(stream, _load_json(payload), arrival)

    def _object(self, obj: object, arrival: float) -> tuple[float, tuple[float, ...]]:
        """(timestamp, values) of one reading's object."""
        if type(obj) is not dict:
            raise BadInput("wrong_type", f"expected a JSON object, got {type(obj).__name__}")
        try:
            if self._width == 1:  # the common case without a list comprehension's frame
                name = self._fields[0]
                values: tuple[float, ...] = (_number(obj[name], name),)
            else:
                values = tuple([_number(obj[f], f) for f in self._fields])
        except KeyError as e:
            raise BadInput("missing_field", f"no {e.args[0]!r} in the object") from None
        if self._time_field in obj:
            return self._read_time(obj[self._time_field]), values
        return arrival, values

    def _array(self, stream: str, items: object, arrival: float) -> Run:
        if type(items) is not list:
            raise BadInput("wrong_type", f"expected a JSON array, got {type(items).__name__}")
        self._check_count(items)
        if type(items[0]) is dict:
            columns = self._columns(items)
            if columns is not None:
                return Run(stream, *columns)
            ts, values = zip(*[self._object(item, arrival) for item in items], strict=True)
            return Run(stream, list(ts), list(values))
        if self._width > 1 and len(items) == self._width:
            return Run(stream, [arrival], [tuple([_number(v, "array item") for v in items])])
        raise BadInput(
            "wrong_type",
            f"an array of {len(items)} non-objects; only arrays of objects or of exactly "
            f"{self._width} numbers (when several value fields) are readings",
        )

    def _columns(self, items: list) -> tuple[list[float], list[tuple[float, ...]]] | None:
        """An array of objects read a field at a time: what `_object` gives for each, or None.

        None (then each object is read on its own, and errors are named) for anything but
        objects whose values and timestamps are all JSON numbers (timestamps in seconds or
        milliseconds, in range). This is the shape a device batching its readings sends,
        and reading it by columns (C-level passes over the array) instead of by objects
        is what lets a pack of readings cost a fraction of as many single messages.
        """
        unit = self.spec.time_unit
        if unit == "iso":
            return None
        try:
            times = [item[self._time_field] for item in items]
            columns = [[item[f] for item in items] for f in self._fields]
            if not _NUMBERS.issuperset(map(type, times)):
                return None
            for i, column in enumerate(columns):
                kinds = set(map(type, column))
                if kinds != _FLOAT:
                    if not _NUMBERS.issuperset(kinds):
                        return None
                    columns[i] = list(map(float, column))
            ts = np.array(times, np.float64)
        except (KeyError, TypeError, OverflowError):  # a non-object, a field missing, a huge int
            return None
        if unit == "ms":
            ts /= 1000.0
        elif unit == "auto":
            ts = np.where(ts > MS_ABOVE, ts / 1000.0, ts)
        if not ((ts >= MIN_TS) & (ts <= MAX_TS)).all():  # also false for NaN
            return None
        return ts.tolist(), list(zip(*columns, strict=True))

    def _check_count(self, items: list) -> None:
        if not items:
            raise BadInput("empty", "an empty array")
        if len(items) > self.spec.max_readings:
            raise BadInput(
                "too_many_readings", f"{len(items)} > max_readings {self.spec.max_readings}"
            )

    def _senml(self, stream: str, pack: object, arrival: float) -> list[Run]:
        if type(pack) is not list:
            raise BadInput("bad_senml", f"a pack is an array, not {type(pack).__name__}")
        self._check_count(pack)
        return self._senml_columns(stream, pack, arrival) or self._senml_records(
            stream, pack, arrival
        )

    def _senml_columns(self, stream: str, pack: list, arrival: float) -> list[Run] | None:
        """A pack of one reading per sensor, read a field at a time: what `_senml_records`
        gives for it, or None.

        None (then each record is resolved on its own, and errors are named) for
        anything but the shape a device reporting its sensors sends: base name and time
        only in the first record, then every record a distinct "n" and a numeric "v".
        As for arrays, C-level passes over the pack instead of a Python loop over its
        records are what make a pack cost a fraction of as many single messages.
        """
        first = pack[0]
        if type(first) is not dict or not _SENML_PLAIN_FIRST.issuperset(first):
            return None
        try:
            if not all(map(_SENML_PLAIN.issuperset, islice(pack, 1, None))):
                return None
            names = [record["n"] for record in pack]
            values = [record["v"] for record in pack]
        except (KeyError, TypeError):  # a record that is not an object, or lacks n or v
            return None
        base_name, base_time = first.get("bn", ""), first.get("bt", 0.0)
        if (
            set(map(type, names)) != _STR
            or type(base_name) is not str
            or type(base_time) not in _NUMBERS
            or len(set(names)) != len(names)
            or (not base_name and "" in names)  # that record's stream is the topic's
        ):
            return None
        kinds = set(map(type, values))
        try:
            base_time = float(base_time)
            if kinds != _FLOAT:
                if not _NUMBERS.issuperset(kinds):
                    return None
                values = list(map(float, values))
        except OverflowError:  # a huge integer: the records say what becomes of it
            return None
        ts = arrival + base_time if base_time < SENML_RELATIVE_BELOW else base_time
        prefix = f"{stream}/{base_name}"
        if (
            not MIN_TS <= ts <= MAX_TS  # also false for NaN
            or len(prefix) + max(map(len, names)) > MAX_STREAM_ID
            or _BAD_ID_CHAR.search(prefix)
            or _BAD_ID_CHAR.search("".join(names))  # a character class: each, or all joined
        ):
            return None
        return [
            Run(prefix + name, [ts], [(value,)]) for name, value in zip(names, values, strict=True)
        ]

    def _senml_records(self, stream: str, pack: list, arrival: float) -> list[Run]:
        """RFC 8428 resolution: base name/time/value carry forward to the records after them.

        Records without "v" (string, boolean and data values) are skipped, since the model
        only reads numbers, but a pack must yield at least one reading. One run per name,
        in the order of their first records.
        """
        base_name, base_time, base_value = "", 0.0, 0.0
        runs: dict[str, Run] = {}
        for record in pack:
            _check_senml_record(record)
            if "bn" in record:
                base_name = _senml_text(record, "bn")
            if "bt" in record:
                base_time = _senml_number(record, "bt")
            if "bv" in record:
                base_value = _senml_number(record, "bv")
            if "v" not in record:
                continue
            name = base_name + _senml_text(record, "n") if "n" in record else base_name
            t = base_time + _senml_number(record, "t") if "t" in record else base_time
            ts = _in_range(arrival + t if t < SENML_RELATIVE_BELOW else t)
            value = base_value + _senml_number(record, "v")
            run = runs.get(name)
            if run is None:
                sid = check_stream_id(f"{stream}/{name}" if name else stream)
                runs[name] = Run(sid, [ts], [(value,)])
            else:
                run.ts.append(ts)
                run.values.append((value,))
        if not runs:
            raise BadInput("bad_senml", "no record with a numeric value")
        return list(runs.values())
