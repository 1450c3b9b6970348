"""The publisher and the exchange simulator on real loopback multicast."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from harness import source_stream
from tickerplant.client import subscribe
from tickerplant.distribute.journal import Journal
from tickerplant.endpoint import Endpoint
from tickerplant.errors import ConfigError
from tickerplant.exchange.pacing import ItchClock, Pacer
from tickerplant.exchange.publisher import Publisher, SourceError
from tickerplant.exchange.simulator import (
    ExchangeConfig,
    FileSource,
    SyntheticSource,
    run_exchange,
)
from tickerplant.exchange.summary import ExchangeSummary
from tickerplant.io.multicast import Line, LineConfig, SentLog, drop_mask, open_receiver
from tickerplant.receive.events import Batch
from tickerplant.wire.blocks import iter_messages, join_messages
from tickerplant.wire.moldudp64 import (
    END_OF_SESSION,
    HEARTBEAT,
    MAX_PACKET,
    Packet,
    decode_packet,
    encode_request,
    session_bytes,
)

SESSION = session_bytes("PUBTEST")
MS = 1_000_000


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def group(n: int) -> str:
    """A multicast group of this test process, so that parallel runs do not hear each other."""
    return f"239.194.{os.getpid() % 250}.{n}"


def lines_config(n: int, drop_a: float = 0.0, drop_b: float = 0.0) -> tuple[LineConfig, LineConfig]:
    return (
        LineConfig(group(n), free_port(), drop=drop_a),
        LineConfig(group(n + 1), free_port(), drop=drop_b),
    )


def receiver(config: LineConfig) -> socket.socket:
    sock, _ = open_receiver(Endpoint(config.group, config.port), "127.0.0.1", 32 << 20)
    return sock


def message(sequence: int, timestamp: int) -> bytes:
    """ITCH-shaped (type, locate, tracking, 6-byte timestamp), 19 to 50 bytes, naming its number."""
    head = b"A" + (1).to_bytes(2, "big") + (0).to_bytes(2, "big") + timestamp.to_bytes(6, "big")
    return head + sequence.to_bytes(8, "big") + b"." * (sequence % 32)


def chunks(count: int, per_chunk: int, first: int = 1, timestamp: int = 0) -> list[bytes]:
    out = []
    for start in range(first, first + count, per_chunk):
        stop = min(start + per_chunk, first + count)
        out.append(join_messages([message(s, timestamp) for s in range(start, stop)]))
    return out


def drain(sock: socket.socket, into: list[bytes]) -> None:
    while True:
        try:
            into.append(sock.recv(2048))
        except BlockingIOError:
            return


def run(
    publisher: Publisher, receivers: list[socket.socket], limit: float = 30.0
) -> list[list[bytes]]:
    """Tick the publisher to the end of its session on the real clock, draining as it goes."""
    got: list[list[bytes]] = [[] for _ in receivers]
    give_up = time.monotonic() + limit
    while not publisher.done:
        now = time.monotonic()
        assert now < give_up, "the publisher did not finish its session"
        publisher.handle_timer(now)
        for sock, into in zip(receivers, got, strict=True):
            drain(sock, into)
        deadline = publisher.get_timer()
        wait = (deadline if deadline is not None else now) - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, 0.005))
    for sock, into in zip(receivers, got, strict=True):
        drain(sock, into)
        sock.close()
    return got


def data_packets(raw: list[bytes]) -> list[Packet]:
    return [p for p in map(decode_packet, raw) if p.count not in (HEARTBEAT, END_OF_SESSION)]


def publish(
    source: list[bytes],
    pacer: Pacer | None = None,
    *,
    n: int,
    heartbeat_interval: float = 1.0,
    end_of_session_seconds: float,
) -> tuple[Publisher, list[Line], list[bytes], list[bytes]]:
    """Publish ``source`` on a fresh pair of lines; what each line's receiver heard."""
    config_a, config_b = lines_config(n)
    receivers = [receiver(config_a), receiver(config_b)]
    lines = [Line("A", config_a), Line("B", config_b)]
    publisher = Publisher(
        Journal(SESSION),
        iter(source),
        lines,
        pacer,
        heartbeat_interval=heartbeat_interval,
        end_of_session_seconds=end_of_session_seconds,
    )
    try:
        got_a, got_b = run(publisher, receivers)
    finally:
        for line in lines:
            line.close()
    return publisher, lines, got_a, got_b


