"""Wire conformance: what we send, captured on loopback and decoded by tshark's own dissectors.

A capture runs on ``lo`` with a filter on this test's ports. Before the traffic starts, probe
datagrams go to a third port until tshark reports one (so it is really capturing); after the
traffic, one more probe is a fence: once tshark reports it, everything before it is in the file.
The file is then decoded with ``-d udp.port==P,moldudp64 -d tcp.port==Q,soupbintcp`` as PDML (the
``-V`` tree as XML) and every field of every packet is checked, along with the absence of
malformed packets and of expert warnings or errors.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness import TSHARK, LiveCapture, free_udp_socket, until
from tickerplant.distribute.fanout import FanOut
from tickerplant.distribute.journal import Journal
from tickerplant.io.replay_client import ReplayClient
from tickerplant.io.soupbin import SoupConnection, SoupServer
from tickerplant.wire import moldudp64 as mold
from tickerplant.wire.blocks import join_messages
from tickerplant.wire.soupbintcp import (
    ClientHeartbeat,
    Debug,
    LoginRequest,
    ServerHeartbeat,
    encode,
)

# (slow: what tshark decodes is the bytes, the same whether the framing ran compiled or not: not
# run again with the JIT off)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    TSHARK is None, reason="tshark is not installed (apt-get install tshark; .ci/run does)"
)]

WARNING = 0x00600000  # expert severities at or above this are warnings and errors

def decode(pcap: Path, *decode_as: str) -> list[ET.Element]:
    assert TSHARK is not None
    args = [TSHARK, "-r", str(pcap), "-T", "pdml"]
    for rule in decode_as:
        args += ["-d", rule]
    out = subprocess.run(args, capture_output=True, timeout=60, check=True).stdout
    return ET.fromstring(out).findall("packet")


def fields(element: ET.Element, name: str) -> list[str]:
    return [f.get("show", "") for f in element.iter("field") if f.get("name") == name]


def assert_well_formed(packet: ET.Element) -> None:
    assert packet.find(".//proto[@name='_ws.malformed']") is None, ET.tostring(packet)[:2000]
    for severity in fields(packet, "_ws.expert.severity"):
        assert int(severity, 0) < WARNING, ET.tostring(packet)[:2000]


def test_moldudp64_packets_decode_as_sent(tmp_path: Path) -> None:
    receiver = free_udp_socket()
    port = receiver.getsockname()[1]
    session = mold.session_bytes("TSHARK0001")
    itch_like = [b"S" + bytes(10) + b"O", b"A" * 36, b""]
    sent = [
        mold.encode_packet(session, 1, itch_like),
        mold.encode_blocks(session, 4, 2, join_messages([b"xy", b"z"])),
        mold.encode_heartbeat(session, 6),
        mold.encode_end_of_session(session, 6),
        mold.encode_request(session, 2, 3),
    ]
    capture = LiveCapture(tmp_path / "mold.pcapng", udp=[port], tcp=[])
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        capture.start()
        for datagram in sent:
            sender.sendto(datagram, ("127.0.0.1", port))
            assert receiver.recv(2048) == datagram
    finally:
        capture.stop()
        sender.close()
        receiver.close()

    packets = [
        p
        for p in decode(capture.path, f"udp.port=={port},moldudp64")
        if fields(p, "udp.dstport") == [str(port)]
    ]
    assert len(packets) == len(sent)
    for packet in packets:
        assert_well_formed(packet)
        assert fields(packet, "moldudp64.session") == ["TSHARK0001"]
    summary = [
        (
            fields(p, "moldudp64.sequence"),
            fields(p, "moldudp64.count"),
            fields(p, "moldudp64.msgseq"),
            fields(p, "moldudp64.msglen"),
        )
        for p in packets
    ]
    assert summary == [
        (["1"], ["3"], ["1", "2", "3"], ["12", "36", "0"]),
        (["4"], ["2"], ["4", "5"], ["2", "1"]),
        (["6"], ["0"], [], []),
        (["6"], ["65535"], [], []),
        (["2"], ["3"], [], []),
    ]
    payloads = [
        f.get("value") for f in packets[0].iter("field") if f.get("name") == "moldudp64.msgdata"
    ]
    assert payloads[:2] == [itch_like[0].hex(), itch_like[1].hex()]
    # a request is recognised as one (tshark notes it as a comment, not a problem)
    assert "Number of Requested Messages" in fields(packets[4], "_ws.expert.message")


async def _soupbin_flow(
    server: SoupServer, received: list[tuple[int, int, bytes]], heard: list[bytes]
) -> None:
    port = server.port
    # 1: login, replay, idle until a heartbeat has gone each way, live data, logout
    client = ReplayClient("127.0.0.1", port, b"", lambda *run: received.append(run), "feed", "pw")
    fetch = asyncio.create_task(client.fetch(1, 5, timeout=20))
    beats = {"the client's": encode(ClientHeartbeat()), "the server's": encode(ServerHeartbeat())}
    await until(lambda: all(any(b in d for d in heard) for b in beats.values()), 10,
                lambda: "a heartbeat received each way: " + ", ".join(
                    f"{who} {'in' if any(b in d for d in heard) else 'not yet'}"
                    for who, b in beats.items()))  # fmt: skip
    server.journal.append(join_messages([b"fourth", b"fifth"]))
    server.publish()
    assert await fetch == 5
    # 2: a rejected login
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode(LoginRequest(b"feed", b"wrong", b"", 1)))
    assert await reader.read() == b"\x00\x02JA"
    writer.close()
    # 3: a client's Debug, then End of Session
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode(LoginRequest(b"feed", b"pw", b"TSHARK0001", 0)))
    writer.write(encode(Debug(b"hello from the client")))
    await reader.readexactly(33)  # Login Accepted
    server.end_session()
    assert await reader.read() == b"\x00\x01Z"
    writer.close()
    # 4: no login in time: the server's Debug says so
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await reader.read() == encode(Debug(b"no Login Request in time"))
    writer.close()


def test_soupbintcp_flow_decodes_as_sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal(b"TSHARK0001")
    journal.append(join_messages([b"first", b"second", b"third"]))
    received: list[tuple[int, int, bytes]] = []
    heard: list[bytes] = []  # what either side's connection read, to wait on heartbeats by
    read = SoupConnection.data_received

    def spy(self: SoupConnection[Any], data: bytes) -> None:
        heard.append(bytes(data))
        read(self, data)

    monkeypatch.setattr(SoupConnection, "data_received", spy)

    async def main() -> tuple[Path, int]:
        server = SoupServer(FanOut(journal, (b"feed", b"pw"), login_timeout=0.5), "127.0.0.1", 0)
        port = await server.start()
        capture = LiveCapture(tmp_path / "soup.pcapng", udp=[], tcp=[port])
        try:
            await asyncio.to_thread(capture.start)
            async with asyncio.timeout(30):
                await _soupbin_flow(server, received, heard)
        finally:
            await server.close()
            await asyncio.to_thread(capture.stop)
        return capture.path, port

    pcap, port = asyncio.run(main())
    assert received == [(1, 3, journal.blocks(1, 3)[1]), (4, 2, journal.blocks(4, 2)[1])]

    # per connection (keyed by the client's port, in order of appearance), per side, every PDU
    connections: dict[str, dict[str, list[str]]] = {}
    raw_numbers: list[bytes] = []
    for packet in decode(pcap, f"tcp.port=={port},soupbintcp"):
        assert_well_formed(packet)
        if not fields(packet, "tcp.port"):
            continue  # a probe
        peer = next(p for p in fields(packet, "tcp.port") if p != str(port))
        side = "server" if fields(packet, "tcp.srcport") == [str(port)] else "client"
        for proto in packet.findall("proto[@name='soupbintcp']"):
            connections.setdefault(peer, {"client": [], "server": []})[side].append(_pdu(proto))
            raw_numbers += [
                bytes.fromhex(f.get("value", ""))
                for f in proto.iter("field")
                if f.get("name", "").endswith("_seq_num") and f.get("value")
            ]
    heartbeats = {"client": 0, "server": 0}
    flows = []
    for sides in connections.values():
        for side, pdus in sides.items():
            heartbeats[side] += sum(p in ("R", "H") for p in pdus)
            sides[side] = [p for p in pdus if p not in ("R", "H")]
        flows.append(sides)
    assert flows == [
        {
            "client": ["L username=feed password=pw session= req_seq_num=1", "O"],
            "server": [
                "A session=TSHARK0001 next_seq_num=1",
                "S seq_num=1 message=first",
                "S seq_num=2 message=second",
                "S seq_num=3 message=third",
                "S seq_num=4 message=fourth",
                "S seq_num=5 message=fifth",
            ],
        },
        {
            "client": ["L username=feed password=wrong session= req_seq_num=1"],
            "server": ["J reject_code=A"],
        },
        {
            "client": [
                "L username=feed password=pw session=TSHARK0001 req_seq_num=0",
                "+ text=hello from the client",
            ],
            "server": ["A session=TSHARK0001 next_seq_num=6", "Z"],
        },
        {"client": [], "server": ["+ text=no Login Request in time"]},
    ]
    assert heartbeats["client"] >= 1 and heartbeats["server"] >= 1
    # numbers on the wire: right-justified, space-padded on the left, as tshark expects
    assert sorted(raw_numbers) == sorted(str(n).rjust(20).encode() for n in (1, 1, 1, 0, 6))


def _pdu(proto: ET.Element) -> str:
    """One SoupBinTCP PDU as tshark decoded it: type letter, then each field name=value."""
    parts: list[str] = []
    for f in proto.iter("field"):
        name = f.get("name", "").removeprefix("soupbintcp.")
        show, showname = f.get("show", ""), f.get("showname", "")
        if name == "packet_type":
            parts.insert(0, show.strip("'"))
        elif name.endswith("seq_num"):  # shown only in the label: "Next sequence number: 6"
            parts.append(f"{name}={showname.split(': ', 1)[1].removesuffix(' (Calculated)')}")
        elif name == "message":
            parts.append(f"{name}={bytes.fromhex(show.replace(':', '')).decode('latin-1')}")
        elif name == "reject_code":
            parts.append(f"{name}={show.strip(chr(39))}")
        elif name != "packet_length":  # alpha: only right padding is stripped, so left would show
            parts.append(f"{name}={show.rstrip(' ')}")
    return " ".join(parts)


def test_lost_messages_on_the_itch_stream_are_well_formed_marks(
    tmp_path: Path,
) -> None:
    """The plant's mark for a lost message (the one-byte message 0x00) decodes cleanly, where an
    empty Sequenced Data payload trips Wireshark's OUCH heuristic, and keeps tshark's sequence
    numbering on the exchange's numbers."""
    from tickerplant.client import Lost, subscribe
    from tickerplant.distribute.stream import LOST
    from tickerplant.endpoint import Endpoint
    from tickerplant.receive.events import Batch

    journal = Journal(b"TSHARK0002")
    journal.append(join_messages([b"first"]) + LOST * 2 + join_messages([b"fourth"]))
    records: list[object] = []

    async def main() -> tuple[Path, int]:
        server = SoupServer(FanOut(journal), "127.0.0.1", 0)
        port = await server.start()
        capture = LiveCapture(tmp_path / "lost.pcapng", udp=[], tcp=[port])
        try:
            await asyncio.to_thread(capture.start)
            async with asyncio.timeout(30):
                async for record in subscribe(Endpoint("127.0.0.1", port), retry=None):
                    records.append(record)
                    if isinstance(record, Batch) and record.end == 5:
                        break
        finally:
            await server.close()
            await asyncio.to_thread(capture.stop)
        return capture.path, port

    pcap, port = asyncio.run(main())
    assert records == [Batch(1, 1, join_messages([b"first"])), Lost(2, 4),
                       Batch(4, 1, join_messages([b"fourth"]))]
    server_pdus = []
    for packet in decode(pcap, f"tcp.port=={port},soupbintcp"):
        assert_well_formed(packet)
        if fields(packet, "tcp.srcport") == [str(port)]:
            server_pdus += [_pdu(p) for p in packet.findall("proto[@name='soupbintcp']")]
    sequenced = [p for p in server_pdus if p.startswith("S ")]
    mark = "message=\x00"
    assert sequenced == ["S seq_num=1 message=first", f"S seq_num=2 {mark}", f"S seq_num=3 {mark}",
                         "S seq_num=4 message=fourth"]


