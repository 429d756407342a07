"""Rounds of waves: each stream at most once a wave, per-stream order kept, no stream
starved, a run taken `max_run` readings at a time, bounded queue."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.batcher import Batcher, Item, Round


def items(streams: list[str]) -> list[Item]:
    return [Item(0, s, [float(i)], [(float(i),)]) for i, s in enumerate(streams)]


def run(stream: str, start: int, n: int, route: int = 0, packed: bool = False) -> Item:
    """One message's `n` readings of `stream`, numbered from `start` (ts and value alike);
    `packed`: as numpy columns, the way a long run parsed in the receiver arrives."""
    ts = [float(start + i) for i in range(n)]
    if packed:
        return Item(route, stream, np.array(ts), np.array(ts)[:, None])
    return Item(route, stream, ts, [(t,) for t in ts])


def drain(b: Batcher) -> list[Round]:
    rounds = []
    while batch := b.next_round(flush=True):
        rounds.append(batch)
    return rounds


def waves(batch: Round) -> list[list[tuple[int, str, float, float]]]:
    """Each wave of a round as (route, stream, ts, value) rows, routes one after another."""
    out: list[list[tuple[int, str, float, float]]] = []
    for route, block in batch.blocks.items():
        for j, (ids, ts, values) in enumerate(block.waves()):
            while len(out) <= j:
                out.append([])
            out[j].extend((route, s, t, v) for s, t, v in zip(ids, ts, values[:, 0], strict=True))
    return out


@given(
    st.lists(
        st.tuples(st.integers(0, 1), st.sampled_from("abcdefg"), st.integers(1, 9), st.booleans()),
        max_size=60,
    ),
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=1, max_value=4),
)
@settings(max_examples=200, deadline=None)
def test_rounds_keep_order_and_take_each_stream_once_a_wave(runs, max_size, max_run):
    """Whatever mix of list runs and packed (numpy) runs is queued."""
    b = Batcher(max_size=max_size, max_delay_s=0.0, capacity=1000, max_run=max_run)
    offered, start = [], 0
    for route, stream, n, packed in runs:
        offered.append(run(stream, start, n, route, packed))
        start += n
    assert b.offer(offered)
    assert b.depth() == start
    out, finished = [], []
    for batch in drain(b):
        assert len(batch) == sum(len(w) for w in waves(batch))
        streams = {(route, s) for w in waves(batch) for route, s, _, _ in w}
        assert len(streams) <= max_size
        for wave in waves(batch):
            keys = [(route, s) for route, s, _, _ in wave]
            assert len(keys) == len(set(keys))
            out.extend(wave)
        finished.extend(batch.finished)
    # every reading once, its value still with its ts
    assert sorted(ts for *_, ts, _ in out) == list(range(start))
    assert all(ts == v for *_, ts, v in out)
    for key in {(route, s) for route, s, _, _ in runs}:
        ts = [t for route, s, t, _ in out if (route, s) == key]
        assert ts == sorted(ts)
    # each run is finished once, in the round of its last reading
    assert sorted(map(id, finished)) == sorted(map(id, offered))
    assert b.depth() == 0


def test_a_run_is_taken_max_run_readings_a_round_and_finished_with_its_last():
    b = Batcher(max_size=10, max_delay_s=0.0, capacity=100, max_run=2)
    long, short = run("a", 0, 5), run("b", 10, 1)
    b.offer([long, short])
    rounds = drain(b)
    assert [[[t for _, _, t, _ in w] for w in waves(r)] for r in rounds] == [
        [[0.0, 10.0], [1.0]],
        [[2.0], [3.0]],
        [[4.0]],
    ]
    assert [r.finished for r in rounds] == [[short], [], [long]]


def test_the_longest_runs_lead_each_block_so_a_wave_is_a_prefix():
    b = Batcher(max_size=10, max_delay_s=0.0, capacity=100, max_run=8)
    b.offer([run("a", 0, 1), run("b", 10, 3), run("c", 20, 2)])
    block = b.next_round(flush=True).blocks[0]
    assert block.streams == ["b", "c", "a"]
    assert list(block.counts) == [3, 2, 1]
    assert [list(ids) for ids, _, _ in block.waves()] == [["b", "c", "a"], ["b", "c"], ["b"]]
    assert np.array_equal(next(iter(block.waves()))[1], [10.0, 20.0, 0.0])


def test_a_round_waits_for_its_delay_unless_a_wave_is_full():
    b = Batcher(max_size=3, max_delay_s=1.0, capacity=100)
    b.offer(items(["a", "b"]))
    assert not b.next_round(now=0.0)
    assert not b.next_round(now=0.5)
    assert not b.wide()
    assert b.next_round(now=1.0).blocks[0].streams == ["a", "b"]
    b.offer(items(["a", "b", "c"]))
    assert b.wide()
    assert len(b.next_round(now=2.0)) == 3  # full: no need to wait


def test_a_backlogged_stream_does_not_starve_others():
    b = Batcher(max_size=2, max_delay_s=0.0, capacity=100)
    b.offer(items(["a"] * 5 + ["b", "c"]))
    first, second = b.next_round(flush=True), b.next_round(flush=True)
    assert first.blocks[0].streams == ["a", "b"]
    assert "c" in second.blocks[0].streams


def test_offer_is_all_or_nothing_when_full_counting_readings():
    b = Batcher(max_size=2, max_delay_s=0.0, capacity=5)
    assert b.offer([run("a", 0, 3)])
    assert not b.offer([run("b", 0, 1), run("c", 0, 2)])
    assert b.depth() == 3
    assert b.offer([run("b", 0, 2)])
    assert b.depth() == 5
    assert b.full()
