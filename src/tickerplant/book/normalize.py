"""The book engine's events as the ``events`` stream's records (:mod:`tickerplant.wire.events`).

One batch of engine events becomes one block stream in message order, a few numpy passes per
batch: every kind is built as its own array, then all are scattered by (message, kind) into
one array of fixed-size blocks. Within one message a trade comes before the BBO change it
caused (the execution, then the book it left).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import numpy.typing as npt

from tickerplant.book.engine import BookEngine, EventBatch, Images
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
    return imaging(engine, locates, sequence, source, depth)()


def imaging(engine: BookEngine, locates: list[int], sequence: int, source: int,
            depth: int) -> Callable[[], bytes]:  # fmt: skip
    """:func:`images` in two steps: the books' state is taken now (one gather, a copy), and
    the function returned encodes it, reading nothing of the books: it may run on a thread
    while they go on. Built for all the locates at once, each kind as one array, then put in
    order."""
    at = np.asarray(locates, dtype=np.int64)
    state = engine.images(at, depth)
    market_state = engine.market_state
    return partial(encode_images, state, at, sequence, source, market_state)


def encode_images(state: Images, at: npt.NDArray[np.int64], sequence: int, source: int,
                  market_state: str) -> bytes:  # fmt: skip
    """The image records of ``state`` (of the locates ``at``, in that order; the market's
    state last), stamped ``sequence`` and ``source``, and the ``i`` notice that ends them."""
    everyone = np.arange(at.shape[0])
    # Each part: its blocks, and their place: the locate's position in the order asked (the
    # market's last), then the part's order within a locate, then the level.
    parts: list[tuple[npt.NDArray[np.void], npt.NDArray[np.int64], npt.NDArray[np.int64],
                      npt.NDArray[np.int64]]] = []  # fmt: skip

    def part(kind: bytes, position: npt.NDArray[np.int64], order: npt.NDArray[np.int64] | int,
             level: npt.NDArray[np.int64] | int = 0) -> npt.NDArray[np.void]:  # fmt: skip
        block = ev.blocks(kind, position.shape[0])
        block["flags"], block["sequence"], block["source"] = ev.IMAGE, sequence, source
        block["locate"] = np.append(at, 0)[position]
        shape = position.shape
        parts.append((block, position, np.broadcast_to(order, shape),
                      np.broadcast_to(level, shape)))  # fmt: skip
        return block

    part(ev.SYMBOL, everyone, 0)["symbol"] = state.names
    bbo = part(ev.BBO, everyone, 1)
    for i, name in enumerate(("bid_price", "bid_size", "ask_price", "ask_size")):
        bbo[name] = state.top[:, i]
    for rank, kind, codes in ((2, b"H", state.trading), (3, b"Y", state.reg_sho)):
        has = np.flatnonzero(codes)
        status = part(ev.STATUS, has, rank)
        status["status"], status["code"] = ord(kind), codes[has]
    rows = part(ev.DEPTH, state.position, 4 + state.side, state.level)  # bids, then asks
    rows["side"] = np.where(state.side == 1, ord("S"), ord("B"))
    rows["level"] = state.level
    for name in ("price", "size", "orders"):
        rows[name] = state.depth[name]
    if market_state:
        market = part(ev.STATUS, np.array([at.shape[0]]), 0)
        market["status"], market["code"] = ord("S"), ord(market_state)
    raw = np.dtype((np.void, ev.BLOCK_SIZE))
    blocks = np.concatenate([block.view(raw) for block, _, _, _ in parts])
    position, order, level = (np.concatenate([p[k] for p in parts]) for k in (1, 2, 3))
    imaged = ev.blocks(ev.IMAGED, 1)
    imaged["flags"], imaged["sequence"], imaged["source"] = ev.IMAGE, sequence, source
    imaged["first"], imaged["count"] = sequence + 1, at.shape[0]
    return blocks[np.lexsort((level, order, position))].tobytes() + imaged.tobytes()
