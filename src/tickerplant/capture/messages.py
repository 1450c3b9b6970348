"""Every ITCH 5.0 message as Parquet, one table per message type, every field decoded.

``tickerplant replay --messages`` writes ``PREFIX.messages/A.parquet``, ``.../D.parquet`` and so
on, one file per type the day holds, named by its type letter. Columns are the type's fields in
wire order, named as :mod:`tickerplant.wire.itch` names them (``stock_locate``,
``tracking_number``, ``timestamp``, ``order_reference``, ``buy_sell_indicator``, ``shares``,
``stock``, ``price``...), in the conventions of the BBO and trade tables:

- ``timestamp`` int64, nanoseconds since midnight (exchange time);
- Price(4) fields int64 with 4 implied decimals (1234500 is $123.45); Price(8) fields (the MWCB
  levels) uint64 with 8, as the wire has them (an int64 could not hold every value);
- u16/u32/u64 fields uint16/uint32/uint64 (order references and match numbers run past 2**63);
- Alpha fields strings without their space padding (``stock`` is ``'AAPL'``), Char fields one-
  character strings;
- ``symbol`` (dictionary-encoded string), the stock of ``stock_locate`` as the day's directory
  named it, on the types that carry no ``stock`` field of their own (orders, executions, trades);
- replayed from a capture, ``capture_time`` as in the BBO table.

Rows are gathered per type by one compiled pass per chunk and converted column by column with
numpy views (big-endian fields read as big-endian dtypes); no per-message Python.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from tickerplant.capture.parquet import CAPTURE_TIME, Sink
from tickerplant.jit import kernel
from tickerplant.wire.blocks import U8, as_array, offsets_of
from tickerplant.wire.itch import LAYOUTS, LENGTHS, Field

I64 = npt.NDArray[np.int64]

_INTEGERS = {"u16": pa.uint16(), "u32": pa.uint32(), "u64": pa.uint64(), "price4": pa.int64(),
             "price8": pa.uint64(), "timestamp": pa.int64()}  # fmt: skip
_SYMBOL = pa.dictionary(pa.int32(), pa.string())


def schema(letter: str, captured: bool = False) -> pa.Schema:
    """The table of message type ``letter``."""
    fields = [pa.field(f.name, _INTEGERS.get(f.kind, pa.string())) for f in LAYOUTS[letter]]
    if not any(f.name == "stock" for f in LAYOUTS[letter]):
        fields.append(pa.field("symbol", _SYMBOL))
    if captured:
        fields.append(CAPTURE_TIME)
    return pa.schema(fields)


@kernel
def _gather(buf: U8, starts: I64, size: int, rows: U8) -> None:  # pragma: no cover - compiled
    for i in range(starts.shape[0]):
        p = starts[i]
        rows[i, :] = buf[p : p + size]


def _column(rows: U8, f: Field) -> pa.Array:
    raw = np.ascontiguousarray(rows[:, f.offset : f.offset + f.size])
    n = raw.shape[0]
    if f.kind == "timestamp":
        wide = np.zeros((n, 8), np.uint8)
        wide[:, 2:] = raw
        return pa.array(wide.view(">u8").reshape(n).astype(np.int64))
    if f.kind in _INTEGERS:
        values = raw.view(f">u{f.size}").reshape(n)
        return pa.array(values.astype(_INTEGERS[f.kind].to_pandas_dtype()))
    # Straight from the bytes: a numpy S dtype would drop trailing NULs.
    data = pa.Array.from_buffers(pa.binary(f.size), n, [None, pa.py_buffer(raw.tobytes())])
    try:
        text = data.cast(pa.binary()).cast(pa.string())
    except pa.ArrowInvalid:  # not UTF-8 (ITCH says ASCII): each byte as its latin-1 character
        whole = raw.tobytes()
        text = pa.array([whole[i : i + f.size].decode("latin-1")
                         for i in range(0, len(whole), f.size)], type=pa.string())  # fmt: skip
    return pc.utf8_rtrim(text, characters=" ") if f.kind == "alpha" else text


def dictionary(symbols: npt.NDArray[np.object_]) -> pa.Array:
    """The ``symbol`` columns' dictionary: ``symbols[locate]`` names each locate."""
    return pa.array(symbols.tolist(), type=pa.string())


def tables(
    blocks: bytes, names: pa.Array, times: I64 | None = None,
    keep: npt.NDArray[np.bool_] | None = None,
) -> dict[str, pa.Table]:  # fmt: skip
    """The messages of a checked block stream, one table per type present; ``names`` is the
    :func:`dictionary` of the day's symbols. With ``keep``, only the messages of the locates it
    marks, and the market-wide ones (locate 0)."""
    buf = as_array(blocks)
    offsets, _ = offsets_of(blocks)
    starts = offsets + 2
    types = buf[starts]
    if keep is not None:
        locates = (buf[starts + 1].astype(np.int64) << 8) | buf[starts + 2]
        types = np.where(keep[locates] | (locates == 0), types, 0)
    out = {}
    for letter, fields in LAYOUTS.items():
        picked = np.flatnonzero(types == ord(letter))
        if picked.shape[0] == 0:
            continue
        rows = np.empty((picked.shape[0], LENGTHS[letter]), np.uint8)
        _gather(buf, starts[picked], LENGTHS[letter], rows)
        columns = [_column(rows, f) for f in fields]
        if not any(f.name == "stock" for f in fields):
            locates = pa.array(columns[0].to_numpy().astype(np.int32))
            columns.append(pa.DictionaryArray.from_arrays(locates, names))
        if times is not None:
            columns.append(pa.array(times[picked], type=CAPTURE_TIME.type))
        out[letter] = pa.Table.from_arrays(columns, schema=schema(letter, times is not None))
    return out


class MessageParquetWriter:
    """One Parquet file per message type under ``directory``, written under
    ``directory.partial`` and moved into place by :meth:`close` (or removed)."""

    def __init__(self, directory: str | os.PathLike[str], captured: bool = False) -> None:
        self.path = os.fspath(directory)
        self._partial = self.path + ".partial"
        shutil.rmtree(self._partial, ignore_errors=True)
        os.makedirs(self._partial)
        self._captured = captured
        self._sinks: dict[str, Sink] = {}
        self._names: tuple[npt.NDArray[np.object_] | None, pa.Array] = (None, pa.array([]))

    @property
    def rows(self) -> dict[str, int]:
        return {letter: sink.rows for letter, sink in sorted(self._sinks.items())}

    def write(
        self, blocks: bytes, symbols: npt.NDArray[np.object_], times: I64 | None = None,
        keep: npt.NDArray[np.bool_] | None = None,
    ) -> None:  # fmt: skip
        """Append a block stream's messages (only ``keep``'s, if given: see :func:`tables`);
        ``symbols`` maps locates to symbols (a new array whenever a symbol is named), ``times``
        its messages to their capture times."""
        if self._names[0] is not symbols:
            self._names = (symbols, dictionary(symbols))
        for letter, table in tables(blocks, self._names[1], times, keep).items():
            sink = self._sinks.get(letter)
            if sink is None:
                path = os.path.join(self._partial, f"{letter}.parquet")
                sink = self._sinks[letter] = Sink(path, schema(letter, self._captured))
            sink.add(table)

    def close(self, keep: bool = True) -> None:
        for sink in self._sinks.values():
            sink.close(keep)
        if keep:
            shutil.rmtree(self.path, ignore_errors=True)
            os.replace(self._partial, self.path)
        else:
            shutil.rmtree(self._partial, ignore_errors=True)