def test_the_events_stream_and_a_subscription_request_decode_cleanly(tmp_path: Path) -> None:
    """Every kind of events record (books' updates, an image, a lost notice) and the client's
    Unsequenced Data request decode with no malformed packet and no warning."""
    from test_book_engine import directory, stream
    from tickerplant.book import BookEngine
    from tickerplant.book.normalize import images, imaging, records
    from tickerplant.client import Events, Lost, subscribe
    from tickerplant.endpoint import Endpoint
    from tickerplant.wire import events as ev
    from tickerplant.wire import itch

    engine = BookEngine()
    day = stream(
        itch.SystemEvent(0, 0, 1, "O"), directory(5, "ZVZZT"),
        itch.StockTradingAction(5, 0, 2, "ZVZZT", "T", " ", "    "),
        itch.AddOrder(5, 0, 3, 1, "B", 100, "ZVZZT", 99_5000),
        itch.OrderExecuted(5, 0, 4, 1, 40, 9),
    )  # fmt: skip
    count, blocks = records(engine.process(day), 1, 1, day)
    journal = Journal(b"TSHARK0003")
    image = images(engine, [5], count, 5, depth=3)  # an image's records, as any client gets
    count += len(image) // ev.BLOCK_SIZE
    journal.append(blocks + image + ev.notice(ev.LOST, count + 1, 6, 6, 2, 2))

    class Books:
        def locate(self, symbol: bytes) -> int | None:
            return 5 if symbol == b"ZVZZT   " else None

        def locates(self) -> list[int]:
            return [5]

        def images(self, locates: list[int]) -> Callable[[], bytes]:
            return imaging(engine, locates, len(journal), 5, depth=3)

    got: list[object] = []

    async def main() -> tuple[Path, int]:
        server = SoupServer(FanOut(journal, catalog=Books()), "127.0.0.1", 0)
        port = await server.start()
        capture = LiveCapture(tmp_path / "events.pcapng", udp=[], tcp=[port])
        try:
            await asyncio.to_thread(capture.start)
            async with asyncio.timeout(30):
                async for record in subscribe(Endpoint("127.0.0.1", port), events=True,
                                              symbols=["ZVZZT"], retry=None):  # fmt: skip
                    got.append(record)
                    if isinstance(record, Lost):
                        break
        finally:
            await server.close()
            await asyncio.to_thread(capture.stop)
        return capture.path, port

    pcap, port = asyncio.run(main())
    kinds = b"".join(r.records["kind"].tobytes() for r in got if isinstance(r, Events))
    assert kinds == b"sysbtb" + b"ybsdsi"
    assert isinstance(got[-1], Lost) and (got[-1].start, got[-1].end) == (6, 8)
    pdus = []
    for packet in decode(pcap, f"tcp.port=={port},soupbintcp"):
        assert_well_formed(packet)
        pdus += [_pdu(p) for p in packet.findall("proto[@name='soupbintcp']")]
    assert sum(p.startswith("S ") for p in pdus) == count + 1
    assert any(p.startswith("U ") for p in pdus)  # the subscription request
