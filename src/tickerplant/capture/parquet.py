"""BBO changes and trades as Parquet files, for research tools (DuckDB, pandas, polars, Spark).

Input is the book engine's event records (numpy structured arrays, documented in
tickerplant.book.records) plus a table of symbols indexed by locate; this module reads them by
field name only. Output columns:

BBO file (one row per change of a symbol's best bid or offer):
    symbol     string (dictionary-encoded)
    locate     uint16, the day's stock locate
    timestamp  int64, nanoseconds since midnight (exchange time, as ITCH sends it)
    bid_price  int64, 4 implied decimals: 1234500 is $123.45; 0 with bid_size 0 = no bid
    bid_size   int64, shares at the best bid
    ask_price  int64, 4 implied decimals; 0 with ask_size 0 = no offer
    ask_size   int64

Trades file (one row per E, C, P, Q or B message):
    symbol, locate, timestamp   as above
    price      int64, 4 implied decimals (0 on a broken trade)
    size       int64, shares (0 on a broken trade)
    match      int64, the exchange's match number (a B row cancels the trade with this number)
    side       string 'B'/'S' (the resting order's side for E/C, the hidden order's for P), null
               when unknown (Q, B)
    kind       string, the ITCH type letter: E, C, P, Q or B
    printable  bool, whether the trade counts toward volume

Replayed from a packet capture, both files end with one more column:
    capture_time  timestamp[ns, UTC], when the capture saw the first copy (on any line) of the
               message that raised the row

Prices stay integers so that no price is ever rounded: divide by 10_000 to get dollars, e.g. in
DuckDB ``SELECT symbol, timestamp, (ask_price - bid_price) / 1e4 AS spread FROM 'x.bbo.parquet'
WHERE symbol = 'AAPL' AND bid_size > 0 AND ask_size > 0``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from tickerplant.wire import events as ev

ROW_GROUP_ROWS = 1 << 20

_SYMBOL = pa.dictionary(pa.int32(), pa.string())
BBO_SCHEMA = pa.schema(
    [
        ("symbol", _SYMBOL),
        ("locate", pa.uint16()),
        ("timestamp", pa.int64()),
        ("bid_price", pa.int64()),
        ("bid_size", pa.int64()),
        ("ask_price", pa.int64()),
        ("ask_size", pa.int64()),
    ]
)
TRADE_SCHEMA = pa.schema(
    [
        ("symbol", _SYMBOL),
        ("locate", pa.uint16()),
        ("timestamp", pa.int64()),
        ("price", pa.int64()),
        ("size", pa.int64()),
        ("match", pa.int64()),
        ("side", pa.string()),
        ("kind", pa.string()),
        ("printable", pa.bool_()),
    ]
)

Events = npt.NDArray[np.void]
CAPTURE_TIME = pa.field("capture_time", pa.timestamp("ns", tz="UTC"))


def _captured(
    columns: list[pa.Array], schema: pa.Schema, events: Events, times: npt.NDArray[np.int64] | None
) -> pa.Table:
    """The table of ``columns``, with each event's capture time when ``times`` (per message of
    the block stream the events came from) is given."""
    if times is not None:
        columns = [*columns, pa.array(times[events["message"]], type=CAPTURE_TIME.type)]
        schema = schema.append(CAPTURE_TIME)
    return pa.Table.from_arrays(columns, schema=schema)


def _symbols(locates: npt.NDArray[Any], table: npt.NDArray[np.object_]) -> pa.Array:
    return pa.DictionaryArray.from_arrays(
        pa.array(locates.astype(np.int32)), pa.array(table.tolist(), type=pa.string())
    )


def bbo_table(
    bbo: Events, symbols: npt.NDArray[np.object_], times: npt.NDArray[np.int64] | None = None
) -> pa.Table:
    """BBO events as a table of BBO_SCHEMA; ``symbols[locate]`` names each locate."""
    columns = [
        _symbols(bbo["locate"], symbols),
        pa.array(bbo["locate"].astype(np.uint16)),
        *(pa.array(bbo[name].astype(np.int64)) for name in BBO_SCHEMA.names[2:]),
    ]
    return _captured(columns, BBO_SCHEMA, bbo, times)


def trade_table(
    trades: Events, symbols: npt.NDArray[np.object_], times: npt.NDArray[np.int64] | None = None
) -> pa.Table:
    """Trade events as a table of TRADE_SCHEMA."""
    side = trades["side"]
    known = (side == ord("B")) | (side == ord("S"))
    columns = [
        _symbols(trades["locate"], symbols),
        pa.array(trades["locate"].astype(np.uint16)),
        *(pa.array(trades[name].astype(np.int64)) for name in ("timestamp", "price", "size")),
        pa.array(trades["match"].astype(np.int64)),
        pa.array(side.view("S1").astype(str), mask=~known),
        pa.array(trades["kind"].view("S1").astype(str)),
        pa.array(trades["printable"] != 0),
    ]
    return _captured(columns, TRADE_SCHEMA, trades, times)


class Sink:
    """One Parquet file, written in row groups of about ROW_GROUP_ROWS rows, under
    ``path.partial`` until :meth:`close` renames it into place (or removes it: a failed run
    leaves no output, not even an empty file)."""

    def __init__(self, path: str | os.PathLike[str], schema: pa.Schema) -> None:
        self.path = os.fspath(path)
        self._partial = self.path + ".partial"
        self._writer = pq.ParquetWriter(self._partial, schema, compression="zstd")
        self._pending: list[pa.Table] = []
        self._rows = 0
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._pending.append(table)
        self._rows += table.num_rows
        self.rows += table.num_rows
        if self._rows >= ROW_GROUP_ROWS:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.concat_tables(self._pending), ROW_GROUP_ROWS)
            self._pending = []
            self._rows = 0

    def close(self, keep: bool = True) -> None:
        self.flush()
        self._writer.close()
        if keep:
            os.replace(self._partial, self.path)
        else:
            os.unlink(self._partial)


class EventParquetWriter:
    """BBO changes to ``bbo_path`` and trades to ``trades_path``, batch after batch."""

    def __init__(
        self, bbo_path: str | os.PathLike[str], trades_path: str | os.PathLike[str],
        captured: bool = False,
    ) -> None:  # fmt: skip
        extra = [CAPTURE_TIME] if captured else []
        self.bbo = Sink(bbo_path, pa.schema([*BBO_SCHEMA, *extra]))
        self.trades = Sink(trades_path, pa.schema([*TRADE_SCHEMA, *extra]))

    def write(
        self, bbo: Events, trades: Events, symbols: npt.NDArray[np.object_],
        times: npt.NDArray[np.int64] | None = None,
    ) -> None:  # fmt: skip
        """Append events; ``symbols`` maps every locate in them to its symbol, ``times`` (of a
        writer that is ``captured``) every message of their block stream to its capture time."""
        self.bbo.add(bbo_table(bbo, symbols, times))
        self.trades.add(trade_table(trades, symbols, times))

    def close(self, keep: bool = True) -> None:
        """Finish both files: renamed into place with ``keep``, else removed (a failed run
        leaves no output, not even an empty file)."""
        self.bbo.close(keep)
        self.trades.close(keep)


# The events stream's records (tickerplant.wire.events) as one table: the header's columns,
# then every kind's fields, zero (letters: null) where a kind has none.
_LETTERS = ("side", "trade", "status", "code")
_NUMBERS = ("bid_price", "bid_size", "ask_price", "ask_size", "price", "size", "match",
            "printable", "level", "orders", "first", "count", "dropped", "volume", "last",
            "high", "low")  # fmt: skip
RECORD_SCHEMA = pa.schema(
    [("sequence", pa.int64()), ("source", pa.int64()), ("kind", pa.string()),
     ("image", pa.bool_()), ("symbol", _SYMBOL), ("locate", pa.uint16()),
     ("timestamp", pa.int64())]
    + [(name, pa.int64()) for name in _NUMBERS]
    + [(name, pa.string()) for name in _LETTERS]
    + [("reason", pa.string())]
)  # fmt: skip


def records_table(records: Events, symbols: npt.NDArray[np.object_]) -> pa.Table:
    """Events stream records (a ``wire.events.RECORD`` array) as a table of RECORD_SCHEMA;
    ``symbols[locate]`` names each locate."""
    n = records.shape[0]
    numbers = {name: np.zeros(n, dtype=np.int64) for name in _NUMBERS}
    letters = {name: np.zeros(n, dtype=np.uint8) for name in _LETTERS}
    reason = np.zeros((n, 4), dtype=np.uint8)
    raw = records.view(np.dtype((np.void, ev.RECORD_SIZE)))
    kinds = records["kind"]
    for kind, dtype in ev.RECORDS.items():
        mask = kinds == kind
        if not mask.any():
            continue
        rows = raw[mask].view(dtype)
        for name in dtype.names or ():
            if name in numbers:
                numbers[name][mask] = rows[name]
            elif name in letters:
                letters[name][mask] = rows[name]
        if kind == ev.STATUS:
            reason[mask] = rows["reason"]
    names = np.array([ev.NAMES.get(k, "?") for k in kinds.tolist()], dtype=object)
    columns = [
        pa.array(records["sequence"].astype(np.int64)),
        pa.array(records["source"].astype(np.int64)),
        pa.array(names, type=pa.string()),
        pa.array((records["flags"] & ev.IMAGE) != 0),
        _symbols(records["locate"], symbols),
        pa.array(records["locate"].astype(np.uint16)),
        pa.array(records["timestamp"].astype(np.int64)),
        *(pa.array(numbers[name]) for name in _NUMBERS),
        *(pa.array(letters[name].view("S1").astype(str), mask=letters[name] == 0)
          for name in _LETTERS),
        pa.array(reason.view("S4").reshape(-1).astype(str), mask=reason[:, 0] == 0),
    ]  # fmt: skip
    return pa.Table.from_arrays(columns, schema=RECORD_SCHEMA)


class RecordParquetWriter:
    """Events stream records to ``path``, batch after batch (under ``path.partial`` until
    :meth:`close`)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._sink = Sink(path, RECORD_SCHEMA)
        self.path = self._sink.path

    @property
    def rows(self) -> int:
        return self._sink.rows

    def write(self, records: Events, symbols: npt.NDArray[np.object_]) -> None:
        self._sink.add(records_table(records, symbols))

    def close(self) -> None:
        self._sink.close()
