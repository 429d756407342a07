"""Waves: each stream at most once, per-stream order kept, no stream starved, bounded queue."""

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.batcher import Batcher, Item


def items(streams: list[str]) -> list[Item]:
    return [Item(0, s, [float(i)], [(float(i),)]) for i, s in enumerate(streams)]


def run(stream: str, start: int, n: int) -> Item:
    """One message's `n` readings of `stream`, numbered from `start`."""
    return Item(0, stream, [float(start + i) for i in range(n)], [(float(i),) for i in range(n)])


def drain(b: Batcher) -> list:
    waves = []
    while wave := b.next_wave(flush=True):
        waves.append(wave)
    return waves


@given(
    st.lists(st.tuples(st.sampled_from("abcdefg"), st.integers(1, 5)), max_size=60),
    st.integers(min_value=1, max_value=5),
)
@settings(max_examples=100, deadline=None)
def test_waves_keep_order_and_take_each_stream_once(runs, max_size):
    b = Batcher(max_size=max_size, max_delay_s=0.0, capacity=1000)
    offered, start = [], 0
    for stream, n in runs:
        offered.append(run(stream, start, n))
        start += n
    assert b.offer(offered)
    assert b.depth() == start
    out, finished = [], []
    for wave in drain(b):
        keys = [it.stream for it in wave.items]
        assert len(keys) == len(set(keys)) <= max_size
        out.extend(zip(keys, wave.ts, strict=True))
        finished.extend(wave.finished)
    assert sorted(ts for _, ts in out) == list(range(start))
    for s in {s for s, _ in runs}:
        ts = [t for k, t in out if k == s]
        assert ts == sorted(ts)
    # each run is finished once, in the wave of its last reading
    assert sorted(map(id, finished)) == sorted(map(id, offered))
    assert b.depth() == 0


def test_a_run_gives_one_reading_per_wave_and_is_finished_with_its_last():
    b = Batcher(max_size=10, max_delay_s=0.0, capacity=100)
    long, short = run("a", 0, 3), run("b", 10, 1)
    b.offer([long, short])
    waves = drain(b)
    assert [w.ts for w in waves] == [[0.0, 10.0], [1.0], [2.0]]
    assert [w.finished for w in waves] == [[short], [], [long]]


def test_a_wave_waits_for_its_delay_unless_full():
    b = Batcher(max_size=3, max_delay_s=1.0, capacity=100)
    b.offer(items(["a", "b"]))
    assert not b.next_wave(now=0.0)
    assert not b.next_wave(now=0.5)
    assert [it.stream for it in b.next_wave(now=1.0).items] == ["a", "b"]
    b.offer(items(["a", "b", "c"]))
    assert len(b.next_wave(now=2.0)) == 3  # full: no need to wait


def test_a_backlogged_stream_does_not_starve_others():
    b = Batcher(max_size=2, max_delay_s=0.0, capacity=100)
    b.offer(items(["a"] * 5 + ["b", "c"]))
    first, second = b.next_wave(flush=True), b.next_wave(flush=True)
    assert [it.stream for it in first.items] == ["a", "b"]
    assert "c" in [it.stream for it in second.items]


def test_offer_is_all_or_nothing_when_full_counting_readings():
    b = Batcher(max_size=2, max_delay_s=0.0, capacity=5)
    assert b.offer([run("a", 0, 3)])
    assert not b.offer([run("b", 0, 1), run("c", 0, 2)])
    assert b.depth() == 3
    assert b.offer([run("b", 0, 2)])
    assert b.depth() == 5
