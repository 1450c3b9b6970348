"""The compiled per-message path of the book engine: one kernel from a block stream to events.

State is plain numpy arrays, passed one by one (numba's reference counting made tuples of arrays
and closures cost half the speed in early versions):

- Orders: an open-addressing hash table ``orders`` (int64[capacity, 2], capacity a power of two)
  of 16-byte rows: the key ``reference | locate << 47`` (0 = empty slot) and the value
  ``price << 32 | ask << 31 | shares``. Keys fold the locate in, so an E/C/X/D/U naming another
  symbol's reference is an unknown reference, not a corrupt book. Linear probing with
  backward-shift deletion: no tombstones, memory follows live orders and not references issued.
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

from tickerplant.book.records import (
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
from tickerplant.jit import kernel
from tickerplant.wire.blocks import U8
from tickerplant.wire.itch import offset

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
I16 = npt.NDArray[np.int16]

# Return codes.
DONE, NEED_ORDERS, NEED_LEVELS, NEED_LOCATES = 0, 1, 2, 3

# Indices into the stats array.
ST_LIVE, ST_PEAK, ST_LIMIT, ST_SHIFT, ST_POOL_USED = 0, 1, 2, 3, 4
ST_BBO, ST_TRADES, ST_STATUS, ST_MESSAGES, ST_MARKET, ST_MAX_LOCATES = 5, 6, 7, 8, 9, 10
STATS = 11

MAX_VALUE = 1 << 31  # shares and prices must stay below: they share one int64 in an order row
MAX_REFERENCE_HI = 1 << 15  # references < 2**47 leave the top of the key for the locate
_LOW31 = (1 << 31) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: sequential references spread out

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
_A_REF, _A_SIDE = offset("A", "order_reference"), offset("A", "side")
_A_SHARES, _A_PRICE = offset("A", "shares"), offset("A", "price")
_F_REF, _F_SIDE = offset("F", "order_reference"), offset("F", "side")
_F_SHARES, _F_PRICE = offset("F", "shares"), offset("F", "price")
_E_REF, _E_SHARES, _E_MATCH = (
    offset("E", "order_reference"),
    offset("E", "executed_shares"),
    offset("E", "match_number"),
)
_C_REF, _C_SHARES, _C_MATCH = (
    offset("C", "order_reference"),
    offset("C", "executed_shares"),
    offset("C", "match_number"),
)
_C_PRINTABLE, _C_PRICE = offset("C", "printable"), offset("C", "execution_price")
_X_REF, _X_SHARES = offset("X", "order_reference"), offset("X", "cancelled_shares")
_D_REF = offset("D", "order_reference")
_U_OLD, _U_NEW = offset("U", "original_order_reference"), offset("U", "new_order_reference")
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
    return int((np.int64(b[p]) << 8) | np.int64(b[p + 1]))


@kernel
def _u32(b: U8, p: int) -> int:  # pragma: no cover - compiled
    return int(
        (np.int64(b[p]) << 24)
        | (np.int64(b[p + 1]) << 16)
        | (np.int64(b[p + 2]) << 8)
        | np.int64(b[p + 3])
    )


@kernel
def _u48(b: U8, p: int) -> int:  # pragma: no cover - compiled
    return (_u16(b, p) << 32) | _u32(b, p + 2)


@kernel
def _key(b: U8, p: int, locate: int) -> int:  # pragma: no cover - compiled
    """The order key of the reference at ``p``, or -1 when the reference is too large to key."""
    hi = _u32(b, p)
    if hi >= MAX_REFERENCE_HI:
        return -1
    return (hi << 32 | _u32(b, p + 4)) | locate << 47


@kernel
def _home(key: int, shift: int) -> int:  # pragma: no cover - compiled
    return int(np.int64((np.uint64(key) * _GOLDEN) >> np.uint64(shift)))


@kernel
def _probe(orders: I64, key: int, shift: int) -> int:  # pragma: no cover - compiled
    """The slot holding ``key``, or ``-1 - slot`` of the empty slot where it would go."""
    mask = orders.shape[0] - 1
    i = _home(key, shift)
    while True:
        k = orders[i, 0]
        if k == key:
            return i
        if k == 0:
            return -1 - i
        i = (i + 1) & mask


@kernel
def _erase(orders: I64, i: int, shift: int) -> None:  # pragma: no cover - compiled
    """Empty slot ``i``, moving later rows of its probe run back so that no tombstone is left."""
    mask = orders.shape[0] - 1
    j = i
    while True:
        j = (j + 1) & mask
        k = orders[j, 0]
        if k == 0:
            break
        # The row at j may fill the hole at i unless its home lies cyclically in (i, j].
        if ((j - _home(k, shift)) & mask) >= ((j - i) & mask):
            orders[i, 0] = k
            orders[i, 1] = orders[j, 1]
            i = j
    orders[i, 0] = 0
    orders[i, 1] = 0


@kernel
def apply_blocks(
    buf: U8,
    pos: int,
    lengths: I16,
    by_type: I64,
    anomalies: I64,
    stats: I64,
    defined: U8,
    names: U8,
    trading_state: U8,
    reg_sho: U8,
    top: I64,
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
    hold one event of each kind per message; ``stats`` counts what was written.
    """
    end = buf.shape[0]
    shift = stats[ST_SHIFT]
    n_locates = defined.shape[0]
    while pos + 2 <= end:
        size = _u16(buf, pos)
        if pos + 2 + size > end:
            anomalies[TRUNCATED] += 1
            stats[ST_MESSAGES] += 1
            pos = end
            break
        p = pos + 2
        nxt = p + size
        if size == 0:
            anomalies[BAD_LENGTH] += 1
            stats[ST_MESSAGES] += 1
            pos = nxt
            continue
        t = int(buf[p])
        want = lengths[t]
        if want != size:
            by_type[t] += 1
            stats[ST_MESSAGES] += 1
            anomalies[UNKNOWN_TYPE if want == 0 else BAD_LENGTH] += 1
            pos = nxt
            continue
        locate = _u16(buf, p + _LOCATE)
        known = locate < n_locates and defined[locate] != 0
        slot = -1
        if t in (_A, _F, _U):
            # Room first, so that a message is either applied whole or not started.
            if stats[ST_LIVE] >= stats[ST_LIMIT]:
                return pos, NEED_ORDERS
            if known:
                if t == _U:
                    key = _key(buf, p + _U_OLD, locate)
                    slot = _probe(orders, key, shift) if key >= 0 else -1
                    side = (orders[slot, 1] >> 31) & 1 if slot >= 0 else -1
                else:
                    side_byte = buf[p + (_A_SIDE if t == _A else _F_SIDE)]
                    side = 0 if side_byte == _BUY else 1 if side_byte == _SELL else -1
                if side >= 0:
                    b = 2 * locate + side
                    n = bk_len[b]
                    cap = bk_cap[b]
                    if n == cap:
                        # A full segment moves to the end of the pool with half again its room.
                        grown = cap + (cap >> 1) + 4
                        used = stats[ST_POOL_USED]
                        if used + grown > lv_key.shape[0]:
                            return pos, NEED_LEVELS
                        s = bk_start[b]
                        for i in range(n):
                            lv_key[used + i] = lv_key[s + i]
                            lv_qty[used + i] = lv_qty[s + i]
                            lv_cnt[used + i] = lv_cnt[s + i]
                        bk_start[b] = used
                        bk_cap[b] = grown
                        stats[ST_POOL_USED] = used + grown
        elif t == _R and locate < stats[ST_MAX_LOCATES] and locate >= n_locates:
            return pos, NEED_LOCATES
        by_type[t] += 1
        stats[ST_MESSAGES] += 1
        pos = nxt
        ts = _u48(buf, p + _TIME)
        # What the message does, gathered first so that each change below is written once
        # (numba does not inline calls that take many arrays, and they cost more than the work).
        changed = False
        tr_kind, tr_price, tr_size, tr_match, tr_side, tr_printable = 0, 0, 0, 0, 0, 0

        if t in (_A, _F, _E, _C, _X, _D, _U):
            if not known:
                anomalies[UNKNOWN_LOCATE] += 1
                continue
            add_key, add_ask, add_shares, add_price = -1, 0, 0, 0
            if t in (_A, _F):
                side_byte = buf[p + (_A_SIDE if t == _A else _F_SIDE)]
                if side_byte != _BUY and side_byte != _SELL:
                    anomalies[BAD_SIDE] += 1
                    continue
                add_ask = 0 if side_byte == _BUY else 1
                add_key = _key(buf, p + (_A_REF if t == _A else _F_REF), locate)
                add_shares = _u32(buf, p + (_A_SHARES if t == _A else _F_SHARES))
                add_price = _u32(buf, p + (_A_PRICE if t == _A else _F_PRICE))
                if (
                    add_key < 0 or add_shares == 0 or add_shares >= MAX_VALUE
                    or add_price >= MAX_VALUE
                ):  # fmt: skip
                    anomalies[BAD_VALUE] += 1
                    continue
            else:
                if t != _U:  # the room check above already found a replace's order
                    if t == _E:
                        o_ref = _E_REF
                    elif t == _C:
                        o_ref = _C_REF
                    elif t == _X:
                        o_ref = _X_REF
                    else:
                        o_ref = _D_REF
                    key = _key(buf, p + o_ref, locate)
                    slot = _probe(orders, key, shift) if key >= 0 else -1
                if slot < 0:
                    anomalies[UNKNOWN_REFERENCE] += 1
                    continue
                value = orders[slot, 1]
                ask = (value >> 31) & 1
                left = value & _LOW31
                price = value >> 32
                if t == _X:
                    take = _u32(buf, p + _X_SHARES)
                    if take > left:
                        anomalies[OVER_CANCEL] += 1
                        take = left
                elif t in (_E, _C):
                    o_match = _E_MATCH if t == _E else _C_MATCH
                    tr_kind = t
                    tr_size = _u32(buf, p + (_E_SHARES if t == _E else _C_SHARES))
                    tr_match = _u32(buf, p + o_match) << 32 | _u32(buf, p + o_match + 4)
                    tr_side = _SELL if ask else _BUY
                    if t == _E:
                        tr_price, tr_printable = price, 1
                    else:
                        tr_price = _u32(buf, p + _C_PRICE)
                        tr_printable = 1 if buf[p + _C_PRINTABLE] == _YES else 0
                    take = tr_size
                    if take > left:
                        anomalies[OVER_EXECUTION] += 1
                        take = left
                else:
                    take = left
                gone = take == left
                if gone:
                    _erase(orders, slot, shift)
                    stats[ST_LIVE] -= 1
                else:
                    orders[slot, 1] = value - take
                b = 2 * locate + ask
                s = bk_start[b]
                n = bk_len[b]
                level = -price if ask else price
                i = s + n - 1
                while i > s and lv_key[i] > level:
                    i -= 1
                changed = i == s + n - 1  # only the best level can move the BBO
                lv_qty[i] -= take
                if gone:
                    lv_cnt[i] -= 1
                    if lv_cnt[i] == 0:
                        for j in range(i, s + n - 1):
                            lv_key[j] = lv_key[j + 1]
                            lv_qty[j] = lv_qty[j + 1]
                            lv_cnt[j] = lv_cnt[j + 1]
                        bk_len[b] = n - 1
                if t == _U:
                    add_ask = ask
                    add_key = _key(buf, p + _U_NEW, locate)
                    add_shares = _u32(buf, p + _U_SHARES)
                    add_price = _u32(buf, p + _U_PRICE)
                    if (
                        add_key < 0 or add_shares == 0 or add_shares >= MAX_VALUE
                        or add_price >= MAX_VALUE
                    ):  # fmt: skip
                        anomalies[BAD_VALUE] += 1
                        add_key = -1
            if add_key >= 0:
                slot = _probe(orders, add_key, shift)
                if slot >= 0:
                    anomalies[DUPLICATE_REFERENCE] += 1
                else:
                    slot = -1 - slot
                    orders[slot, 0] = add_key
                    orders[slot, 1] = add_price << 32 | add_ask << 31 | add_shares
                    live = stats[ST_LIVE] + 1
                    stats[ST_LIVE] = live
                    if live > stats[ST_PEAK]:
                        stats[ST_PEAK] = live
                    b = 2 * locate + add_ask
                    s = bk_start[b]
                    n = bk_len[b]
                    level = -add_price if add_ask else add_price
                    i = s + n - 1
                    while i >= s and lv_key[i] > level:
                        i -= 1
                    changed = changed or i == s + n - 1
                    if i >= s and lv_key[i] == level:
                        lv_qty[i] += add_shares
                        lv_cnt[i] += 1
                    else:
                        for j in range(s + n, i + 1, -1):
                            lv_key[j] = lv_key[j - 1]
                            lv_qty[j] = lv_qty[j - 1]
                            lv_cnt[j] = lv_cnt[j - 1]
                        lv_key[i + 1] = level
                        lv_qty[i + 1] = add_shares
                        lv_cnt[i + 1] = 1
                        bk_len[b] = n + 1

        elif t in (_P, _Q, _BRK):
            if not known:
                anomalies[UNKNOWN_LOCATE] += 1
                continue
            tr_kind = t
            if t == _P:
                tr_match = _u32(buf, p + _P_MATCH) << 32 | _u32(buf, p + _P_MATCH + 4)
                tr_price = _u32(buf, p + _P_PRICE)
                tr_size = _u32(buf, p + _P_SHARES)
                tr_side = int(buf[p + _P_SIDE])
                tr_printable = 1
            elif t == _Q:
                tr_match = _u32(buf, p + _Q_MATCH) << 32 | _u32(buf, p + _Q_MATCH + 4)
                tr_price = _u32(buf, p + _Q_PRICE)
                tr_size = _u32(buf, p + _Q_SHARES) << 32 | _u32(buf, p + _Q_SHARES + 4)
                tr_printable = 1
            else:
                tr_match = _u32(buf, p + _B_MATCH) << 32 | _u32(buf, p + _B_MATCH + 4)

        elif t == _R:
            if locate == 0 or locate >= n_locates:
                anomalies[UNKNOWN_LOCATE] += 1
                continue
            same = True
            for i in range(8):
                if names[locate, i] != buf[p + _R_STOCK + i]:
                    same = False
                names[locate, i] = buf[p + _R_STOCK + i]
            if defined[locate] != 0 and not same:
                anomalies[LOCATE_REDEFINED] += 1
            defined[locate] = 1

        elif t in (_S, _H, _Y):
            if t == _S:
                code = buf[p + _S_CODE]
                stats[ST_MARKET] = code
            elif not known:
                anomalies[UNKNOWN_LOCATE] += 1
                continue
            elif t == _H:
                code = buf[p + _H_STATE]
                trading_state[locate] = code
            else:
                code = buf[p + _Y_ACTION]
                reg_sho[locate] = code
            e = stats[ST_STATUS]
            stats[ST_STATUS] = e + 1
            status[e]["locate"] = locate
            status[e]["timestamp"] = ts
            status[e]["kind"] = t
            status[e]["code"] = code
            for i in range(4):
                status[e]["reason"][i] = buf[p + _H_REASON + i] if t == _H else 0

        if tr_kind != 0:
            e = stats[ST_TRADES]
            stats[ST_TRADES] = e + 1
            trades[e]["locate"] = locate
            trades[e]["timestamp"] = ts
            trades[e]["price"] = tr_price
            trades[e]["size"] = tr_size
            trades[e]["match"] = tr_match
            trades[e]["side"] = tr_side
            trades[e]["kind"] = tr_kind
            trades[e]["printable"] = tr_printable

        if changed:
            # A BBO event only when the best bid or offer differs from the last one sent.
            bid_px, bid_qty, ask_px, ask_qty = 0, 0, 0, 0
            b = 2 * locate
            n = bk_len[b]
            if n > 0:
                i = bk_start[b] + n - 1
                bid_px = int(lv_key[i])
                bid_qty = lv_qty[i]
            n = bk_len[b + 1]
            if n > 0:
                i = bk_start[b + 1] + n - 1
                ask_px = -int(lv_key[i])
                ask_qty = lv_qty[i]
            if (
                bid_px != top[locate, 0]
                or bid_qty != top[locate, 1]
                or ask_px != top[locate, 2]
                or ask_qty != top[locate, 3]
            ):
                top[locate, 0] = bid_px
                top[locate, 1] = bid_qty
                top[locate, 2] = ask_px
                top[locate, 3] = ask_qty
                e = stats[ST_BBO]
                stats[ST_BBO] = e + 1
                bbo[e]["locate"] = locate
                bbo[e]["timestamp"] = ts
                bbo[e]["bid_price"] = bid_px
                bbo[e]["bid_size"] = bid_qty
                bbo[e]["ask_price"] = ask_px
                bbo[e]["ask_size"] = ask_qty
    return pos, DONE


@kernel
def rehash(old: I64, new: I64, shift: int) -> None:  # pragma: no cover - compiled
    """Insert every row of the order table ``old`` into the empty table ``new``."""
    for i in range(old.shape[0]):
        key = old[i, 0]
        if key != 0:
            j = -1 - _probe(new, key, shift)
            new[j, 0] = key
            new[j, 1] = old[i, 1]


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
