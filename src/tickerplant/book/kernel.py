"""The compiled per-message path of the book engine: one kernel from a block stream to events.

State is plain numpy arrays, passed one by one (numba's reference counting made tuples of arrays
and closures cost half the speed in early versions):

- Orders: the hash of :mod:`tickerplant.book.orders` (``ctrl`` and ``orders``), keyed by
  ``reference | locate << 47``. Keys fold the locate in, so an E/C/X/D/U naming another symbol's
  reference is an unknown reference, not a corrupt book. The table outgrows the caches, so the
  kernel prefetches the group of the next message's reference while it works on the current one.
- Levels: per book (``2 * locate + side``) a segment ``[start, start + cap)`` of a shared pool of
  16-byte level rows (key int32, shares int64, orders int32), sorted with the best price last
  so that the linear search from the best end, where activity sits, is short. The key is the
  price for bids and minus the price for asks, so both sides sort ascending. A full segment moves
  to the end of the pool with half again its room; when the pool itself is full the kernel stops
  and the caller compacts.
- Per locate: whether a Stock Directory defined it, its symbol, trading state, Reg SHO state and
  the last BBO sent (events are raised only on change).

The kernel never half-applies a message: when the order table or the level pool needs room it
returns before touching anything for the message at ``pos``; the caller grows and calls again.
Field offsets come from :mod:`tickerplant.wire.itch`'s table (frozen in as constants).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tickerplant.book import orders as table
from tickerplant.book.records import (
    ANOMALIES,
    BAD_LENGTH,
    BAD_SIDE,
    BAD_VALUE,
    DUPLICATE_REFERENCE,
    LOCATE_REDEFINED,
    OVER_CANCEL,
    OVER_EXECUTION,
    TRUNCATED,
    UNKNOWN_LOCATE,
    UNKNOWN_REFERENCE,
    UNKNOWN_TYPE,
)
from tickerplant.jit import at, kernel, prefetch
from tickerplant.wire.blocks import U8
from tickerplant.wire.itch import MESSAGE_LENGTHS, offset

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
I32 = npt.NDArray[np.int32]

# Return codes.
DONE, NEED_ORDERS, NEED_LEVELS, NEED_LOCATES = 0, 1, 2, 3

# The counters: engine state, then anomalies (records.ANOMALIES), then messages by type byte.
ST_LIVE, ST_PEAK, ST_LIMIT, ST_SHIFT, ST_POOL_USED = 0, 1, 2, 3, 4
ST_BBO, ST_TRADES, ST_STATUS, ST_MESSAGES, ST_MARKET, ST_MAX_LOCATES = 5, 6, 7, 8, 9, 10
ST_DELETED = 11  # DELETED slots of the order table: they count against ST_LIMIT
ST_FIRST = 12  # ST_MESSAGES when the block stream began: events number messages from there
STATS = 13
ANOMALY_AT = STATS
TYPE_AT = ANOMALY_AT + len(ANOMALIES)
COUNTS = TYPE_AT + 256

MAX_VALUE = 1 << 31  # shares and prices must stay below: they share one int64 in an order row
MAX_REFERENCE_HI = 1 << 15  # references < 2**47 leave the top of the key for the locate
_LOW31 = (1 << 31) - 1
_LENGTHS = MESSAGE_LENGTHS  # a global: compiled in as a constant, one argument fewer per call

_S, _R, _H, _Y = ord("S"), ord("R"), ord("H"), ord("Y")
_A, _F, _E, _C, _X, _D, _U = (ord(c) for c in "AFECXDU")
_P, _Q, _BRK = ord("P"), ord("Q"), ord("B")
_BUY, _SELL, _YES = ord("B"), ord("S"), ord("Y")

_LOCATE = offset("S", "stock_locate")
_TIME = offset("S", "timestamp")
_S_CODE = offset("S", "event_code")
_R_STOCK = offset("R", "stock")
_H_STATE, _H_REASON = offset("H", "trading_state"), offset("H", "reason")
_Y_ACTION = offset("Y", "reg_sho_action")
# Every order message carries its reference at the same place (a replace, its original one), so
# the next message's can be prefetched before its type is looked at; A and F share their side,
# shares and price, E and C their shares and match number.
_REF = offset("A", "order_reference")
_SIDE, _A_SHARES, _A_PRICE = offset("A", "side"), offset("A", "shares"), offset("A", "price")
_EC_SHARES, _EC_MATCH = offset("E", "executed_shares"), offset("E", "match_number")
assert all(offset(t, "order_reference") == _REF for t in "AFECXD")
assert offset("U", "original_order_reference") == _REF
assert [offset("F", f) for f in ("side", "shares", "price")] == [_SIDE, _A_SHARES, _A_PRICE]
assert [offset("C", f) for f in ("executed_shares", "match_number")] == [_EC_SHARES, _EC_MATCH]
_C_PRINTABLE, _C_PRICE = offset("C", "printable"), offset("C", "execution_price")
_X_SHARES = offset("X", "cancelled_shares")
_U_NEW = offset("U", "new_order_reference")
_U_SHARES, _U_PRICE = offset("U", "shares"), offset("U", "price")
_P_SIDE, _P_SHARES = offset("P", "side"), offset("P", "shares")
_P_PRICE, _P_MATCH = offset("P", "price"), offset("P", "match_number")
_Q_SHARES, _Q_PRICE, _Q_MATCH = (
    offset("Q", "shares"),
    offset("Q", "cross_price"),
    offset("Q", "match_number"),
)
_B_MATCH = offset("B", "match_number")


@kernel
def _u16(b: U8, p: int) -> int:  # pragma: no cover - compiled
    return int((np.int64(b[at(p)]) << 8) | np.int64(b[at(p + 1)]))


@kernel
def _u32(b: U8, p: int) -> int:  # pragma: no cover - compiled
    return int(
        (np.int64(b[at(p)]) << 24)
        | (np.int64(b[at(p + 1)]) << 16)
        | (np.int64(b[at(p + 2)]) << 8)
        | np.int64(b[at(p + 3)])
    )


@kernel
def _u48(b: U8, p: int) -> int:  # pragma: no cover - compiled
    return (_u16(b, p) << 32) | _u32(b, p + 2)


@kernel
def _u64(b: U8, p: int) -> int:  # pragma: no cover - compiled
    return (_u32(b, p) << 32) | _u32(b, p + 4)


@kernel
def _key(b: U8, p: int, locate: int) -> int:  # pragma: no cover - compiled
    """The order key of the reference at ``p``, or -1 when the reference is too large to key."""
    hi = _u32(b, p)
    if hi >= MAX_REFERENCE_HI:
        return -1
    return (hi << 32 | _u32(b, p + 4)) | locate << 47


@kernel
def _bad_add(key: int, shares: int, price: int) -> bool:  # pragma: no cover - compiled
    """Whether an add's (or a replace's new order's) key, shares or price cannot be booked."""
    return key < 0 or shares == 0 or shares >= MAX_VALUE or price >= MAX_VALUE


