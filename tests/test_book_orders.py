"""The order table (Swiss-table groups) against a dict: lookups, DELETED slots, rebuilds."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tickerplant.book import orders as table

_SLOTS = 64  # 8 groups: small enough that groups fill, overflow and collect DELETED slots


class Table:
    """The table as the engine drives it: rebuilt in place once live + DELETED reach the limit."""

    def __init__(self, slots: int = _SLOTS) -> None:
        self.slots = slots
        self.limit = int(0.8 * slots)
        self.deleted = 0
        self.live = 0
        self.rebuilds = 0
        self.ctrl = np.full(slots // table.GROUP, table.ALL_EMPTY, dtype=np.uint64)
        self.rows = np.zeros(2 * slots, dtype=np.int64)
        self.shift = table.group_shift(slots)

    def find(self, key: int) -> int:
        with np.errstate(over="ignore"):  # plain Python: hashing wraps in uint64 on purpose
            return int(table.find(self.ctrl, self.rows, key, self.shift))

    def value(self, key: int) -> int | None:
        slot = self.find(key)
        return None if slot < 0 else int(self.rows[2 * slot + 1])

    def put(self, key: int, value: int) -> None:
        if self.live + self.deleted >= self.limit:
            self.rebuild()
        with np.errstate(over="ignore"):
            self.deleted -= int(table.insert(self.ctrl, self.rows, key, value, self.shift))
        self.live += 1

    def drop(self, key: int) -> None:
        self.deleted += int(table.erase(self.ctrl, self.find(key)))
        self.live -= 1

    def rebuild(self) -> None:
        ctrl = np.full_like(self.ctrl, table.ALL_EMPTY)
        rows = np.zeros_like(self.rows)
        with np.errstate(over="ignore"):
            table.rehash(self.ctrl, self.rows, ctrl, rows, self.shift)
        self.ctrl, self.rows, self.deleted = ctrl, rows, 0
        self.rebuilds += 1

    def counts(self) -> tuple[int, int]:
        """(full, DELETED) slots, read from the control bytes."""
        ctrl = self.ctrl.view(np.uint8)
        return int((ctrl < 0x80).sum()), int((ctrl == table.DELETED).sum())


def _same_group(count: int, shift: int) -> list[int]:
    """``count`` keys whose probes all start at the same group."""
    keys: list[int] = []
    group = None
    key = 1
    while len(keys) < count:
        with np.errstate(over="ignore"):
            g = table.group_of(key, shift)
        if group is None:
            group = g
        if g == group:
            keys.append(key)
        key += 1
    return keys


def test_a_full_group_overflows_and_its_erases_leave_deleted_slots() -> None:
    t = Table()
    *keys, late = _same_group(13, t.shift)  # 8 fill the home group, 4 spill into the next one
    for i, key in enumerate(keys):
        t.put(key, 1000 + i)
    assert [t.value(k) for k in keys] == [1000 + i for i in range(12)]
    # The home group has no EMPTY slot, so erasing there must not end the spilled keys' probes.
    t.drop(keys[0])
    t.drop(keys[3])
    assert t.deleted == 2 and t.counts() == (10, 2)
    assert t.value(keys[0]) is None and t.value(keys[3]) is None
    assert [t.value(k) for k in keys[8:]] == [1008, 1009, 1010, 1011]
    # The spill group has EMPTY slots left: an erase there frees the slot outright.
    t.drop(keys[9])
    assert t.deleted == 2 and t.counts() == (9, 2)
    # An insert takes the first free slot of the home group, a DELETED one, and uncounts it.
    t.put(late, 7)
    assert t.deleted == 1 and t.value(late) == 7
    t.rebuild()
    assert t.counts() == (10, 0)
    assert [t.value(k) for k in keys if k not in (keys[0], keys[3], keys[9])] == [
        1000 + i for i in range(12) if i not in (0, 3, 9)
    ]
    assert t.value(late) == 7


def test_a_missing_key_is_not_found_in_an_empty_or_full_table() -> None:
    t = Table()
    assert t.find(12345) == -1
    for key in range(1, t.limit + 1):
        t.put(key << 20, key)
    assert t.find(12345) == -1
    assert all(t.value(key << 20) == key for key in range(1, t.limit + 1))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 200)), max_size=400))
def test_any_sequence_of_inserts_and_erases_agrees_with_a_dict(ops: list[tuple[bool, int]]) -> None:
    t = Table()
    model: dict[int, int] = {}
    for i, (add, n) in enumerate(ops):
        key = n * 7919 + (n << 40)  # keys far apart and near: both hash paths
        if add and key not in model and len(model) < t.limit:
            t.put(key, i)
            model[key] = i
        elif not add and key in model:
            t.drop(key)
            del model[key]
        assert t.value(key) == model.get(key)
    assert all(t.value(k) == v for k, v in model.items())
    full, deleted = t.counts()
    assert (full, deleted) == (len(model), t.deleted)