def test_every_packet_arrives_on_both_lines_identical_then_the_end_of_session() -> None:
    source = chunks(50_000, 4096)
    publisher, lines, got_a, got_b = publish(
        source, n=1, heartbeat_interval=0.1, end_of_session_seconds=0.25
    )

    assert got_a == got_b  # the same packet bytes, in the same order, on both lines
    assert all(len(raw) <= MAX_PACKET for raw in got_a)
    packets = [decode_packet(raw) for raw in got_a]
    assert {p.session for p in packets} == {SESSION}
    data = data_packets(got_a)
    expect = 1
    for packet in data:
        assert packet.sequence == expect
        expect += packet.count
    assert expect == 50_001
    assert [m for p in data for m in p.messages] == [message(s, 0) for s in range(1, 50_001)]
    assert len(data) == publisher.packets
    # as full as 1,400 bytes allow (~36 of these messages), not one message per packet
    assert publisher.packets < 50_000 / 30

    tail = packets[len(data) :]
    assert 2 <= len(tail) <= 4  # end of session every 0.1 s for 0.25 s
    assert {(p.count, p.sequence) for p in tail} == {(END_OF_SESSION, 50_001)}
    assert publisher.sha256 == hashlib.sha256(b"".join(source)).hexdigest()
    assert len(publisher.journal) == 50_000
    for line in lines:
        assert line.sent == len(got_a)
        assert (line.dropped, line.errors) == (0, 0)


def test_an_idle_line_carries_heartbeats_with_the_next_sequence_number() -> None:
    publish(chunks(100, 100), n=3, end_of_session_seconds=0.0)  # compile the kernels first
    # 2,000 messages at once, then ten more 0.35 s later by their ITCH timestamps
    source = chunks(2000, 512) + chunks(10, 10, first=2001, timestamp=350 * MS)
    publisher, _, got_a, got_b = publish(
        source, ItchClock(speed=1.0), n=5, heartbeat_interval=0.1, end_of_session_seconds=0.0
    )
    assert got_a == got_b
    packets = [decode_packet(raw) for raw in got_a]
    kinds = [p.count if p.count in (HEARTBEAT, END_OF_SESSION) else 1 for p in packets]
    heartbeats = [p for p in packets if p.count == HEARTBEAT]
    assert 2 <= len(heartbeats) <= 4  # the 0.35 s pause, at one per 0.1 s
    assert {p.sequence for p in heartbeats} == {2001}  # the next sequence number
    first = kinds.index(HEARTBEAT)
    assert packets[first - 1].sequence + packets[first - 1].count == 2001
    assert kinds[first : first + len(heartbeats)] == [HEARTBEAT] * len(heartbeats)
    assert packets[first + len(heartbeats)].sequence == 2001
    assert publisher.heartbeats == len(heartbeats)


def _dropped_run(seed: int, drop_a: float, n: int) -> tuple[set[int], set[int], list[Line]]:
    """Sequence numbers of the data packets heard on each line."""
    config_a, config_b = lines_config(10 + 2 * n, drop_a=drop_a)
    receivers = [receiver(config_a), receiver(config_b)]
    lines = [Line("A", config_a), Line("B", config_b)]
    publisher = Publisher(
        Journal(SESSION), iter(chunks(60_000, 8192)), lines, drop_seed=seed,
        end_of_session_seconds=0.0,
    )  # fmt: skip
    try:
        got_a, got_b = run(publisher, receivers)
    finally:
        for line in lines:
            line.close()
    heard = [{p.sequence for p in data_packets(raw)} for raw in (got_a, got_b)]
    return heard[0], heard[1], lines


def test_injected_loss_is_per_line_about_as_configured_and_repeats_per_seed() -> None:
    heard_a, heard_b, lines = _dropped_run(seed=7, drop_a=0.1, n=0)
    packets = len(heard_b)
    assert packets > 1500
    assert heard_a < heard_b  # loss on A only; B hears every packet
    rate = 1 - len(heard_a) / packets
    assert 0.07 < rate < 0.13
    assert lines[0].dropped == packets - len(heard_a)
    assert lines[1].dropped == 0
    # the same seed loses the same packets; another seed other ones
    again_a, _, _ = _dropped_run(seed=7, drop_a=0.1, n=1)
    assert again_a == heard_a
    other_a, _, _ = _dropped_run(seed=8, drop_a=0.1, n=2)
    assert other_a != heard_a


def test_drop_mask_does_not_depend_on_how_packets_are_sliced() -> None:
    import numpy as np

    sequences = np.arange(1, 100_001, 37, dtype=np.int64)
    whole = drop_mask(3, 0, sequences, 0.2)
    halves = drop_mask(3, 0, sequences[:1000], 0.2) + drop_mask(3, 0, sequences[1000:], 0.2)
    assert whole == halves
    assert drop_mask(3, 1, sequences, 0.2) != whole  # each line loses its own packets


