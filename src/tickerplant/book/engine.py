"""BookEngine: full-depth ITCH 5.0 books for every symbol, fed block streams, raising events.

The same engine serves the live plant (the feed handler's in-order ``Batch.blocks``) and file
replay (:func:`tickerplant.capture.itch_file.read_chunks`): both are block streams. All
per-message work happens in :func:`tickerplant.book.kernel.apply_blocks`; this class owns the
arrays, grows them when the kernel asks, and reads them for snapshots and counters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tickerplant.book import kernel as k
from tickerplant.book import orders as table
from tickerplant.book.records import (
    ANOMALIES,
    BBO_EVENT,
    LEVEL,
    RESTING,
    STATUS_EVENT,
    TRADE_EVENT,
)
from tickerplant.jit import PLAIN_PYTHON
from tickerplant.wire.blocks import as_array
from tickerplant.wire.itch import LENGTHS

Events = npt.NDArray[np.void]

_MIN_BLOCK = 2 + min(LENGTHS.values())  # bounds the messages, hence events, in a stream
_MAX_LOAD = 0.8  # order table slots in use (live or DELETED) before it is rebuilt
_DOUBLE_AT = 0.6  # of the limit: live orders above it double the table, below it a rebuild
# frees the DELETED slots in place (at least 0.4 of the limit of work between rebuilds)
_MIN_ORDER_SLOTS = 1 << 12
_MIN_LEVEL_ROWS = 1 << 13
_FIRST_LOCATES = 1 << 10


_EVENT_TYPES = (BBO_EVENT, TRADE_EVENT, STATUS_EVENT)


@dataclass(frozen=True, slots=True)
class EventBatch:
    """What one block stream did: BBO changes, trades and status changes, in message order."""

    bbo: Events  # BBO_EVENT records
    trades: Events  # TRADE_EVENT records
    status: Events  # STATUS_EVENT records


class EventBuffers:
    """Event buffers a caller owns and lends to :meth:`BookEngine.process` again and again.

    ``engine.process(blocks, scratch=buffers)`` writes its events into these buffers instead of
    fresh memory, so that no call pays the page faults of first writes (how many a fresh buffer
    costs is up to the allocator: glibc often hands a block just freed back, nothing promises
    it). The price is a contract: the batch it returns is valid only until the next call given
    the same buffers, which overwrites it. A caller that consumes each batch before the next
    call (the live books, a benchmark) opts in; one that keeps batches passes nothing.

    Why an object the caller owns rather than a ``reuse=True`` flag or an engine-held buffer:
    the memory that gets overwritten is named at the call site, by the one who knows when the
    batch is done with, and the engine keeps no hidden state about batches it handed out (no
    reference counting, which differs across Python versions and implementations). Two buffers
    used in turn let a caller keep one batch while the next is built; one engine may serve
    callers with buffers of their own without one overwriting another's batch.
    """

    __slots__ = ("_arrays",)

    def __init__(self) -> None:
        self._arrays: list[Events | None] = [None, None, None]

    def buffer(self, kind: int, room: int) -> Events:
        """The buffer of ``kind`` (0 BBO, 1 trades, 2 status) grown to ``room`` records."""
        buf = self._arrays[kind]
        if buf is None or buf.shape[0] < room:
            # A power of two, so that streams of similar size share one.
            buf = _fresh(kind, 1 << (room - 1).bit_length())
            self._arrays[kind] = buf
        return buf


def _fresh(kind: int, rows: int) -> Events:
    # Unzeroed: the pages past what the kernel writes are never touched, so they cost address
    # space, not memory.
    return np.empty(rows, dtype=_EVENT_TYPES[kind])


@dataclass(frozen=True, slots=True)
class Depth:
    """Top levels of one symbol's book, best first on each side (LEVEL records)."""

    locate: int
    bids: Events
    asks: Events


