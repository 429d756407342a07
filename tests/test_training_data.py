"""CSV loading for training: real-world messiness is reported, unusable files are clear errors."""

from __future__ import annotations

import string
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from training.data import (
    DataError,
    Series,
    data_fingerprint,
    expand_sources,
    load_csv,
    load_many,
    sniff_delimiter,
    univariate,
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def test_nab_style_file_loads_with_iso_timestamps(tmp_path):
    start = 1_400_000_000
    rows = [f"{iso(start + 300 * i)},{i * 1.5}" for i in range(50)]
    path = write(tmp_path, "nab.csv", "timestamp,value\n" + "\n".join(rows) + "\n")
    series, report = load_csv(path)
    assert series.name == "nab"
    assert series.channels == ["value"]
    assert series.labels is None
    np.testing.assert_array_equal(series.ts, start + 300.0 * np.arange(50))
    np.testing.assert_array_equal(series.values[:, 0], 1.5 * np.arange(50))
    assert (report.rows, report.kept, sum(report.dropped.values())) == (50, 50, 0)
    assert report.median_period_s == 300.0
    assert report.long_gaps == 0


def test_semicolon_multivariate_with_decimal_comma_labels_and_epoch_ms(tmp_path):
    text = (
        "device;Time;temp;humidity;anomaly\n"
        "a;1700000000000;21,5;40,0;0\n"
        "a;1700000060000;21,7;41,5;1\n"
        "a;1700000120000;22,0;39,0;false\n"
    )
    series, report = load_csv(write(tmp_path, "m.csv", text))
    assert report.delimiter == ";"
    assert report.timestamp_column == "Time"
    assert series.channels == ["temp", "humidity"]  # "device" is text: not a value column
    assert report.label_column == "anomaly"
    np.testing.assert_array_equal(series.ts, [1.7e9, 1.7e9 + 60, 1.7e9 + 120])
    np.testing.assert_allclose(series.values, [[21.5, 40.0], [21.7, 41.5], [22.0, 39.0]])
    np.testing.assert_array_equal(series.labels, [False, True, False])


def test_tab_separated_with_chosen_columns_and_first_column_time(tmp_path):
    text = "when\ta\tb\tc\n" + "".join(f"{10 * i}\t{i}\t{2 * i}\t{3 * i}\n" for i in range(5))
    series, report = load_csv(write(tmp_path, "t.tsv", text), columns=["c", "a"])
    assert report.delimiter == "\t"
    assert report.timestamp_column == "when"
    assert series.channels == ["c", "a"]
    np.testing.assert_array_equal(series.values, np.c_[3 * np.arange(5), np.arange(5)])
    np.testing.assert_array_equal(series.ts, 10.0 * np.arange(5))


def test_bad_rows_are_dropped_and_counted_by_reason(tmp_path):
    text = (
        "ts,value\n"
        "0,1.0\n"
        "60,\n"  # missing
        "120,NaN\n"  # missing
        "180,abc\n"  # bad value
        "240,inf\n"  # bad value (not finite)
        "not-a-time,2.0\n"  # bad timestamp
        "300,3.0,extra\n"  # wrong field count
        "\n"  # blank: skipped, not a row
        "360,4.0\n"
        "360,5.0\n"  # duplicate timestamp
        "200,6.0\n"  # goes back in time
        "420,7.0\n"
        "5000,8.0\n"  # a long gap: kept, reported
    )
    series, report = load_csv(write(tmp_path, "bad.csv", text))
    assert dict(report.dropped) == {
        "missing_value": 2,
        "bad_value": 2,
        "bad_timestamp": 1,
        "wrong_field_count": 1,
        "non_increasing_timestamp": 2,
    }
    assert report.rows == 12
    assert report.kept == 4 == report.rows - sum(report.dropped.values())
    np.testing.assert_array_equal(series.ts, [0, 360, 420, 5000])
    np.testing.assert_array_equal(series.values[:, 0], [1, 4, 7, 8])
    assert report.long_gaps == 1  # 420 -> 5000 against a median gap of 360 s
    printed = str(report)
    assert "2 missing_value" in printed and "bad.csv" in printed


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("timestamp,name\n0,a\n1,b\n", "no numeric value column"),
        ("timestamp\n0\n1\n", "no numeric value column"),
        ("timestamp,value\n", "no data rows"),
        ("timestamp,value\nx,1\ny,2\n", "no usable rows"),
    ],
)
def test_unusable_files_are_errors_naming_the_file_and_why(tmp_path, text, why):
    path = write(tmp_path, "broken.csv", text)
    with pytest.raises(DataError, match=why) as e:
        load_csv(path)
    assert str(path) in str(e.value)