def test_a_full_socket_buffer_delays_a_line_without_losing_a_packet() -> None:
    config_a, config_b = lines_config(40)
    receiver_b = receiver(config_b)
    line_a, line_b = Line("A", config_a, sent_log=SentLog()), Line("B", config_b)
    # Line A writes to a Unix datagram pair instead: its queue holds a handful of datagrams, so
    # sends really fail with EAGAIN until the test reads some (loopback multicast never does).
    line_a.sock.close()
    line_a.sock, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    line_a.sock.setblocking(False)
    peer.setblocking(False)
    source = chunks(20_000, 4096)
    publisher = Publisher(Journal(SESSION), iter(source), [line_a, line_b], slice_packets=64)
    heard_a: list[bytes] = []
    heard_b: list[bytes] = []
    give_up = time.monotonic() + 20
    try:
        while not publisher.ending:
            assert time.monotonic() < give_up, "the publisher never reached its end of session"
            publisher.handle_timer(time.monotonic())
            drain(receiver_b, heard_b)
            for _ in range(8):  # a slow reader: a few datagrams per tick
                try:
                    heard_a.append(peer.recv(2048))
                except BlockingIOError:
                    break
        while line_a.backlog:
            assert time.monotonic() < give_up, f"line A still holds {len(line_a.backlog)} datagrams"
            publisher.handle_timer(time.monotonic())
            drain(peer, heard_a)
        drain(peer, heard_a)
        drain(receiver_b, heard_b)
    finally:
        for sock in (peer, receiver_b):
            sock.close()
        line_a.close()
        line_b.close()
    assert line_a.retries > 0
    data_a = [p for p in map(decode_packet, heard_a) if p.count != END_OF_SESSION]
    data_b = [p for p in map(decode_packet, heard_b) if p.count != END_OF_SESSION]
    assert [p.sequence for p in data_a] == [p.sequence for p in data_b]
    assert sum(p.count for p in data_a) == 20_000
    assert b"".join(p.blocks for p in data_a) == b"".join(source)
    assert line_a.errors == 0
    # The log holds each packet once, when it really went: held ones when the backlog sent them.
    assert line_a.sent_log is not None
    logged = line_a.sent_log.records("A")
    assert logged["first"].tolist() == [p.sequence for p in data_a]
    assert logged["count"].tolist() == [p.count for p in data_a]
    assert (np.diff(logged["ns"]) >= 0).all()


def test_a_chunk_that_is_not_whole_messages_is_refused_by_name() -> None:
    config_a, config_b = lines_config(50)
    lines = [Line("A", config_a), Line("B", config_b)]
    try:
        stray = join_messages([message(1, 0)]) + b"\x00"
        publisher = Publisher(Journal(SESSION), iter([stray]), lines)
        with pytest.raises(SourceError, match="not a whole message block"):
            publisher.handle_timer(0.0)
        huge = join_messages([b"A" * 2000])
        publisher = Publisher(Journal(SESSION), iter([huge]), lines)
        with pytest.raises(SourceError, match="message 1 is 2000 bytes"):
            publisher.handle_timer(0.0)
    finally:
        for line in lines:
            line.close()


# --- the simulator ---------------------------------------------------------------------------


def test_config_errors_name_the_field_and_the_fix() -> None:
    ExchangeConfig()  # the defaults are good
    cases: dict[str, Callable[[], object]] = {
        # A line checks itself, where its class is; the config that holds it names it.
        "group": lambda: LineConfig("10.0.0.1", 30001),
        "drop": lambda: LineConfig("239.1.1.2", 30002, drop=1.5),
        "ttl": lambda: LineConfig("239.1.1.2", 30002, ttl=300),
        "interface": lambda: LineConfig("239.1.1.2", 30002, interface="lo"),
        "line_b": lambda: ExchangeConfig(line_b=ExchangeConfig().line_a),
        "session": lambda: ExchangeConfig(session="MUCH-TOO-LONG-A-NAME"),
        "pacing": lambda: ExchangeConfig(pacing="warp"),
        "rate": lambda: ExchangeConfig(pacing="rate", rate=0),
        "source.messages": lambda: ExchangeConfig(source=SyntheticSource(messages=10)),
        "source.path": lambda: ExchangeConfig(source=FileSource("/nonexistent/day.itch")),
        "replay": lambda: ExchangeConfig(replay=Endpoint("localhost", 1)),
        "sent_log": lambda: ExchangeConfig(sent_log=" "),
    }
    for name, build in cases.items():
        with pytest.raises(ConfigError) as info:
            build()
        assert info.value.field == name
        assert str(info.value).startswith(f"{name}: ")