@kernel
def _prefetch_next(
    b: U8, p: int, ctrl: U64, orders: I64, shift: int, bk_start: I64, bk_len: I64
) -> None:  # pragma: no cover - compiled
    """Start loading the order-table group of the reference that the message at ``p`` names,
    and its symbol's book headers (both sides share a line).

    The table outgrows the caches and references scatter over it, so each lookup would wait
    for memory; started one message early, the load overlaps that message's work. The type is
    not looked at (that cost more than it saved): for other messages the bytes are no reference
    and the line goes unused.
    """
    loc = _u16(b, p + _LOCATE)
    # Unchecked (_key would branch on the reference's size): a wrong guess costs one line.
    g = table.group_of(_u64(b, p + _REF) | loc << 47, shift)
    prefetch(ctrl, at(g))
    prefetch(orders, at(2 * table.GROUP * g))
    prefetch(bk_start, at(2 * loc))
    prefetch(bk_len, at(2 * loc))


@kernel
def _move_book(
    b: int, used: int, bk_start: I64, bk_len: I64, bk_cap: I64, lv_key: I32, lv_qty: I64,
    lv_cnt: I32,
) -> int:  # pragma: no cover - compiled
    """Move full book ``b`` to the end of the pool with half again its room: the rows used
    after, or -1 when the pool has no room for it (nothing moved)."""
    n = bk_len[b]
    grown = n + (n >> 1) + 4
    if used + grown > lv_key.shape[0]:
        return -1
    s = bk_start[b]
    for i in range(n):
        lv_key[used + i] = lv_key[s + i]
        lv_qty[used + i] = lv_qty[s + i]
        lv_cnt[used + i] = lv_cnt[s + i]
    bk_start[b] = used
    bk_cap[b] = grown
    return int(used + grown)


