"""A synthetic trading day in ITCH 5.0, deterministic for a seed, produced as block streams.

The day opens as Nasdaq's does: System Event 'O' (start of messages) and 'S' (start of system
hours), a Stock Directory for every symbol (locates 1..N) and a Trading Action 'T' for each, then
'Q' (start of market hours) at 9:30. Order flow follows: adds (some attributed), executions at
the touch, partial cancels, deletes, replaces, hidden-order trades, the odd cross and, rarely, a
broken trade; the day closes with 'M', 'E' and 'C'.

The flow only ever acts on live orders: an execution or cancel never exceeds the shares left,
order references are issued once and increase, and a bid is never placed at or above the
symbol's best ask (nor an ask at or below its best bid), so every book stays uncrossed. Each
symbol holds at most :data:`ORDER_SLOTS` live orders, which keeps the scan for its best prices
short and the book's size steady however long the day.

All of it runs in one compiled kernel over arrays (our own xorshift64 generator, the live
orders, the counters), so the output is identical with and without ``NUMBA_DISABLE_JIT`` and
a day can be cut into chunks of any size without changing a byte.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tickerplant.jit import kernel
from tickerplant.wire.blocks import I64, U8
from tickerplant.wire.itch import LENGTHS

ORDER_SLOTS = 32  # live orders per symbol at most
TICK = 100  # one cent in Price(4)
_MIN_MID = 100 * TICK  # $1: keeps every bid positive whatever the walk does
_MAX_MID = 100_000 * TICK  # $1,000: far inside Price(4)'s range
_MAX_BLOCK = 2 + max(LENGTHS.values())
_MASK64 = (1 << 64) - 1

_SECOND = 1_000_000_000
_T_START_OF_MESSAGES = (3 * 3600 + 5 * 60) * _SECOND
_T_START_OF_SYSTEM_HOURS = 4 * 3600 * _SECOND
_T_START_OF_MARKET_HOURS = (9 * 3600 + 30 * 60) * _SECOND
_T_END_OF_MARKET_HOURS = 16 * 3600 * _SECOND
_T_END_OF_SYSTEM_HOURS = 20 * 3600 * _SECOND
_T_END_OF_MESSAGES = (20 * 3600 + 5 * 60) * _SECOND

# Indices into the counters array.
_EMITTED, _TOTAL, _NOW, _NEXT_REF, _NEXT_MATCH = 0, 1, 2, 3, 4

# Order flow mix, out of 1000 trading messages (before falling back when no order is live).
_W_ADD = 380
_W_ADD_MPID = _W_ADD + 20
_W_EXECUTE = _W_ADD_MPID + 70
_W_EXECUTE_PRICE = _W_EXECUTE + 10
_W_CANCEL = _W_EXECUTE_PRICE + 60
_W_DELETE = _W_CANCEL + 330
_W_REPLACE = _W_DELETE + 110
_W_TRADE = _W_REPLACE + 15
_W_CROSS = _W_TRADE + 4  # the remainder, 1 in 1000, breaks a recent trade

# Recent executions (match number, locate) a Broken Trade may refer to.
_RECENT = 1024

# Byte values of the letters written (numba folds module-level ints into the kernel).
_CH_A, _CH_B, _CH_C, _CH_D, _CH_E, _CH_F = (ord(c) for c in "ABCDEF")
_CH_G, _CH_H, _CH_I, _CH_M, _CH_N, _CH_O = (ord(c) for c in "GHIMNO")
_CH_P, _CH_Q, _CH_R, _CH_S, _CH_T, _CH_U = (ord(c) for c in "PQRSTU")
_CH_X, _CH_Y, _CH_Z, _CH_1, _CH_2 = (ord(c) for c in "XYZ12")
_SPACE = ord(" ")
# Market categories: Nasdaq Global Select (twice: the most common), Global, Capital Market; NYSE,
# NYSE Arca, Cboe BZX, NYSE American.
_CATEGORIES = (_CH_Q, _CH_Q, _CH_G, _CH_S, _CH_N, _CH_P, _CH_Z, _CH_A)
_MPIDS = ("GSCO", "MSCO", "UBSS", "NITE", "VIRT", "CDRG", "SUSQ", "JPMS", "CITD", "TMBR")

_LEN_S, _LEN_R, _LEN_H = LENGTHS["S"], LENGTHS["R"], LENGTHS["H"]
_LEN_A, _LEN_F, _LEN_E, _LEN_C = LENGTHS["A"], LENGTHS["F"], LENGTHS["E"], LENGTHS["C"]
_LEN_X, _LEN_D, _LEN_U = LENGTHS["X"], LENGTHS["D"], LENGTHS["U"]
_LEN_P, _LEN_Q, _LEN_B = LENGTHS["P"], LENGTHS["Q"], LENGTHS["B"]


@kernel
def _rand(rng: npt.NDArray[np.uint64], n: int) -> int:  # pragma: no cover - compiled
    """A number in [0, n), n < 2**31, from the xorshift64 state in ``rng[0]``."""
    x = rng[0]
    x ^= x << np.uint64(13)
    x ^= x >> np.uint64(7)
    x ^= x << np.uint64(17)
    rng[0] = x
    # Scaling 32 random bits by n costs a multiply where ``%`` costs a division (~20 % of the
    # generator's time); the bias, under n / 2**32, is invisible in a synthetic day.
    return int((np.int64(x >> np.uint64(32)) * n) >> 32)


@kernel
def _put(buf: U8, p: int, value: int, size: int) -> int:  # pragma: no cover - compiled
    """Write ``value`` big-endian in ``size`` bytes at ``p``; returns the next position."""
    for i in range(size):
        buf[p + i] = (value >> (8 * (size - 1 - i))) & 0xFF
    return p + size


@kernel
def _begin(
    buf: U8, p: int, length: int, letter: int, locate: int, now: int
) -> int:  # pragma: no cover - compiled
    """Length prefix and common header; tracking numbers are small and fixed per symbol."""
    p = _put(buf, p, length, 2)
    buf[p] = letter
    p = _put(buf, p + 1, locate, 2)
    p = _put(buf, p, 0 if locate == 0 else 1 + (locate & 7), 2)
    return _put(buf, p, now, 6)


@kernel
def _stock(buf: U8, p: int, tickers: U8, sym: int) -> int:  # pragma: no cover - compiled
    for i in range(8):
        buf[p + i] = tickers[sym, i]
    return p + 8


@kernel
def _quote_price(
    rng: npt.NDArray[np.uint64], mid: int, side: int, best_bid: int, best_ask: int
) -> int:  # pragma: no cover - compiled
    """A new order's price: a few ticks off the mid, never crossing the other side."""
    depth = TICK * (1 + _rand(rng, 1 + _rand(rng, 10)))
    if side == _CH_B:
        price = mid - depth
        if best_ask >= 0 and price >= best_ask:
            price = best_ask - TICK
        return price
    price = mid + depth
    if best_bid >= 0 and price <= best_bid:
        price = best_bid + TICK
    return price


