"""The MoldUDP64 streams a packet capture holds: :func:`streams` lists them (destination
group:port and session, first and last sequence number, packets), and :class:`Reading` reads a
capture a window at a time with each UDP datagram classified (data, heartbeat, end of session,
re-request, not MoldUDP64) by one compiled pass, for the listing and for
:class:`~tickerplant.capture.lines.CaptureFeed` alike."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from tickerplant.capture import pcap
from tickerplant.capture.frames import UDP
from tickerplant.endpoint import Endpoint
from tickerplant.jit import kernel
from tickerplant.wire import moldudp64 as mold
from tickerplant.wire.blocks import U8

I64 = npt.NDArray[np.int64]

# What a UDP datagram is to MoldUDP64 (``classify``)
DATA, HEARTBEAT, END, REQUEST, NOT_MOLD, OTHER = range(6)
MAX_SESSIONS = 64  # distinct sessions told apart in one capture; more is not a feed


@dataclass(slots=True)
class Stream:
    """A MoldUDP64 stream found in a capture: one destination, one session."""

    line: Endpoint
    session: str
    packets: int = 0  # data, heartbeats and end of session
    messages: int = 0
    heartbeats: int = 0
    end_of_session: int = 0
    first_sequence: int = 0  # of the first message carried (0: only heartbeats)
    last_sequence: int = 0  # of the last message carried or announced
    first_time: int = 0  # ns since the epoch
    last_time: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"line": str(self.line), "session": self.session, "packets": self.packets,
                "messages": self.messages, "heartbeats": self.heartbeats,
                "end_of_session": self.end_of_session, "first_sequence": self.first_sequence,
                "last_sequence": self.last_sequence, "first_time": self.first_time,
                "last_time": self.last_time}  # fmt: skip


@dataclass(slots=True)
class CaptureSummary:
    """What a capture held besides its streams."""

    counters: pcap.CaptureCounters
    streams: list[Stream]
    requests: dict[str, int] = field(default_factory=dict)  # re-requests by destination
    not_moldudp64: int = 0  # UDP datagrams that are not MoldUDP64 packets


@kernel
def classify(
    buf: U8, offset: I64, length: npt.NDArray[np.int32], kind: npt.NDArray[np.int8], n: int,
    what: npt.NDArray[np.int8], seq: I64, count: I64, session: I64,
    sessions: npt.NDArray[np.uint8], known: int,
) -> int:  # fmt: skip  # pragma: no cover - compiled
    """Each packet's MoldUDP64 reading (``what``, sequence, count) and session (an index into
    ``sessions``, which it extends); returns how many sessions are known after."""
    for i in range(n):
        seq[i] = 0
        count[i] = 0
        session[i] = -1
        if kind[i] != UDP:
            what[i] = OTHER
            continue
        p = offset[i]
        size = length[i]
        defect, s, c = mold._check(buf[p : p + size], size)
        if defect == 0:
            what[i] = HEARTBEAT if c == 0 else END if c == 0xFFFF else DATA
        elif defect == 3 and size == 20 and s != 0:  # a request: a header asking for ``c``
            what[i] = REQUEST
        else:
            what[i] = NOT_MOLD
            continue
        seq[i] = s
        count[i] = c
        for k in range(known):
            same = True
            for j in range(10):
                if sessions[k, j] != buf[p + j]:
                    same = False
                    break
            if same:
                session[i] = k
                break
        if session[i] < 0 and known < sessions.shape[0]:
            for j in range(10):
                sessions[known, j] = buf[p + j]
            session[i] = known
            known += 1
    return known


class Reading:
    """A capture's windows with their MoldUDP64 reading; sessions numbered across windows."""

    def __init__(self, capture: pcap.Capture) -> None:
        self.capture = capture
        self.sessions = np.zeros((MAX_SESSIONS, 10), dtype=np.uint8)
        self.known = 0

    def windows(self) -> Iterator[tuple[pcap.Packets, npt.NDArray[np.int8], I64, I64, I64]]:
        for packets in self.capture.windows():
            n = len(packets)
            what = np.empty(n, np.int8)
            seq, count, session = (np.empty(n, np.int64) for _ in range(3))
            self.known = classify(self.capture.buf, packets.offset, packets.length,
                                   packets.kind, n, what, seq, count, session,
                                   self.sessions, self.known)  # fmt: skip
            yield packets, what, seq, count, session

    def name(self, index: int) -> str:
        return bytes(self.sessions[index]).decode("latin-1")


def endpoint(dst: int, port: int) -> Endpoint:
    return Endpoint(str(ipaddress.IPv4Address(dst)), port)


def streams(capture: pcap.Capture) -> CaptureSummary:
    """Every MoldUDP64 stream in ``capture``, in the order of their destinations."""
    reading = Reading(capture)
    found: dict[tuple[int, int, int], Stream] = {}
    requests: dict[str, int] = {}
    not_mold = 0
    for packets, what, seq, count, session in reading.windows():
        not_mold += int((what == NOT_MOLD).sum())
        asks = what == REQUEST
        if asks.any():
            for dst, port in zip(packets.dst[asks].tolist(), packets.port[asks].tolist(),
                                 strict=True):  # fmt: skip
                name = str(endpoint(dst, port))
                requests[name] = requests.get(name, 0) + 1
        mine = what <= END
        if not mine.any():
            continue
        keys = (packets.dst[mine].astype(np.int64) << 24) | (packets.port[mine].astype(np.int64)
                                                              << 8) | session[mine]  # fmt: skip
        w, s, c, t = what[mine], seq[mine], count[mine], packets.time[mine]
        for key in np.unique(keys).tolist():
            at = keys == key
            dst, port, index = key >> 24, (key >> 8) & 0xFFFF, key & 0xFF
            stream = found.get((dst, port, index))
            if stream is None:
                stream = found[(dst, port, index)] = Stream(
                    endpoint(dst, port), reading.name(index), first_time=int(t[at][0]))
            data = at & (w == DATA)
            stream.packets += int(at.sum())
            stream.messages += int(c[data].sum())
            stream.heartbeats += int((at & (w == HEARTBEAT)).sum())
            stream.end_of_session += int((at & (w == END)).sum())
            if data.any():
                first = int(s[data].min())
                if not stream.first_sequence or first < stream.first_sequence:
                    stream.first_sequence = first
                stream.last_sequence = max(stream.last_sequence,
                                           int((s[data] + c[data]).max()) - 1)  # fmt: skip
            announced = at & (w != DATA)
            if announced.any():  # a heartbeat names the next message: the one before was sent
                stream.last_sequence = max(stream.last_sequence, int(s[announced].max()) - 1)
            stream.last_time = int(t[at][-1])
    listed = sorted(found.values(), key=lambda x: (ipaddress.IPv4Address(x.line.host),
                                                   x.line.port, x.session))  # fmt: skip
    return CaptureSummary(capture.counters, listed, requests, not_mold)
