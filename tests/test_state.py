"""The state store's id map: rows for ids, least-recently-seen eviction, the order a snapshot keeps."""

from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.state import StateStore


class ReferenceLRU:
    """Least-recently-seen eviction, spelled out: the known ids of a wave are seen first."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.held, self.evicted = capacity, OrderedDict(), 0

    def see(self, wave: list[str]) -> list[bool]:
        """Which ids of the wave are new."""
        new = [sid not in self.held for sid in wave]
        for sid in wave:
            if sid in self.held:
                self.held.move_to_end(sid)
        for sid in wave:
            if sid not in self.held:
                if len(self.held) == self.capacity:
                    self.held.popitem(last=False)
                    self.evicted += 1
                self.held[sid] = None
        return new


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 6),
    waves=st.lists(st.lists(st.sampled_from("abcdefghij"), min_size=1, max_size=6, unique=True)),
)
def test_eviction_is_least_recently_seen_first(capacity, waves):
    store, reference = StateStore(capacity, 1, 1), ReferenceLRU(capacity)
    for wave in (w[:capacity] for w in waves):
        rows, new = store.lookup(wave)
        assert new.tolist() == reference.see(wave)
        assert len(set(rows.tolist())) == len(wave)  # distinct streams, distinct rows
        assert [store.ids[r] for r in rows.tolist()] == wave
    ids, rows = store.in_use()
    assert ids == list(reference.held)  # least recently seen first, as a snapshot saves them
    assert [store.ids[r] for r in rows.tolist()] == ids
    assert store.evicted == reference.evicted


def test_new_streams_start_from_zero_state_and_known_ones_keep_theirs():
    store = StateStore(2, 3, 1)
    rows, new = store.lookup(["a", "b"])
    assert new.tolist() == [True, True]
    store.h[rows] = 1.0
    rows, new = store.lookup(["c", "b"])  # a is evicted; c takes its row afresh
    assert new.tolist() == [True, False]
    assert np.all(store.h[rows[0]] == 0.0) and np.all(store.h[rows[1]] == 1.0)


def test_a_wave_larger_than_the_store_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        StateStore(2, 1, 1).lookup(["a", "b", "c"])


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(2, 5),
    waves=st.lists(
        st.sampled_from([["a", "b"], ["a", "b"], ["b", "a"], ["c", "d"], ["a", "c", "e"]])
    ),
)
def test_a_wave_repeating_the_last_one_gets_its_streams_rows(capacity, waves):
    """The rows of a repeated wave are reused only while no stream has moved (an eviction)."""
    store, reference = StateStore(capacity, 1, 1), ReferenceLRU(capacity)
    for wave in (w[:capacity] for w in waves):
        rows, new = store.lookup(list(wave))
        assert new.tolist() == reference.see(wave)
        assert rows.tolist() == [store.index[s] for s in wave]
        rows[:] = -1  # the caller's copy: the next wave's rows do not change with it
    assert store.evicted == reference.evicted
