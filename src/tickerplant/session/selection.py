"""What one client of the ``events`` stream gets of a run of records: its symbols, conflated.

Records are fixed-size (:mod:`tickerplant.wire.events`), so a run of them from the journal is an
array, and both steps are a few vectorised passes over it, once per client group per batch
(live) or per client per chunk (catching up): never one Python object per record.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tickerplant.wire import events as ev

_RAW = np.dtype((np.void, ev.BLOCK_SIZE))
Locates = npt.NDArray[np.uint16]


def _blocks(data: bytes) -> npt.NDArray[np.void]:
    return np.frombuffer(data, dtype=ev.BLOCK)


def select(data: bytes, locates: Locates | None, since: dict[int, int] | None = None
           ) -> tuple[int, bytes]:  # fmt: skip
    """The blocks of ``data`` for ``locates`` (sorted; None: every symbol) and the market
    (locate 0: system events, notices); a locate in ``since`` only from that sequence number on
    (its image covered the ones before). Returns (records, blocks)."""
    if locates is None and not since:
        return len(data) // ev.BLOCK_SIZE, data
    blocks = _blocks(data)
    where = blocks["locate"]
    keep = np.ones(where.shape[0], dtype=bool)
    if locates is not None:
        keep = (where == 0) | np.isin(where, locates)
    for locate, first in (since or {}).items():
        keep &= ~((where == locate) & (blocks["sequence"] < first))
    n = int(np.count_nonzero(keep))
    if n == blocks.shape[0]:
        return n, data
    return n, blocks.view(_RAW)[keep].tobytes()


def conflate(data: bytes) -> tuple[int, bytes, int]:
    """``data`` with each BBO change dropped that a later BBO change of its symbol replaces
    before any other record of that symbol (so a symbol's latest BBO goes out before its next
    trade or status, and everything else goes out untouched). Returns (records, blocks,
    dropped)."""
    blocks = _blocks(data)
    n = blocks.shape[0]
    if n < 2:
        return n, data, 0
    where = blocks["locate"].astype(np.int64)
    bbo = blocks["kind"] == ev.BBO
    order = np.argsort(where, kind="stable")  # by symbol, in stream order within each
    ordered = where[order]
    same_next = np.zeros(n, dtype=bool)
    same_next[:-1] = ordered[1:] == ordered[:-1]
    next_bbo = np.zeros(n, dtype=bool)
    next_bbo[:-1] = bbo[order][1:]
    drop = np.zeros(n, dtype=bool)
    drop[order] = bbo[order] & same_next & next_bbo
    dropped = int(np.count_nonzero(drop))
    if not dropped:
        return n, data, 0
    return n - dropped, blocks.view(_RAW)[~drop].tobytes(), dropped