def test_the_sent_log_lists_each_lines_data_packets_as_sent(tmp_path: Path) -> None:
    a, b = lines_config(80)
    log = tmp_path / "sent.npy"
    before = time.monotonic_ns()
    done = subprocess.run(
        [sys.executable, "-m", "tickerplant", "exchange", "--line-a", f"{a.group}:{a.port}",
         "--line-b", f"{b.group}:{b.port}", "--messages", "30000", "--symbols", "20",
         "--drop-a", "0.1", "--no-rerequest", "--no-replay", "--eos-seconds", "0.2", "--json",
         "--sent-log", str(log)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    after = time.monotonic_ns()
    summary = json.loads(done.stdout)
    sent = np.load(log, allow_pickle=False)
    assert ((before < sent["ns"]) & (sent["ns"] < after)).all()  # one clock across processes
    assert (np.diff(sent["ns"]) >= 0).all()
    for line in summary["lines"]:
        mine = sent[sent["line"] == line["name"].encode()]
        assert (np.diff(mine["ns"]) >= 0).all()
        assert mine.shape[0] == summary["packets"] - line["dropped"]
        # every packet but heartbeats and ends of session
        assert line["sent"] == (mine.shape[0] + summary["heartbeats"]
                                + summary["end_of_session_packets"])  # fmt: skip
    b_packets = sent[sent["line"] == b"B"]
    assert b_packets["first"][0] == 1
    assert (b_packets["first"][1:] == (b_packets["first"] + b_packets["count"])[:-1]).all()
    assert int(b_packets["count"].sum()) == summary["published"] == 30_000
    a_packets = sent[sent["line"] == b"A"]
    assert 0 < a_packets.shape[0] < b_packets.shape[0]  # line A lost some on purpose
    assert set(a_packets["first"].tolist()) < set(b_packets["first"].tolist())


def test_a_sent_log_that_cannot_be_written_is_refused_before_publishing(tmp_path: Path) -> None:
    a, b = lines_config(82)
    done = subprocess.run(
        [sys.executable, "-m", "tickerplant", "exchange", "--line-a", f"{a.group}:{a.port}",
         "--line-b", f"{b.group}:{b.port}", "--messages", "30000", "--symbols", "20",
         "--no-rerequest", "--no-replay", "--sent-log", str(tmp_path / "absent" / "sent.npy")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "sent_log: cannot write" in done.stderr
    assert "published" not in done.stderr


def test_the_command_line_names_the_line_a_bad_group_belongs_to() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tickerplant", "exchange", "--line-b", "10.0.0.1:30001",
         "--messages", "30000", "--symbols", "20"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "line_b.group: '10.0.0.1' is not allowed; use a multicast group" in done.stderr


def test_sockets_that_cannot_open_name_their_field() -> None:
    a, b = lines_config(70)
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    cases = {
        "line_a": ExchangeConfig(line_a=LineConfig(a.group, a.port, interface="192.0.2.1")),
        "rerequest": ExchangeConfig(line_a=a, line_b=b, rerequest=Endpoint("127.0.0.1", port)),
    }
    try:
        for name, config in cases.items():
            with pytest.raises(ConfigError) as info:
                asyncio.run(run_exchange(config))
            assert info.value.field == name
    finally:
        taken.close()


async def _simulate() -> tuple[dict[str, object], list[list[bytes]], list[bytes]]:
    config_a, config_b = lines_config(60)
    receivers = [receiver(config_a), receiver(config_b)]
    rerequest_port = free_port()
    config = ExchangeConfig(
        session="SIMTEST",
        source=SyntheticSource(seed=3, symbols=20, messages=30_000),
        line_a=config_a,
        line_b=config_b,
        rerequest=Endpoint("127.0.0.1", rerequest_port),
        replay=Endpoint("127.0.0.1", 0),
        end_of_session_seconds=1.2,
        heartbeat_interval=0.2,
    )
    loop = asyncio.get_running_loop()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setblocking(False)
    client.connect(("127.0.0.1", rerequest_port))
    replies: list[bytes] = []
    asked = asyncio.Event()
    got: list[list[bytes]] = [[], []]

    def progress(snapshot: object) -> None:
        for sock, into in zip(receivers, got, strict=True):
            drain(sock, into)
        if getattr(snapshot, "end_of_session_packets", 0) and not asked.is_set():
            # the session has ended; repairs are still answered
            client.send(encode_request(session_bytes("SIMTEST"), 29_990, 100))
            asked.set()

    async def collect() -> None:
        await asked.wait()
        replies.append(await asyncio.wait_for(loop.sock_recv(client, 2048), 2.0))

    try:
        collector = asyncio.ensure_future(collect())
        summary = await run_exchange(config, on_progress=progress)
        await asyncio.wait_for(collector, 2.0)
        for sock, into in zip(receivers, got, strict=True):
            drain(sock, into)
    finally:
        client.close()
        for sock in receivers:
            sock.close()
    return summary.to_dict(), got, replies


def test_the_exchange_publishes_a_synthetic_day_and_answers_repairs_after_the_end() -> None:
    summary, (got_a, got_b), replies = asyncio.run(_simulate())
    assert summary["published"] == 30_000
    assert summary["ended"] is True and summary["error"] is None
    assert got_a == got_b
    data = data_packets(got_a)
    assert sum(p.count for p in data) == 30_000
    assert hashlib.sha256(b"".join(p.blocks for p in data)).hexdigest() == summary["sha256"]
    packet = decode_packet(replies[0])
    assert (packet.sequence, packet.count) == (29_990, 11)
    rerequest = summary["rerequest"]
    assert isinstance(rerequest, dict) and rerequest["answered"] == 1
    lines = summary["lines"]
    assert isinstance(lines, tuple) and [line["sent"] for line in lines] == [len(got_a)] * 2


def test_a_sources_first_chunk_is_taken_off_the_loop_and_its_failure_kept() -> None:
    """Opening a capture lists it in a pass over the whole file: that first chunk must come from
    a thread, not stall the loop serving repairs; a source that fails there fails in the first
    tick, as it would have unprimed."""
    from tickerplant.exchange.simulator import _ahead

    taken_on: list[int] = []

    def chunks() -> Iterator[bytes]:
        for chunk in (b"first", b"second"):
            taken_on.append(threading.get_ident())
            yield chunk

    def broken() -> Iterator[bytes]:
        raise ValueError("offset 0: not ITCH")
        yield b""

    async def main() -> tuple[list[bytes], Iterator[bytes], Iterator[bytes], int]:
        primed = await _ahead(chunks())
        failing = await _ahead(broken())  # not raised yet
        return list(primed), failing, await _ahead(iter(())), threading.get_ident()

    got, failing, empty, loop_thread = asyncio.run(main())
    assert got == [b"first", b"second"]
    assert taken_on[0] != loop_thread and taken_on[1] == threading.get_ident()
    with pytest.raises(ValueError, match="offset 0"):
        next(failing)
    assert list(empty) == []


@pytest.mark.slow
def test_the_exchange_keeps_its_journal_on_disk_and_replays_a_whole_session_from_it(
    tmp_path: Path,
) -> None:
    """Memory bounded: the journal's newest 256 KiB in memory, the rest in its file, from
    which a replay from 1 is served whole."""
    messages = 300_000
    config_a, config_b = lines_config(61)
    config = ExchangeConfig(
        session="DISKTEST", source=SyntheticSource(seed=4, symbols=50, messages=messages),
        line_a=config_a, line_b=config_b, rerequest=None, replay=Endpoint("127.0.0.1", 0),
        end_of_session_seconds=10, journal_dir=str(tmp_path), memory_bytes=256 << 10,
    )  # fmt: skip
    got: list[bytes] = []
    held: list[int] = []
    stop = asyncio.Event()

    async def replay(port: int) -> None:
        async for record in subscribe(Endpoint("127.0.0.1", port), first=1, retry=None):
            if isinstance(record, Batch):
                got.extend(iter_messages(record.blocks))
                if len(got) == messages:
                    stop.set()

    async def main() -> None:
        reader: list[asyncio.Future[None]] = []

        def progress(summary: ExchangeSummary) -> None:
            held.append(summary.journal_memory)
            if summary.published == messages and not reader:
                assert summary.replay_port is not None
                reader.append(asyncio.ensure_future(replay(summary.replay_port)))

        await run_exchange(config, stop=stop, on_progress=progress)
        await asyncio.wait_for(reader[0], 10)

    asyncio.run(main())
    source = source_stream(4, 50, messages)
    assert got == list(iter_messages(source))
    assert (tmp_path / "DISKTEST.journal").read_bytes() == source  # ~10 MB, on disk
    assert max(held) < 2 << 20  # the newest 256 KiB, and what the writer had not yet taken
