"""What an edge knows of the books: each symbol's latest state as the events records tell it
(its name, BBO, trading action, Reg SHO, the market's state), kept a batch at a time with numpy,
and images of it in the plant's own shape (:func:`tickerplant.book.normalize.encode_images`).

The records carry no depth beyond the BBO, so an edge's images have no depth levels: they
equal the plant's when the plant's ``[events] depth`` is 0, and its symbol, BBO and status
records otherwise. An image is stamped with the last record it includes and that record's
source number (the plant stamps the last itch message its books applied: the same number
unless the messages after it raised no record).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import numpy.typing as npt

from tickerplant.book.engine import Images
from tickerplant.book.normalize import encode_images
from tickerplant.book.records import LEVEL
from tickerplant.wire import events as ev

LOCATES = 1 << 16


def _latest(rows: npt.NDArray[np.void]) -> npt.NDArray[np.void]:
    """The last row per locate."""
    _, first = np.unique(rows["locate"][::-1], return_index=True)
    out: npt.NDArray[np.void] = rows[::-1][first]
    return out


class Latest:
    """Each symbol's latest state; a :class:`~tickerplant.distribute.fanout.Catalog` for an
    events fan-out."""

    def __init__(self) -> None:
        self.names = np.full(LOCATES, b" " * 8, dtype="S8")
        self.defined = np.zeros(LOCATES, dtype=np.bool_)
        self.top = np.zeros((LOCATES, 4), dtype=np.int64)
        self.trading = np.zeros(LOCATES, dtype=np.uint8)
        self.reg_sho = np.zeros(LOCATES, dtype=np.uint8)
        self.market = ""
        self.sequence = 0  # the last record applied, and its source
        self.source = 0
        self._by_symbol: dict[bytes, int] = {}

    def apply(self, records: npt.NDArray[np.void]) -> None:
        """Records in stream order (a RECORD array)."""
        if not records.shape[0]:
            return
        symbols = ev.view(records, ev.SYMBOL)
        if symbols.shape[0]:
            latest = _latest(symbols)
            self.names[latest["locate"]] = latest["symbol"]
            self.defined[latest["locate"]] = True
            self._by_symbol.update(zip(latest["symbol"].tolist(), latest["locate"].tolist(),
                                       strict=True))  # fmt: skip
        bbo = ev.view(records, ev.BBO)
        if bbo.shape[0]:
            latest = _latest(bbo)
            for i, name in enumerate(("bid_price", "bid_size", "ask_price", "ask_size")):
                self.top[latest["locate"], i] = latest[name]
        status = ev.view(records, ev.STATUS)
        for kind, into in ((b"H", self.trading), (b"Y", self.reg_sho)):
            rows = status[status["status"] == ord(kind)]
            if rows.shape[0]:
                latest = _latest(rows)
                into[latest["locate"]] = latest["code"]
        market = status[status["status"] == ord("S")]
        if market.shape[0]:
            self.market = chr(int(market["code"][-1]))
        self.sequence = int(records["sequence"][-1])
        self.source = int(records["source"][-1])

    def locate(self, symbol: bytes) -> int | None:
        return self._by_symbol.get(symbol)

    def locates(self) -> list[int]:
        return np.flatnonzero(self.defined).tolist()

    def images(self, locates: list[int]) -> Callable[[], bytes]:
        at = np.asarray(locates, dtype=np.int64)
        none = np.zeros(0, dtype=np.int64)
        names = np.where(self.defined[at], self.names[at], b" " * 8)
        state = Images(names, self.top[at].copy(), self.trading[at].copy(),
                       self.reg_sho[at].copy(), none, none, none, np.zeros(0, dtype=LEVEL))
        return partial(encode_images, state, at, self.sequence, self.source, self.market)
