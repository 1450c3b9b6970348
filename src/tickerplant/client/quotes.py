"""What ``tickerplant subscribe --events`` shows: each symbol's BBO and last trade, kept from
the events stream's records a batch at a time (the latest per symbol found with numpy, not a
Python step per record), and records as JSON."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from rich.table import Table

from tickerplant.wire import events as ev

PRICE_SCALE = 10_000  # 4 implied decimals
# A trade or a trades summary as a last price: (its number, symbol, price, size or volume).
_LAST = np.dtype([("sequence", "<u8"), ("locate", "<u2"), ("price", "<u4"), ("size", "<u8")])


def _latest(rows: npt.NDArray[np.void]) -> npt.NDArray[np.void]:
    """The last row per locate."""
    locates = rows["locate"][::-1]
    _, first = np.unique(locates, return_index=True)
    out: npt.NDArray[np.void] = rows[::-1][first]
    return out


class Quotes:
    """Per symbol: BBO, last trade, updates seen."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.bbo: dict[int, tuple[int, int, int, int]] = {}
        self.last: dict[int, tuple[int, int]] = {}
        self.updates: dict[int, int] = {}
        self.market = ""

    def apply(self, records: npt.NDArray[np.void]) -> None:
        for row in ev.view(records, ev.SYMBOL).tolist():
            self.names[row[4]] = row[6].decode("latin-1").strip()
        bbo = ev.view(records, ev.BBO)
        if bbo.shape[0]:
            for row in _latest(bbo)[["locate", "bid_price", "bid_size", "ask_price",
                                     "ask_size"]].tolist():  # fmt: skip
                self.bbo[row[0]] = row[1:]
            locates, counts = np.unique(bbo["locate"], return_counts=True)
            for locate, n in zip(locates.tolist(), counts.tolist(), strict=True):
                self.updates[locate] = self.updates.get(locate, 0) + n
        trades = ev.view(records, ev.TRADE)
        trades = trades[trades["trade"] != ev.BROKEN]  # a broken trade is not a last price
        summaries = ev.view(records, ev.TRADES)  # a conflated client's: last price, volume
        last = np.concatenate([
            trades[["sequence", "locate", "price", "size"]].astype(_LAST),
            summaries[["sequence", "locate", "last", "volume"]].astype(_LAST),
        ])  # fields cast by position
        if last.shape[0]:
            if summaries.shape[0]:
                last = last[np.argsort(last["sequence"], kind="stable")]
            for locate, price, size in _latest(last)[["locate", "price", "size"]].tolist():
                self.last[locate] = (price, size)
        status = ev.view(records, ev.STATUS)
        market = status[status["status"] == ord("S")]
        if market.shape[0]:
            self.market = chr(int(market["code"][-1]))

    def table(self, rows: int = 20) -> Table:
        """The busiest ``rows`` symbols (most BBO updates)."""
        table = Table(title=f"events: {len(self.bbo):,} symbols"
                      + (f", market state {self.market}" if self.market else ""))
        for column in ("symbol", "bid size", "bid", "ask", "ask size", "last", "last size",
                       "updates"):  # fmt: skip
            table.add_column(column, justify="left" if column == "symbol" else "right")
        busiest = sorted(self.bbo, key=lambda loc: -self.updates.get(loc, 0))[:rows]
        for locate in busiest:
            bid, bid_size, ask, ask_size = self.bbo[locate]
            price, size = self.last.get(locate, (0, 0))
            table.add_row(
                self.names.get(locate, f"#{locate}"), f"{bid_size:,}" if bid_size else "",
                _price(bid), _price(ask), f"{ask_size:,}" if ask_size else "", _price(price),
                f"{size:,}" if size else "", f"{self.updates.get(locate, 0):,}",
            )  # fmt: skip
        return table


def _price(price: int) -> str:
    if not price:
        return ""
    return f"{price / PRICE_SCALE:.{2 if price % 100 == 0 else 4}f}"  # cents unless finer


def as_json(records: npt.NDArray[np.void], names: dict[int, str]) -> list[dict[str, Any]]:
    """Each record as a dict: its kind's fields by name, letters as strings, prices as the
    integers they are (4 implied decimals), the symbol named where known."""
    out = []
    raw = records.view(np.dtype((np.void, ev.RECORD_SIZE)))
    for i, kind in enumerate(records["kind"].tolist()):
        dtype = ev.RECORDS.get(kind)
        if dtype is None:
            out.append({"kind": kind.decode("latin-1"), "sequence": int(records["sequence"][i])})
            continue
        row = raw[i : i + 1].view(dtype)[0]
        item: dict[str, Any] = {"kind": ev.NAMES[kind]}
        for name in dtype.names or ():
            value = row[name]
            if name == "kind":
                continue
            if name == "flags":
                item["image"] = bool(value & ev.IMAGE)
            elif name in ("side", "trade", "status", "code"):
                item[name] = chr(value) if value else None
            elif name in ("reason", "symbol"):
                item[name] = bytes(value).decode("latin-1").strip(" \x00") or None
            else:
                item[name] = int(value)
        locate = item.get("locate")
        if locate and "symbol" not in item and locate in names:
            item["symbol"] = names[locate]
        out.append(item)
    return out