@kernel
def apply_blocks(
    buf: U8,
    pos: int,
    counts: I64,
    defined: U8,
    names: U8,
    trading_state: U8,
    reg_sho: U8,
    top: I64,
    ctrl: U64,
    orders: I64,
    bk_start: I64,
    bk_len: I64,
    bk_cap: I64,
    lv_key: I32,
    lv_qty: I64,
    lv_cnt: I32,
    bbo: npt.NDArray[np.void],
    trades: npt.NDArray[np.void],
    status: npt.NDArray[np.void],
) -> tuple[int, int]:  # pragma: no cover - compiled
    """Apply the block stream ``buf`` from byte ``pos`` to the books, appending events.

    Returns ``(pos, code)``: ``DONE`` with ``pos`` at the end of the stream, or a ``NEED_*`` code
    with ``pos`` at the message that needs more room and is not yet applied. Event arrays must
    hold one event of each kind per message; ``counts`` says how many were written.
    """
    end = buf.shape[0]
    n_locates = defined.shape[0]
    # Counters live in locals for the loop: stores to any int64 array might alias ``counts``,
    # so LLVM would reload and store them around every write to the books.
    shift = counts[ST_SHIFT]
    limit = counts[ST_LIMIT]
    deleted = counts[ST_DELETED]
    max_locates = counts[ST_MAX_LOCATES]
    live = counts[ST_LIVE]
    peak = counts[ST_PEAK]
    used = counts[ST_POOL_USED]
    n_bbo = counts[ST_BBO]
    n_trades = counts[ST_TRADES]
    n_status = counts[ST_STATUS]
    # But the message count stays in ``counts``: one add to memory a message, read only to
    # number an event. A local read by every event (as from 5243b1e) held a register that the
    # level search wanted, and the books ran ~2-5 % slower (bench/ab.py, 2026-12-07).
    first = counts[ST_FIRST] + 1  # events number a stream's messages from 0
    code = DONE
    while pos + 2 <= end:
        size = _u16(buf, pos)
        p = pos + 2
        nxt = p + size
        if nxt > end:
            counts[ANOMALY_AT + TRUNCATED] += 1
            counts[ST_MESSAGES] += 1
            pos = end
            break
        if size == 0:
            counts[ANOMALY_AT + BAD_LENGTH] += 1
            counts[ST_MESSAGES] += 1
            pos = nxt
            continue
        if nxt + 2 + _REF + 8 <= end:
            _prefetch_next(buf, nxt + 2, ctrl, orders, shift, bk_start, bk_len)
        t = int(buf[at(p)])
        want = _LENGTHS[at(t)]
        if want != size:
            counts[at(TYPE_AT + t)] += 1
            counts[ST_MESSAGES] += 1
            counts[ANOMALY_AT + (UNKNOWN_TYPE if want == 0 else BAD_LENGTH)] += 1
            pos = nxt
            continue
        locate = _u16(buf, p + _LOCATE)
        known = locate < n_locates and defined[at(locate)] != 0
        slot = -1
        if t in (_A, _F, _U):
            # Room first, so that a message is either applied whole or not started.
            if live + deleted >= limit:
                code = NEED_ORDERS
                break
            if known:
                if t == _U:
                    key = _key(buf, p + _REF, locate)
                    slot = table.find(ctrl, orders, key, shift) if key >= 0 else -1
                    side = (orders[at(2 * slot + 1)] >> 31) & 1 if slot >= 0 else -1
                else:
                    side_byte = buf[at(p + _SIDE)]
                    side = 0 if side_byte == _BUY else 1 if side_byte == _SELL else -1
                if side >= 0:
                    b = 2 * locate + side
                    if bk_len[at(b)] == bk_cap[at(b)]:
                        moved = _move_book(
                            b, used, bk_start, bk_len, bk_cap, lv_key, lv_qty, lv_cnt
                        )
                        if moved < 0:
                            code = NEED_LEVELS
                            break
                        used = moved
        elif t == _R and locate < max_locates and locate >= n_locates:
            code = NEED_LOCATES
            break
        counts[at(TYPE_AT + t)] += 1
        counts[ST_MESSAGES] += 1
        pos = nxt
        # What the message does, gathered first so that each change below is written once
        # (numba does not inline calls that take many arrays, and they cost more than the work).
        changed = False
        changed_ask = 0
        tr_kind = 0
        add_key = -1

        if t in (_D, _A, _U, _X, _E, _F, _C):
            if not known:
                counts[ANOMALY_AT + UNKNOWN_LOCATE] += 1
                continue
            add_ask, add_shares, add_price = 0, 0, 0
            if t in (_A, _F):
                side_byte = buf[at(p + _SIDE)]
                if side_byte != _BUY and side_byte != _SELL:
                    counts[ANOMALY_AT + BAD_SIDE] += 1
                    continue
                add_ask = 0 if side_byte == _BUY else 1
                add_key = _key(buf, p + _REF, locate)
                add_shares = _u32(buf, p + _A_SHARES)
                add_price = _u32(buf, p + _A_PRICE)
                if _bad_add(add_key, add_shares, add_price):
                    counts[ANOMALY_AT + BAD_VALUE] += 1
                    continue
            else:
                if t != _U:  # the room check above already found a replace's order
                    key = _key(buf, p + _REF, locate)
                    slot = table.find(ctrl, orders, key, shift) if key >= 0 else -1
                if slot < 0:
                    counts[ANOMALY_AT + UNKNOWN_REFERENCE] += 1
                    continue
                value = orders[at(2 * slot + 1)]
                ask = (value >> 31) & 1
                left = value & _LOW31
                price = value >> 32
                if t in (_D, _U):
                    take = left
                elif t == _X:
                    take = _u32(buf, p + _X_SHARES)
                    if take > left:
                        counts[ANOMALY_AT + OVER_CANCEL] += 1
                        take = left
                else:
                    tr_kind = t
                    tr_size = _u32(buf, p + _EC_SHARES)
                    tr_match = _u64(buf, p + _EC_MATCH)
                    tr_side = _SELL if ask else _BUY
                    if t == _E:
                        tr_price, tr_printable = price, 1
                    else:
                        tr_price = _u32(buf, p + _C_PRICE)
                        tr_printable = 1 if buf[at(p + _C_PRINTABLE)] == _YES else 0
                    take = tr_size
                    if take > left:
                        counts[ANOMALY_AT + OVER_EXECUTION] += 1
                        take = left
                gone = take == left
                if gone:
                    deleted += table.erase(ctrl, slot)
                    live -= 1
                else:
                    orders[at(2 * slot + 1)] = value - take
                b = 2 * locate + ask
                s = bk_start[at(b)]
                n = bk_len[at(b)]
                level = -price if ask else price
                last = s + n - 1
                i = last
                while i > s and lv_key[at(i)] > level:
                    i -= 1
                changed = i == last  # only the best level can move the BBO
                changed_ask = ask
                lv_qty[at(i)] -= take
                if gone:
                    cnt = lv_cnt[at(i)] - 1
                    lv_cnt[at(i)] = cnt
                    if cnt == 0:
                        for j in range(i, last):
                            lv_key[at(j)] = lv_key[at(j + 1)]
                            lv_qty[at(j)] = lv_qty[at(j + 1)]
                            lv_cnt[at(j)] = lv_cnt[at(j + 1)]
                        bk_len[at(b)] = n - 1
                if t == _U:
                    add_ask = ask
                    add_key = _key(buf, p + _U_NEW, locate)
                    add_shares = _u32(buf, p + _U_SHARES)
                    add_price = _u32(buf, p + _U_PRICE)
                    if _bad_add(add_key, add_shares, add_price):
                        counts[ANOMALY_AT + BAD_VALUE] += 1
                        add_key = -1
            if add_key >= 0:
                if table.find(ctrl, orders, add_key, shift) >= 0:
                    counts[ANOMALY_AT + DUPLICATE_REFERENCE] += 1
                else:
                    value = add_price << 32 | add_ask << 31 | add_shares
                    deleted -= table.insert(ctrl, orders, add_key, value, shift)
                    live += 1
                    if live > peak:
                        peak = live
                    b = 2 * locate + add_ask
                    s = bk_start[at(b)]
                    n = bk_len[at(b)]
                    level = -add_price if add_ask else add_price
                    last = s + n - 1
                    i = last
                    while i >= s and lv_key[at(i)] > level:
                        i -= 1
                    changed = changed or i == last
                    changed_ask = add_ask
                    if i >= s and lv_key[at(i)] == level:
                        lv_qty[at(i)] += add_shares
                        lv_cnt[at(i)] += 1
                    else:
                        for j in range(s + n, i + 1, -1):
                            lv_key[at(j)] = lv_key[at(j - 1)]
                            lv_qty[at(j)] = lv_qty[at(j - 1)]
                            lv_cnt[at(j)] = lv_cnt[at(j - 1)]
                        lv_key[at(i + 1)] = level
                        lv_qty[at(i + 1)] = add_shares
                        lv_cnt[at(i + 1)] = 1
                        bk_len[at(b)] = n + 1

        elif t in (_P, _Q, _BRK):
            if not known:
                counts[ANOMALY_AT + UNKNOWN_LOCATE] += 1
                continue
            tr_kind = t
            tr_side, tr_printable = 0, 1
            if t == _P:
                tr_match = _u64(buf, p + _P_MATCH)
                tr_price = _u32(buf, p + _P_PRICE)
                tr_size = _u32(buf, p + _P_SHARES)
                tr_side = int(buf[at(p + _P_SIDE)])
            elif t == _Q:
                tr_match = _u64(buf, p + _Q_MATCH)
                tr_price = _u32(buf, p + _Q_PRICE)
                tr_size = _u64(buf, p + _Q_SHARES)
            else:
                tr_match = _u64(buf, p + _B_MATCH)
                tr_price, tr_size, tr_printable = 0, 0, 0

        elif t == _R:
            if locate == 0 or locate >= n_locates:
                counts[ANOMALY_AT + UNKNOWN_LOCATE] += 1
                continue
            same = True
            for i in range(8):
                if names[locate, i] != buf[p + _R_STOCK + i]:
                    same = False
                names[locate, i] = buf[p + _R_STOCK + i]
            if defined[locate] != 0 and not same:
                counts[ANOMALY_AT + LOCATE_REDEFINED] += 1
            defined[locate] = 1

        elif t in (_S, _H, _Y):
            if t == _S:
                code_byte = buf[p + _S_CODE]
                counts[ST_MARKET] = code_byte
            elif not known:
                counts[ANOMALY_AT + UNKNOWN_LOCATE] += 1
                continue
            elif t == _H:
                code_byte = buf[p + _H_STATE]
                trading_state[locate] = code_byte
            else:
                code_byte = buf[p + _Y_ACTION]
                reg_sho[locate] = code_byte
            e = n_status
            n_status += 1
            status[e]["locate"] = locate
            status[e]["timestamp"] = _u48(buf, p + _TIME)
            status[e]["kind"] = t
            status[e]["code"] = code_byte
            for i in range(4):
                status[e]["reason"][i] = buf[p + _H_REASON + i] if t == _H else 0
            status[e]["message"] = counts[ST_MESSAGES] - first

        if tr_kind != 0:
            e = n_trades
            n_trades += 1
            trades[e]["locate"] = locate
            trades[e]["timestamp"] = _u48(buf, p + _TIME)
            trades[e]["price"] = tr_price
            trades[e]["size"] = tr_size
            trades[e]["match"] = tr_match
            trades[e]["side"] = tr_side
            trades[e]["kind"] = tr_kind
            trades[e]["printable"] = tr_printable
            trades[e]["message"] = counts[ST_MESSAGES] - first

        if changed:
            # A BBO event only when the best bid or offer differs from the last one sent. A
            # message moves one side's best at most, and ``top`` holds the other's, so only
            # the changed side's book is read.
            b = 2 * locate + changed_ask
            n = bk_len[at(b)]
            best_px, best_qty = 0, 0
            if n > 0:
                i = bk_start[at(b)] + n - 1
                best_px = -int(lv_key[at(i)]) if changed_ask else int(lv_key[at(i)])
                best_qty = lv_qty[at(i)]
            c = 2 * changed_ask
            if best_px != top[locate, c] or best_qty != top[locate, c + 1]:
                top[locate, c] = best_px
                top[locate, c + 1] = best_qty
                e = n_bbo
                n_bbo += 1
                bbo[e]["locate"] = locate
                bbo[e]["timestamp"] = _u48(buf, p + _TIME)
                bbo[e]["bid_price"] = top[locate, 0]
                bbo[e]["bid_size"] = top[locate, 1]
                bbo[e]["ask_price"] = top[locate, 2]
                bbo[e]["ask_size"] = top[locate, 3]
                bbo[e]["message"] = counts[ST_MESSAGES] - first
    counts[ST_LIVE] = live
    counts[ST_DELETED] = deleted
    counts[ST_PEAK] = peak
    counts[ST_POOL_USED] = used
    counts[ST_BBO] = n_bbo
    counts[ST_TRADES] = n_trades
    counts[ST_STATUS] = n_status
    return pos, code


@kernel
def compact(
    bk_start: I64, bk_len: I64, bk_cap: I64, caps: I64,
    old_key: I32, old_qty: I64, old_cnt: I32, new_key: I32, new_qty: I64, new_cnt: I32,
) -> int:  # pragma: no cover - compiled
    """Copy every book's levels into a fresh pool with capacity ``caps[b]``; returns rows used."""
    at = 0
    for b in range(bk_len.shape[0]):
        cap = caps[b]
        if cap == 0:
            continue
        s = bk_start[b]
        for i in range(bk_len[b]):
            new_key[at + i] = old_key[s + i]
            new_qty[at + i] = old_qty[s + i]
            new_cnt[at + i] = old_cnt[s + i]
        bk_start[b] = at
        bk_cap[b] = cap
        at += cap
    return at