@kernel
def _generate(
    buf: U8,
    n: int,
    rng: npt.NDArray[np.uint64],
    counters: I64,
    mids: I64,
    live: I64,
    tickers: U8,
    refs: I64,
    shares: I64,
    prices: I64,
    sides: U8,
    mpids: U8,
    recent: I64,
) -> int:  # pragma: no cover - compiled
    """Write the next ``n`` messages of the day into ``buf`` as blocks; returns bytes written."""
    nsym = mids.shape[0]
    nslots = refs.shape[1]
    p = 0
    for _ in range(n):
        idx = counters[_EMITTED]
        total = counters[_TOTAL]
        now = counters[_NOW]
        if idx == 0 or idx == 1 or idx == 2 + 2 * nsym or idx >= total - 3:
            if idx == 0:
                code, at = _CH_O, _T_START_OF_MESSAGES
            elif idx == 1:
                code, at = _CH_S, _T_START_OF_SYSTEM_HOURS
            elif idx == 2 + 2 * nsym:
                code, at = _CH_Q, _T_START_OF_MARKET_HOURS
            elif idx == total - 3:
                code, at = _CH_M, _T_END_OF_MARKET_HOURS
            elif idx == total - 2:
                code, at = _CH_E, _T_END_OF_SYSTEM_HOURS
            else:
                code, at = _CH_C, _T_END_OF_MESSAGES
            now = max(now + 1, at)
            p = _begin(buf, p, _LEN_S, _CH_S, 0, now)
            buf[p] = code
            p += 1
        elif idx < 2 + nsym:
            sym = idx - 2
            now += 1 + _rand(rng, 4096)
            category = _CATEGORIES[_rand(rng, len(_CATEGORIES))]
            nasdaq = category in (_CH_Q, _CH_G, _CH_S)
            p = _begin(buf, p, _LEN_R, _CH_R, sym + 1, now)
            p = _stock(buf, p, tickers, sym)
            buf[p] = category
            buf[p + 1] = _CH_N if nasdaq else _SPACE  # financial status
            p = _put(buf, p + 2, 100, 4)  # round lot size
            buf[p] = _CH_N  # round lots only
            buf[p + 1] = _CH_C  # issue classification: common stock
            buf[p + 2] = _CH_Z  # issue subtype: not applicable
            buf[p + 3] = _SPACE
            buf[p + 4] = _CH_P  # authenticity: live
            buf[p + 5] = _CH_N  # short sale threshold
            buf[p + 6] = _CH_N  # IPO flag
            buf[p + 7] = _CH_1 if sym < 100 else _CH_2  # LULD tier
            buf[p + 8] = _CH_N  # ETP flag
            p = _put(buf, p + 9, 0, 4)  # ETP leverage factor
            buf[p] = _CH_N  # inverse indicator
            p += 1
        elif idx < 2 + 2 * nsym:
            sym = idx - 2 - nsym
            now += 1 + _rand(rng, 4096)
            p = _begin(buf, p, _LEN_H, _CH_H, sym + 1, now)
            p = _stock(buf, p, tickers, sym)
            buf[p] = _CH_T
            buf[p + 1] = _SPACE
            for i in range(4):
                buf[p + 2 + i] = _SPACE
            p += 6
        else:
            now += 1 + _rand(rng, 2048)
            # Low locates trade more, as the most active names do.
            sym = _rand(rng, 1 + _rand(rng, nsym))
            locate = sym + 1
            event = _rand(rng, 1000)
            broken = 0
            if event >= _W_CROSS:
                oldest = max(1, counters[_NEXT_MATCH] - _RECENT)
                if counters[_NEXT_MATCH] > oldest:
                    match = oldest + _rand(rng, counters[_NEXT_MATCH] - oldest)
                    if recent[match % _RECENT] == match:
                        broken = match
                if broken == 0:
                    event = 0  # nothing to break: add an order instead
            if _W_ADD_MPID <= event < _W_REPLACE and live[sym] == 0:
                event = 0  # no order to act on: add one
            elif event < _W_ADD_MPID and live[sym] == nslots:
                event = _W_CANCEL  # the symbol is full: delete instead

            best_bid, best_ask, bid_slot, ask_slot = -1, -1, -1, -1
            if event < _W_EXECUTE_PRICE or event >= _W_DELETE:
                for k in range(nslots):
                    if refs[sym, k] != 0:
                        price = prices[sym, k]
                        if sides[sym, k] == _CH_B:
                            if price > best_bid:
                                best_bid, bid_slot = price, k
                        elif best_ask < 0 or price < best_ask:
                            best_ask, ask_slot = price, k
            if event < _W_ADD_MPID or event >= _W_DELETE:
                # The mid wanders a tick at a time but stays inside the touch.
                mid = mids[sym]
                step = _rand(rng, 16)
                if step == 0:
                    mid -= TICK
                elif step == 1:
                    mid += TICK
                mid = min(max(mid, _MIN_MID), _MAX_MID)
                if best_bid >= 0 and mid < best_bid:
                    mid = best_bid
                if best_ask >= 0 and mid > best_ask:
                    mid = best_ask
                mids[sym] = mid

            if broken:
                slot = broken % _RECENT
                recent[slot] = 0  # a trade is broken once
                p = _begin(buf, p, _LEN_B, _CH_B, recent[_RECENT + slot], now)
                p = _put(buf, p, broken, 8)
            elif event < _W_ADD_MPID:
                k = _rand(rng, nslots)
                while refs[sym, k] != 0:
                    k = (k + 1) % nslots
                side = _CH_B if _rand(rng, 2) == 0 else _CH_S
                qty = 100 * (1 + _rand(rng, 10)) if _rand(rng, 8) else 1 + _rand(rng, 99)
                price = _quote_price(rng, mids[sym], side, best_bid, best_ask)
                ref = counters[_NEXT_REF]
                counters[_NEXT_REF] = ref + 1 + _rand(rng, 4)
                refs[sym, k], shares[sym, k], prices[sym, k], sides[sym, k] = ref, qty, price, side
                live[sym] += 1
                attributed = event >= _W_ADD
                letter = _CH_F if attributed else _CH_A
                p = _begin(buf, p, _LEN_F if attributed else _LEN_A, letter, locate, now)
                p = _put(buf, p, ref, 8)
                buf[p] = side
                p = _put(buf, p + 1, qty, 4)
                p = _stock(buf, p, tickers, sym)
                p = _put(buf, p, price, 4)
                if attributed:
                    firm = _rand(rng, mpids.shape[0])
                    for i in range(4):
                        buf[p + i] = mpids[firm, i]
                    p += 4
            elif event < _W_EXECUTE_PRICE:
                # Executions happen at the touch: the best order of one side.
                k = bid_slot if _rand(rng, 2) == 0 else ask_slot
                if k < 0:
                    k = bid_slot if bid_slot >= 0 else ask_slot
                qty = 1 + _rand(rng, shares[sym, k])
                match = counters[_NEXT_MATCH]
                counters[_NEXT_MATCH] = match + 1
                recent[match % _RECENT] = match
                recent[_RECENT + match % _RECENT] = locate
                with_price = event >= _W_EXECUTE
                letter = _CH_C if with_price else _CH_E
                p = _begin(buf, p, _LEN_C if with_price else _LEN_E, letter, locate, now)
                p = _put(buf, p, refs[sym, k], 8)
                p = _put(buf, p, qty, 4)
                p = _put(buf, p, match, 8)
                if with_price:
                    buf[p] = _CH_Y if _rand(rng, 4) else _CH_N  # printable
                    p = _put(buf, p + 1, prices[sym, k], 4)
                shares[sym, k] -= qty
                if shares[sym, k] == 0:
                    refs[sym, k] = 0
                    live[sym] -= 1
            elif event < _W_REPLACE:
                k = _rand(rng, nslots)
                while refs[sym, k] == 0:
                    k = (k + 1) % nslots
                if event < _W_CANCEL and shares[sym, k] > 1:
                    qty = 1 + _rand(rng, shares[sym, k] - 1)  # partial: some shares stay
                    p = _begin(buf, p, _LEN_X, _CH_X, locate, now)
                    p = _put(buf, p, refs[sym, k], 8)
                    p = _put(buf, p, qty, 4)
                    shares[sym, k] -= qty
                elif event < _W_DELETE:
                    p = _begin(buf, p, _LEN_D, _CH_D, locate, now)
                    p = _put(buf, p, refs[sym, k], 8)
                    refs[sym, k] = 0
                    live[sym] -= 1
                else:
                    ref = counters[_NEXT_REF]
                    counters[_NEXT_REF] = ref + 1 + _rand(rng, 4)
                    qty = 100 * (1 + _rand(rng, 10))
                    price = _quote_price(rng, mids[sym], sides[sym, k], best_bid, best_ask)
                    p = _begin(buf, p, _LEN_U, _CH_U, locate, now)
                    p = _put(buf, p, refs[sym, k], 8)
                    p = _put(buf, p, ref, 8)
                    p = _put(buf, p, qty, 4)
                    p = _put(buf, p, price, 4)
                    refs[sym, k], shares[sym, k], prices[sym, k] = ref, qty, price
            else:
                match = counters[_NEXT_MATCH]
                counters[_NEXT_MATCH] = match + 1
                recent[match % _RECENT] = match
                recent[_RECENT + match % _RECENT] = locate
                if event < _W_TRADE:
                    # A hidden order executes: no reference on the book, a price at the mid.
                    p = _begin(buf, p, _LEN_P, _CH_P, locate, now)
                    p = _put(buf, p, 0, 8)
                    buf[p] = _CH_B if _rand(rng, 2) == 0 else _CH_S
                    p = _put(buf, p + 1, 100 * (1 + _rand(rng, 5)), 4)
                    p = _stock(buf, p, tickers, sym)
                    p = _put(buf, p, mids[sym], 4)
                    p = _put(buf, p, match, 8)
                else:
                    p = _begin(buf, p, _LEN_Q, _CH_Q, locate, now)
                    p = _put(buf, p, 1000 * (1 + _rand(rng, 100)), 8)
                    p = _stock(buf, p, tickers, sym)
                    p = _put(buf, p, mids[sym], 4)
                    p = _put(buf, p, match, 8)
                    buf[p] = _CH_I  # intraday cross
                    p += 1
        counters[_NOW] = now
        counters[_EMITTED] = idx + 1
    return p


