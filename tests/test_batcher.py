"""Waves: each stream at most once, per-stream order kept, no stream starved, bounded queue."""

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.batcher import Batcher, Item


def items(streams: list[str]) -> list[Item]:
    return [Item(0, s, float(i), (float(i),)) for i, s in enumerate(streams)]


@given(st.lists(st.sampled_from("abcdefg"), max_size=200), st.integers(min_value=1, max_value=5))
@settings(max_examples=100, deadline=None)
def test_waves_keep_order_and_take_each_stream_once(streams, max_size):
    b = Batcher(max_size=max_size, max_delay_s=0.0, capacity=1000)
    assert b.offer(items(streams))
    out = []
    while wave := b.next_wave(flush=True):
        keys = [it.stream for it in wave]
        assert len(keys) == len(set(keys)) <= max_size
        out.extend(wave)
    assert sorted(it.ts for it in out) == list(range(len(streams)))
    for s in set(streams):
        ts = [it.ts for it in out if it.stream == s]
        assert ts == sorted(ts)
    assert b.depth() == 0


def test_a_wave_waits_for_its_delay_unless_full():
    b = Batcher(max_size=3, max_delay_s=1.0, capacity=100)
    b.offer(items(["a", "b"]))
    assert b.next_wave(now=0.0) == []
    assert b.next_wave(now=0.5) == []
    assert [it.stream for it in b.next_wave(now=1.0)] == ["a", "b"]
    b.offer(items(["a", "b", "c"]))
    assert len(b.next_wave(now=2.0)) == 3  # full: no need to wait


def test_a_backlogged_stream_does_not_starve_others():
    b = Batcher(max_size=2, max_delay_s=0.0, capacity=100)
    b.offer(items(["a"] * 5 + ["b", "c"]))
    first, second = b.next_wave(flush=True), b.next_wave(flush=True)
    assert [it.stream for it in first] == ["a", "b"]
    assert "c" in [it.stream for it in second]


def test_offer_is_all_or_nothing_when_full():
    b = Batcher(max_size=2, max_delay_s=0.0, capacity=3)
    assert b.offer(items(["a", "b"]))
    assert not b.offer(items(["c", "d"]))
    assert b.depth() == 2