@dataclass(frozen=True, slots=True)
class Images:
    """:meth:`BookEngine.images`: per locate asked (in the order asked) its symbol (8 bytes,
    spaces if undefined), BBO (bid price, bid size, ask price, ask size), trading state and Reg
    SHO codes (0: none yet); then its depth rows, in order: ``position`` (of the locate in the
    order asked), ``side`` (0 bids, 1 asks), ``level`` (0 best) and the level itself."""

    names: npt.NDArray[np.bytes_]
    top: npt.NDArray[np.int64]
    trading: npt.NDArray[np.uint8]
    reg_sho: npt.NDArray[np.uint8]
    position: npt.NDArray[np.int64]
    side: npt.NDArray[np.int64]
    level: npt.NDArray[np.int64]
    depth: npt.NDArray[np.void]


class BookEngine:
    """Full-depth order books for every locate a Stock Directory defines.

    ``max_symbols`` bounds the locates kept (1..max_symbols-1; ITCH locates are u16).
    """

    _orders: npt.NDArray[np.int64]
    _ctrl: npt.NDArray[np.uint64]
    _defined: npt.NDArray[np.uint8]

    def __init__(self, max_symbols: int = 1 << 16) -> None:
        if not 2 <= max_symbols <= 1 << 16:
            raise ValueError(f"max_symbols must be 2..65536 (locates are u16), got {max_symbols}")
        self.max_symbols = max_symbols
        # One array for every counter, so that a call passes one argument, not three.
        self._counts = np.zeros(k.COUNTS, dtype=np.int64)
        self._stats = self._counts[: k.STATS]
        self._anomalies = self._counts[k.ANOMALY_AT : k.TYPE_AT]
        self._by_type = self._counts[k.TYPE_AT :]
        self._stats[k.ST_MAX_LOCATES] = max_symbols
        self._set_orders(_MIN_ORDER_SLOTS)
        self._locates(min(_FIRST_LOCATES, max_symbols))
        self._set_levels(_MIN_LEVEL_ROWS)

    # --- feeding ---

    def process(
        self,
        blocks: bytes | bytearray | memoryview | npt.NDArray[np.uint8],
        *,
        scratch: EventBuffers | None = None,
    ) -> EventBatch:
        """Apply a block stream of ITCH messages; returns the events it raised.

        Without ``scratch`` the batch is in fresh buffers: the caller's to keep forever. With it,
        the batch is in ``scratch`` and the next call given ``scratch`` overwrites it (see
        :class:`EventBuffers`).
        """
        buf = blocks if isinstance(blocks, np.ndarray) else as_array(blocks)
        room = buf.shape[0] // _MIN_BLOCK + 1
        buffer = _fresh if scratch is None else scratch.buffer
        bbo, trades, status = buffer(0, room), buffer(1, room), buffer(2, room)
        stats = self._stats
        stats[k.ST_BBO] = stats[k.ST_TRADES] = stats[k.ST_STATUS] = 0
        stats[k.ST_FIRST] = stats[k.ST_MESSAGES]
        pos = 0
        while True:
            if PLAIN_PYTHON:
                # Fibonacci hashing multiplies in uint64 and means to wrap: numpy scalars warn.
                with np.errstate(over="ignore"):
                    pos, code = self._apply(buf, pos, bbo, trades, status)
            else:  # compiled code never warns, and the context costs a live batch ~5%
                pos, code = self._apply(buf, pos, bbo, trades, status)
            if code == k.DONE:
                break
            if code == k.NEED_ORDERS:
                slots = self._orders.shape[0] // 2
                crowded = stats[k.ST_LIVE] >= _DOUBLE_AT * stats[k.ST_LIMIT]
                self._set_orders(2 * slots if crowded else slots)
            elif code == k.NEED_LEVELS:
                self._compact()
            else:
                locate = (int(buf[pos + 3]) << 8) | int(buf[pos + 4])
                self._locates(min(self.max_symbols, max(2 * self._defined.shape[0], locate + 1)))
        return EventBatch(
            bbo[: stats[k.ST_BBO]], trades[: stats[k.ST_TRADES]], status[: stats[k.ST_STATUS]]
        )

    def _apply(
        self, buf: npt.NDArray[np.uint8], pos: int, bbo: Events, trades: Events, status: Events
    ) -> tuple[int, int]:
        return k.apply_blocks(
            buf, pos, self._counts, self._defined, self._names, self._trading_state,
            self._reg_sho, self._top, self._ctrl, self._orders, self._bk_start, self._bk_len,
            self._bk_cap, self._lv_key, self._lv_qty, self._lv_cnt, bbo, trades, status,
        )  # fmt: skip

    # --- growth ---

    def _set_orders(self, slots: int) -> None:
        """A table of ``slots`` slots holding every live order (and no DELETED slot)."""
        ctrl = np.full(slots // table.GROUP, table.ALL_EMPTY, dtype=np.uint64)
        orders = np.zeros(2 * slots, dtype=np.int64)  # key, value rows
        shift = table.group_shift(slots)
        if getattr(self, "_orders", None) is not None:
            with np.errstate(over="ignore"):  # hashing wraps on purpose
                table.rehash(self._ctrl, self._orders, ctrl, orders, shift)
        self._ctrl, self._orders = ctrl, orders
        self._stats[k.ST_SHIFT] = shift
        self._stats[k.ST_LIMIT] = int(slots * _MAX_LOAD)
        self._stats[k.ST_DELETED] = 0

    def _locates(self, n: int) -> None:
        """(Re)size the per-locate arrays to ``n`` locates, keeping what they hold."""

        def grown(a: npt.NDArray[np.generic], rows: int) -> npt.NDArray[np.generic]:
            out = np.zeros((rows, *a.shape[1:]), dtype=a.dtype)
            out[: a.shape[0]] = a
            return out

        old = getattr(self, "_defined", None)
        if old is None:
            self._defined = np.zeros(n, dtype=np.uint8)
            self._names = np.zeros((n, 8), dtype=np.uint8)
            self._trading_state = np.zeros(n, dtype=np.uint8)
            self._reg_sho = np.zeros(n, dtype=np.uint8)
            self._top = np.zeros((n, 4), dtype=np.int64)
            self._bk_start = np.zeros(2 * n, dtype=np.int64)
            self._bk_len = np.zeros(2 * n, dtype=np.int64)
            self._bk_cap = np.zeros(2 * n, dtype=np.int64)
            return
        self._defined = grown(self._defined, n)  # type: ignore[assignment]
        self._names = grown(self._names, n)  # type: ignore[assignment]
        self._trading_state = grown(self._trading_state, n)  # type: ignore[assignment]
        self._reg_sho = grown(self._reg_sho, n)  # type: ignore[assignment]
        self._top = grown(self._top, n)  # type: ignore[assignment]
        self._bk_start = grown(self._bk_start, 2 * n)  # type: ignore[assignment]
        self._bk_len = grown(self._bk_len, 2 * n)  # type: ignore[assignment]
        self._bk_cap = grown(self._bk_cap, 2 * n)  # type: ignore[assignment]

    def _set_levels(self, rows: int) -> None:
        self._lv_key = np.zeros(rows, dtype=np.int32)  # price, negated on the ask side
        self._lv_qty = np.zeros(rows, dtype=np.int64)
        self._lv_cnt = np.zeros(rows, dtype=np.int32)

    def _compact(self) -> None:
        """Copy every book into a fresh pool, dropping the holes that moves left behind.

        Each book gets half again its levels of room, the pool half again the total: memory
        follows the levels, and moves stay rare enough for compaction to cost O(1) per level.
        """
        n = self._bk_len
        caps = np.where(self._bk_cap > 0, n + np.maximum(4, n >> 1), 0).astype(np.int64)
        total = int(caps.sum())
        rows = max(_MIN_LEVEL_ROWS, total + (total >> 1))
        old_key, old_qty, old_cnt = self._lv_key, self._lv_qty, self._lv_cnt
        self._set_levels(rows)
        used = k.compact(
            self._bk_start, self._bk_len, self._bk_cap, caps,
            old_key, old_qty, old_cnt, self._lv_key, self._lv_qty, self._lv_cnt,
        )  # fmt: skip
        self._stats[k.ST_POOL_USED] = used

    # --- reading ---

    def symbol(self, locate: int) -> str | None:
        """The symbol a Stock Directory gave ``locate``, or None."""
        if not 0 <= locate < self._defined.shape[0] or not self._defined[locate]:
            return None
        return bytes(self._names[locate]).decode("latin-1").rstrip(" ")

    def symbols(self) -> dict[int, str]:
        """Every defined locate and its symbol."""
        return {
            int(loc): bytes(self._names[loc]).decode("latin-1").rstrip(" ")
            for loc in np.flatnonzero(self._defined)
        }

    @property
    def symbol_count(self) -> int:
        """How many locates a Stock Directory has defined."""
        return int(np.count_nonzero(self._defined))

    def symbol_table(self) -> npt.NDArray[np.object_]:
        """Symbols indexed by locate ('' where undefined): maps a locate column to names."""
        out = np.full(self._defined.shape[0], "", dtype=object)
        for loc, name in self.symbols().items():
            out[loc] = name
        return out

    def depth(self, locate: int, levels: int = 10) -> Depth:
        """The best ``levels`` price levels per side of ``locate``'s book (empty if unknown)."""
        sides = []
        for side in (0, 1):
            out = np.zeros(0, dtype=LEVEL)
            b = 2 * locate + side
            if 0 <= locate < self._defined.shape[0] and levels > 0:
                s, n = int(self._bk_start[b]), int(self._bk_len[b])
                lo = max(s, s + n - levels)
                out = np.zeros(s + n - lo, dtype=LEVEL)
                key = self._lv_key[lo : s + n][::-1]
                out["price"] = -key if side else key
                out["size"] = self._lv_qty[lo : s + n][::-1]
                out["orders"] = self._lv_cnt[lo : s + n][::-1]
            sides.append(out)
        return Depth(locate, sides[0], sides[1])

    def resting_orders(self) -> npt.NDArray[np.void]:
        """Every live order as ``RESTING`` records, in order-reference order (time priority)."""
        return resting(self.live_rows())

    def live_rows(self) -> npt.NDArray[np.int64]:
        """The order table's live rows (key, value), a copy: what :func:`resting` reads, taken
        from the books in one vectorised gather, without the sort (which may then run on a
        thread while the books go on)."""
        full = self._ctrl.view(np.uint8) < 0x80  # a full slot's control byte is 7 hash bits
        return self._orders.reshape(-1, 2)[full]

    def names(self) -> npt.NDArray[np.bytes_]:
        """Each locate's 8-byte symbol as the Stock Directory gave it (spaces if undefined),
        indexed by locate: a copy."""
        return self._named(slice(None))

    def _named(self, at: npt.NDArray[np.int64] | slice) -> npt.NDArray[np.bytes_]:
        names = np.where(self._defined[at, None] != 0, self._names[at], ord(" ")).astype(np.uint8)
        return names.view("S8").ravel()

    def images(self, locates: npt.NDArray[np.int64], levels: int) -> Images:
        """What an image of each of ``locates`` shows, for all of them at once (a client may
        add thousands of symbols: one Python step per symbol took 43 us each on the loop)."""
        known = (locates >= 0) & (locates < self._defined.shape[0])
        at = np.where(known, locates, 0)
        top = np.where(known[:, None], self._top[at], 0)
        trading = np.where(known, self._trading_state[at], 0).astype(np.uint8)
        reg_sho = np.where(known, self._reg_sho[at], 0).astype(np.uint8)
        # The best ``levels`` of each book (bids, then asks, per locate) lie at the end of its
        # run in the level pool, best last.
        books = (2 * at[:, None] + np.arange(2)).reshape(-1)
        start, length = self._bk_start[books], self._bk_len[books]
        taken = np.where(np.repeat(known, 2), np.minimum(length, max(levels, 0)), 0)
        book = np.repeat(np.arange(books.shape[0]), taken)
        level = np.arange(book.shape[0]) - np.repeat(np.cumsum(taken) - taken, taken)
        rows = np.repeat(start + length - 1, taken) - level
        key = self._lv_key[rows].astype(np.int64)
        side = book % 2
        depth = np.zeros(book.shape[0], dtype=LEVEL)
        depth["price"] = np.where(side == 1, -key, key)
        depth["size"] = self._lv_qty[rows]
        depth["orders"] = self._lv_cnt[rows]
        return Images(self._named(at), top, trading, reg_sho, book // 2, side, level, depth)

    def bbo(self, locate: int) -> tuple[int, int, int, int]:
        """(bid price, bid size, ask price, ask size) of ``locate``; zeros for an empty side."""
        if not 0 <= locate < self._defined.shape[0]:
            return (0, 0, 0, 0)
        bid_px, bid_qty, ask_px, ask_qty = (int(v) for v in self._top[locate])
        return bid_px, bid_qty, ask_px, ask_qty

    def trading_state(self, locate: int) -> str:
        """The last Trading Action state of ``locate`` (H, P, Q or T), '' before any."""
        if not 0 <= locate < self._defined.shape[0] or not self._trading_state[locate]:
            return ""
        return chr(self._trading_state[locate])

    def reg_sho(self, locate: int) -> str:
        """The last Reg SHO Restriction action of ``locate`` ('0', '1' or '2'), '' before any."""
        if not 0 <= locate < self._defined.shape[0] or not self._reg_sho[locate]:
            return ""
        return chr(self._reg_sho[locate])

    @property
    def market_state(self) -> str:
        """The last System Event code ('O', 'S', 'Q', 'M', 'E', 'C'), '' before any."""
        code = int(self._stats[k.ST_MARKET])
        return chr(code) if code else ""

    @property
    def messages(self) -> int:
        return int(self._stats[k.ST_MESSAGES])

    @property
    def messages_by_type(self) -> dict[str, int]:
        """Message counts by type letter (every type seen, ITCH or not)."""
        return {chr(t): int(c) for t, c in enumerate(self._by_type) if c}

    @property
    def anomalies(self) -> dict[str, int]:
        """Every anomaly kind (records.ANOMALIES) and how often it happened."""
        return {name: int(c) for name, c in zip(ANOMALIES, self._anomalies, strict=True)}

    @property
    def live_orders(self) -> int:
        return int(self._stats[k.ST_LIVE])

    @property
    def peak_live_orders(self) -> int:
        return int(self._stats[k.ST_PEAK])

    @property
    def levels(self) -> int:
        """Price levels on all books."""
        return int(self._bk_len.sum())

    @property
    def state_bytes(self) -> int:
        """Bytes held by the books' state: order table, level pool and per-locate arrays."""
        arrays = (
            self._ctrl, self._orders, self._lv_key, self._lv_qty, self._lv_cnt, self._defined,
            self._names, self._trading_state, self._reg_sho, self._top, self._bk_start,
            self._bk_len, self._bk_cap,
        )  # fmt: skip
        return sum(a.nbytes for a in arrays)

    @property
    def bytes_per_live_order(self) -> float:
        """All of :attr:`state_bytes` divided by the live orders (inf with none live)."""
        live = self.live_orders
        return self.state_bytes / live if live else float("inf")


def resting(rows: npt.NDArray[np.int64]) -> npt.NDArray[np.void]:
    """Live order table rows (:meth:`BookEngine.live_rows`) as ``RESTING`` records, in
    order-reference order (time priority)."""
    reference = rows[:, 0] & ((1 << 47) - 1)
    # Sorted by its integer key, not with np.sort(order=): a structured sort compares records
    # field by field, 12-21 ms for 12,000 orders against 1 ms.
    rows = rows[np.argsort(reference)]
    key, value = rows[:, 0], rows[:, 1]
    out = np.zeros(rows.shape[0], dtype=RESTING)
    out["reference"] = key & ((1 << 47) - 1)
    out["locate"] = key >> 47
    out["side"] = np.where((value >> 31) & 1, ord("S"), ord("B"))
    out["shares"] = value & ((1 << 31) - 1)
    out["price"] = value >> 32
    return out