def test_unknown_or_clashing_columns_are_errors(tmp_path):
    path = write(tmp_path, "x.csv", "timestamp,value,label\n0,1,0\n")
    with pytest.raises(DataError, match="no column"):
        load_csv(path, columns=["pressure"])
    with pytest.raises(DataError, match="timestamp or label"):
        load_csv(path, columns=["label"])


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv"):
        load_csv(tmp_path / "nope.csv")


def test_epoch_units_are_told_apart_by_magnitude(tmp_path):
    seconds = 1_600_000_000 + 60 * np.arange(4)
    loaded = []
    for unit, scale in (("s", 1), ("ms", 1_000), ("us", 1_000_000)):
        rows = "".join(f"{int(t * scale)},1\n" for t in seconds)
        loaded.append(load_csv(write(tmp_path, f"{unit}.csv", "ts,v\n" + rows))[0].ts)
    for ts in loaded:
        np.testing.assert_array_equal(ts, seconds)


def test_iso_timestamps_with_zones_are_converted_to_utc(tmp_path):
    text = "time,v\n2024-01-01T00:00:00Z,1\n2024-01-01T02:00:00+01:00,2\n2024-01-01,3\n"
    series, report = load_csv(write(tmp_path, "z.csv", text))
    base = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    np.testing.assert_array_equal(series.ts, [base, base + 3600])  # the date-only row is earlier
    assert report.dropped["non_increasing_timestamp"] == 1


def test_sniffing_prefers_the_separator_giving_consistent_fields():
    assert sniff_delimiter("a;b;c\n1,5;2,5;3\n") == ";"
    assert sniff_delimiter("a,b\n1,2\n") == ","
    assert sniff_delimiter("a\tb\n1\t2\n") == "\t"


def test_load_many_walks_folders_and_globs_and_names_by_relative_path(tmp_path):
    body = "timestamp,value\n0,1\n60,2\n"
    write(tmp_path, "data/site_a/s1.csv", body)
    write(tmp_path, "data/site_b/s1.csv", body)
    write(tmp_path, "data/notes.txt", "not data")
    printed: list[str] = []
    series, reports = load_many([tmp_path / "data"], echo=printed.append)
    assert [s.name for s in series] == ["site_a/s1", "site_b/s1"]
    assert len(reports) == len(printed) == 2
    by_glob = expand_sources([str(tmp_path / "data" / "*" / "s1.csv")])
    assert [name for _, name in by_glob] == ["site_a/s1", "site_b/s1"]
    with pytest.raises(DataError, match="no CSV files"):
        load_many([tmp_path / "data" / "site_a" / "*.json"], echo=None)


def test_univariate_splits_channels_into_streams():
    ts = np.arange(3.0)
    s = Series("dev", ts, np.arange(6.0).reshape(3, 2), ["a", "b"], np.array([0, 1, 0], bool))
    parts = univariate([s])
    assert [p.name for p in parts] == ["dev/a", "dev/b"]
    assert all(p.channels == ["value"] for p in parts)
    np.testing.assert_array_equal(parts[1].values[:, 0], [1, 3, 5])
    np.testing.assert_array_equal(parts[0].labels, s.labels)


def test_fingerprint_identifies_the_arrays():
    a = Series("a", np.arange(3.0), np.ones((3, 1)), ["v"])
    b = Series("renamed", np.arange(3.0), np.ones((3, 1)), ["v"])
    c = Series("a", np.arange(3.0), np.full((3, 1), 2.0), ["v"])
    assert data_fingerprint([a]) == data_fingerprint([b])
    assert data_fingerprint([a]) != data_fingerprint([c])
    assert data_fingerprint([a, c]) != data_fingerprint([c, a])


CELL = st.one_of(
    st.integers(-(10**15), 10**15).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", "NaN", "x", "2024-01-01", "2024-13-01T00:00", "1,5", " 7 "]),
    st.text(alphabet=string.printable, max_size=6),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    header=st.lists(
        st.sampled_from(["timestamp", "value", "x", "label", "t"]), min_size=1, max_size=4
    ),
    rows=st.lists(st.lists(CELL, min_size=0, max_size=5), max_size=30),
    delimiter=st.sampled_from([",", ";", "\t"]),
)
def test_any_csv_either_loads_consistently_or_is_a_data_error(tmp_path, header, rows, delimiter):
    text = "\n".join(delimiter.join(cells) for cells in [header, *rows]) + "\n"
    path = write(tmp_path, "fuzz.csv", text)
    try:
        series, report = load_csv(path)
    except DataError as e:
        assert str(path) in str(e)
        return
    assert report.kept == len(series.ts) >= 1
    assert report.kept + sum(report.dropped.values()) == report.rows
    assert np.all(np.diff(series.ts) > 0)
    assert np.all(np.isfinite(series.values))
    assert series.values.shape == (report.kept, len(series.channels))