def _seed_state(seed: int) -> int:
    """splitmix64 of the seed: nearby seeds give unrelated, nonzero xorshift states."""
    z = (seed + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return z or 1


@dataclass(frozen=True, slots=True)
class _Start:
    """The market before its first message: what every :meth:`SyntheticMarket.chunks` copies."""

    rng: int
    tickers: U8
    mids: I64
    mpids: U8


class SyntheticMarket:
    """A seeded synthetic ITCH 5.0 day over ``symbols`` stocks (locates 1..symbols).

    Tickers and opening prices are drawn here; every :meth:`chunks` call replays the same day
    from its first message, so one market can feed several runs of a test or a benchmark.
    """

    def __init__(self, seed: int, symbols: int = 500) -> None:
        if not 1 <= symbols <= 0xFFFF:
            raise ValueError(f"symbols must be 1..65535 (stock locates are u16), got {symbols}")
        self.seed = seed
        self.symbols = symbols
        rng = np.array([_seed_state(seed & _MASK64)], dtype=np.uint64)
        names = _tickers(rng, symbols)
        self.tickers: tuple[str, ...] = tuple(names)
        ticker_bytes = np.frombuffer(
            b"".join(t.encode("ascii").ljust(8) for t in names), dtype=np.uint8
        ).reshape(symbols, 8)
        # Most names are cheap; a few trade in the hundreds, as on a real day.
        mids = np.array(
            [TICK * (200 + _rand(rng, 1 + _rand(rng, 40_000))) for _ in range(symbols)],
            dtype=np.int64,
        )
        mpids = np.frombuffer("".join(_MPIDS).encode("ascii"), dtype=np.uint8).reshape(-1, 4)
        self._start = _Start(int(rng[0]), ticker_bytes, mids, mpids)

    @property
    def minimum_messages(self) -> int:
        """Opening (O, S, a directory and a trading action per symbol, Q) plus closing (M, E, C)."""
        return 2 * self.symbols + 6

    def chunks(self, messages: int, chunk_messages: int = 65536) -> Iterator[bytes]:
        """The day's ``messages`` messages as block streams of up to ``chunk_messages`` each."""
        if messages < self.minimum_messages:
            raise ValueError(
                f"{messages} messages cannot hold the opening and closing of a day over "
                f"{self.symbols} symbols: at least {self.minimum_messages} are needed"
            )
        if chunk_messages < 1:
            raise ValueError(f"chunk_messages must be positive, got {chunk_messages}")
        start = self._start
        rng = np.array([start.rng], dtype=np.uint64)
        counters = np.zeros(5, dtype=np.int64)
        counters[_TOTAL] = messages
        counters[_NEXT_REF] = 1
        counters[_NEXT_MATCH] = 1
        mids = start.mids.copy()
        live = np.zeros(self.symbols, dtype=np.int64)
        refs = np.zeros((self.symbols, ORDER_SLOTS), dtype=np.int64)
        shares = np.zeros_like(refs)
        prices = np.zeros_like(refs)
        sides = np.zeros((self.symbols, ORDER_SLOTS), dtype=np.uint8)
        recent = np.zeros(2 * _RECENT, dtype=np.int64)
        buf = np.empty(min(chunk_messages, messages) * _MAX_BLOCK, dtype=np.uint8)
        left = messages
        while left:
            n = min(chunk_messages, left)
            used = _generate(
                buf, n, rng, counters, mids, live, start.tickers,
                refs, shares, prices, sides, start.mpids, recent,
            )  # fmt: skip
            left -= n
            yield buf[:used].tobytes()


def _tickers(rng: npt.NDArray[np.uint64], count: int) -> list[str]:
    """Unique, plausible tickers: mostly three or four letters, a few of one, two or five."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    lengths = (1, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 5)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < count:
        size = lengths[_rand(rng, len(lengths))]
        name = "".join(letters[_rand(rng, 26)] for _ in range(size))
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out
