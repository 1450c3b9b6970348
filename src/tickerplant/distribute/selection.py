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
    """``data`` as a conflated slow consumer gets it: each symbol's latest BBO change only, its
    trades as one trades summary (a lone trade as itself), at the position of the last record
    each replaces; statuses, symbols, broken trades and notices as they are. The state a client
    holds after it is the state after ``data``, and every trade is counted (trades plus
    summaries' counts and volumes). Returns (records, blocks, records not sent as themselves).
    """
    blocks = _blocks(data)
    n = blocks.shape[0]
    if n < 2:
        return n, data, 0
    where = blocks["locate"].astype(np.int64)
    kind = blocks["kind"]
    bbo = kind == ev.BBO
    trades = blocks.view(ev.BLOCKS[ev.TRADE])
    trade = (kind == ev.TRADE) & (trades["trade"] != ev.BROKEN)
    keep = ~(bbo | trade)
    keep[_last_of_each(where, bbo)] = True
    # Trades by symbol, in stream order within each: a run of two or more becomes a summary.
    at = np.flatnonzero(trade)
    at = at[np.argsort(where[at], kind="stable")]
    if at.shape[0]:
        starts = np.flatnonzero(np.diff(where[at], prepend=-1))
        counts = np.diff(np.append(starts, at.shape[0]))
        last = at[starts + counts - 1]
        keep[at[np.repeat(counts == 1, counts)]] = True  # a lone trade goes as itself
        runs = counts > 1
        price = trades["price"][at].astype(np.int64)
        summaries = ev.blocks(ev.TRADES, int(np.count_nonzero(runs)))
        source = blocks[last[runs]]
        for name in ("sequence", "source", "locate", "timestamp"):
            summaries[name] = source[name]
        summaries["count"] = counts[runs]
        summaries["volume"] = np.add.reduceat(trades["size"][at].astype(np.uint64), starts)[runs]
        summaries["last"] = trades["price"][last[runs]]
        summaries["high"] = np.maximum.reduceat(price, starts)[runs]
        summaries["low"] = np.minimum.reduceat(price, starts)[runs]
        placed = last[runs]
    else:
        summaries = ev.blocks(ev.TRADES, 0)
        placed = np.zeros(0, np.int64)
    sent = int(np.count_nonzero(keep)) + summaries.shape[0]
    if sent == n:
        return n, data, 0
    # Kept records and summaries merged by position (a summary where its last trade was).
    position = np.concatenate([np.flatnonzero(keep), placed])
    rows = np.concatenate([blocks.view(_RAW)[keep], summaries.view(_RAW)])
    out = rows[np.argsort(position, kind="stable")]
    return sent, out.tobytes(), n - sent


def _last_of_each(where: npt.NDArray[np.int64], mask: npt.NDArray[np.bool_]
                  ) -> npt.NDArray[np.int64]:  # fmt: skip
    """The index of the last row of each locate among the rows in ``mask``."""
    at = np.flatnonzero(mask)
    _, first = np.unique(where[at][::-1], return_index=True)
    out: npt.NDArray[np.int64] = at[::-1][first]
    return out
