"""The book engine's events as the ``events`` stream's records (:mod:`tickerplant.wire.events`).

One batch of engine events becomes one block stream in message order, a few numpy passes per
batch: every kind is built as its own array, then all are scattered by (message, kind) into
one array of fixed-size blocks. Within one message a trade comes before the BBO change it
caused (the execution, then the book it left).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tickerplant.book.engine import BookEngine, EventBatch
from tickerplant.wire import events as ev
from tickerplant.wire import itch
from tickerplant.wire.blocks import as_array, offsets_of


def records(batch: EventBatch, sequence: int, source: int, blocks: bytes = b""
            ) -> tuple[int, bytes]:  # fmt: skip
    """``batch``'s events as blocks numbered from ``sequence``; ``source`` is the itch number
    of the batch's first message; ``blocks``, the block stream that raised them, adds a symbol
    record for each Stock Directory in it. Returns (records, block stream)."""
    parts = []
    if blocks:
        named = _directories(blocks)
        if named.shape[0]:
            parts.append((ev.SYMBOL, named, named["message"].astype(np.int64) * 2))
    for kind, rows, rank in ((ev.TRADE, batch.trades, 0), (ev.BBO, batch.bbo, 1),
                             (ev.STATUS, batch.status, 0)):  # fmt: skip
        if rows.shape[0]:
            parts.append((kind, rows, rows["message"].astype(np.int64) * 2 + rank))
    total = sum(rows.shape[0] for _, rows, _ in parts)
    if not total:
        return 0, b""
    keys = np.concatenate([key for _, _, key in parts])
    place = np.empty(total, dtype=np.int64)  # where each event goes in message order
    place[np.argsort(keys, kind="stable")] = np.arange(total)
    raw = np.dtype((np.void, ev.BLOCK_SIZE))  # whole blocks: a structured copy skips padding
    out = np.empty(total, dtype=raw)
    at = 0
    for kind, rows, _ in parts:
        n = rows.shape[0]
        block = ev.blocks(kind, n)
        block["sequence"] = sequence + place[at : at + n]
        block["source"] = source + rows["message"]
        block["locate"], block["timestamp"] = rows["locate"], rows["timestamp"]
        if kind == ev.BBO:
            for name in ("bid_price", "bid_size", "ask_price", "ask_size"):
                block[name] = rows[name]
        elif kind == ev.TRADE:
            for name in ("price", "size", "match", "side", "printable"):
                block[name] = rows[name]
            block["trade"] = rows["kind"]
        elif kind == ev.SYMBOL:
            block["symbol"] = rows["symbol"]
        else:
            block["status"], block["code"], block["reason"] = (
                rows["kind"], rows["code"], rows["reason"])
        out[place[at : at + n]] = block.view(raw)
        at += n
    return total, out.tobytes()


_NAMED = np.dtype([("message", "<u4"), ("locate", "<u2"), ("timestamp", "<u8"), ("symbol", "S8")])


def _directories(blocks: bytes) -> npt.NDArray[np.void]:
    """The Stock Directories of a block stream: (message index, locate, timestamp, symbol)."""
    offsets, size = offsets_of(blocks)
    arr = as_array(blocks)
    at = offsets[arr[np.minimum(offsets + 2, max(size - 1, 0))] == ord("R")]
    at = at[at + 2 + itch.LENGTHS["R"] <= size]
    out = np.zeros(at.shape[0], dtype=_NAMED)
    if not at.shape[0]:
        return out
    out["message"] = np.searchsorted(offsets, at)
    p = at + 2  # the message: type, locate (2), tracking (2), timestamp (6), stock (8)
    out["locate"] = (arr[p + 1].astype(np.uint16) << 8) | arr[p + 2]
    stamp = np.zeros(at.shape[0], dtype=np.uint64)
    for i in range(6):
        stamp = (stamp << np.uint64(8)) | arr[p + 5 + i]
    out["timestamp"] = stamp
    out["symbol"] = np.frombuffer(arr[p[:, None] + 11 + np.arange(8)].tobytes(), dtype="S8")
    return out


def images(engine: BookEngine, locates: list[int], sequence: int, source: int,
           depth: int) -> bytes:  # fmt: skip
    """The current state of ``locates`` as image blocks: per locate its symbol, its BBO, its trading
    action and Reg SHO status (when the day gave them), its best ``depth`` levels per side;
    then the market's system event. ``sequence`` and ``source``: the last numbers the state
    includes."""
    out: list[npt.NDArray[np.void]] = []

    def stamp(block: npt.NDArray[np.void], locate: int) -> npt.NDArray[np.void]:
        block["flags"], block["sequence"], block["source"] = ev.IMAGE, sequence, source
        block["locate"] = locate
        return block

    for locate in locates:
        symbol = stamp(ev.blocks(ev.SYMBOL, 1), locate)
        symbol["symbol"] = (engine.symbol(locate) or "").encode("latin-1").ljust(8)
        out.append(symbol)
        bbo = stamp(ev.blocks(ev.BBO, 1), locate)
        (bbo["bid_price"], bbo["bid_size"], bbo["ask_price"], bbo["ask_size"]) = engine.bbo(locate)
        out.append(bbo)
        for kind, code in ((b"H", engine.trading_state(locate)),
                           (b"Y", engine.reg_sho(locate))):  # fmt: skip
            if code:
                status = stamp(ev.blocks(ev.STATUS, 1), locate)
                status["status"], status["code"] = ord(kind), ord(code)
                out.append(status)
        book = engine.depth(locate, depth)
        for side, levels in ((b"B", book.bids), (b"S", book.asks)):
            rows = stamp(ev.blocks(ev.DEPTH, levels.shape[0]), locate)
            rows["side"] = ord(side)
            rows["level"] = np.arange(levels.shape[0])
            for name in ("price", "size", "orders"):
                rows[name] = levels[name]
            out.append(rows)
    if engine.market_state:
        status = stamp(ev.blocks(ev.STATUS, 1), 0)
        status["status"], status["code"] = ord("S"), ord(engine.market_state)
        out.append(status)
    return b"".join(block.tobytes() for block in out)
