"""The registry of figure names: one spelling for the terminal table, ``--json``, Prometheus and
the browser dashboard.

A figures snapshot is a dict keyed by these names. A figure with labels nests one dict level per
label, keyed by the label's value (``packets["a"]``, ``gaps_repaired["a"]["rerequest"]``), so a
Prometheus exporter walks it without knowing what any figure means. Names follow Prometheus
conventions already (base units in the name, one word per concept); the exporter adds the
``tickerplant_`` prefix and ``_total`` to counters. Label values are bounded sets (sources,
repair kinds, defect kinds), never client addresses or symbols.

Vocabulary, settled here: a *stream* is what the plant serves (``itch``, ``events``); a
*source* is where messages came from (line ``a`` or ``b``, the
``rerequest`` socket, the TCP ``replay``); a *line* is only ``a`` or ``b``; a *repair* is what
filled a gap (``line``, ``rerequest``, ``replay``); a *defect* is what made a datagram unusable;
*replay* is the SoupBinTCP session that replays a range (``tickerplant replay FILE`` reads a file,
the same word at the face because users say it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Kind(Enum):
    COUNTER = "counter"  # only goes up within a run
    GAUGE = "gauge"  # a level now
    HISTOGRAM = "histogram"  # latencies: count, sum, buckets; and p50, p99, max (seconds)
    INFO = "info"  # text or lists for people, not for Prometheus


@dataclass(frozen=True, slots=True)
class Figure:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()


_C, _G, _H, _I = Kind.COUNTER, Kind.GAUGE, Kind.HISTOGRAM, Kind.INFO
_SRC = ("source",)

FEED = (
    Figure("session", _I, "the MoldUDP64 session followed"),
    Figure("delivered_messages", _C, "messages delivered in order"),
    Figure("next_sequence", _G, "the next sequence number to deliver"),
    Figure("outstanding_messages", _G, "known to exist, not yet delivered (held or missing)"),
    Figure("held_bytes", _G, "bytes of early packets in the hold-back queue"),
    Figure("open_gaps", _G, "gaps being repaired"),
    Figure("lost_messages", _C, "messages given up and reported lost"),
    Figure("lost_ranges", _I, "the first lost ranges, [start, end)"),
    Figure("duplicates_delivered", _C, "messages delivered twice (must stay 0)"),
    Figure("skipped_unreported", _C, "messages missing without a gap lost (must stay 0)"),
    Figure("duplicate_messages", _C, "copies dropped by arbitration"),
    Figure("hold_overflow_packets", _C, "early packets dropped: the hold-back queue was full"),
    Figure("suspect_packets", _C, "packets far beyond the stream, awaiting a second to agree"),
    Figure("suspects_rejected", _C, "suspect packets decided strays and dropped, each logged"),
    Figure("suspects_accepted", _C, "suspect packets decided the stream's own (it jumped)"),
    Figure("rerequests_sent", _C, "MoldUDP64 re-requests sent"),
    Figure("rerequest_send_errors", _C, "re-requests the socket refused"),
    Figure("replays_started", _C, "TCP replay sessions started"),
    Figure("replays_failed", _C, "TCP replay sessions that ended short"),
    Figure("replay_failures", _I, "why replay sessions ended short, by reason"),
    Figure("snapshots_taken", _C, "sessions joined under way from a snapshot"),
    Figure("snapshots_failed", _C, "snapshots that failed (the session replayed from its "
           "first number instead)"),
    Figure("consumer_errors", _C, "consumer callbacks that raised"),
    Figure("loop_lag_seconds", _H, "how late the event loop ran a callback that was due"),
    Figure("gc_collections", _C, "cyclic garbage collections, by generation (2: a full one, "
           "looking at every object not frozen)", ("generation",)),
    Figure("repair_latency_seconds", _H, "gap seen to gap repaired", ("repair",)),
    Figure("line_state", _G, "down 0, quiet 1, up 2", ("line",)),
    Figure("packets", _C, "datagrams received, good or bad (replay: runs)", _SRC),
    Figure("messages", _C, "messages in data packets of the session", _SRC),
    Figure("heartbeats", _C, "heartbeat and end-of-session packets", _SRC),
    Figure("end_of_session_packets", _C, "end-of-session packets", _SRC),
    Figure("foreign_packets", _C, "packets of another session, ignored", _SRC),
    Figure("defects", _C, "datagrams dropped as unusable, by defect", ("source", "defect")),
    Figure("gaps_seen", _C, "gaps revealed by this source", _SRC),
    Figure("gaps_repaired", _C, "gaps revealed here, by what repaired them", ("source", "repair")),
    Figure("gaps_lost", _C, "gaps revealed here and given up", _SRC),
    Figure("rcvbuf_bytes", _G, "SO_RCVBUF as the kernel reports it (twice usable)", _SRC),
    Figure("wakeups", _C, "socket drains", _SRC),
    Figure("socket_errors", _C, "receive errors (ICMP errors on the re-request socket)", _SRC),
)

BOOKS = (
    Figure("book_symbols", _G, "symbols with a book"),
    Figure("live_orders", _G, "orders resting in the books"),
    Figure("book_levels", _G, "price levels in the books"),
    Figure("bbo_updates", _C, "best bid or offer changes"),
    Figure("trades", _C, "executions and crosses"),
    Figure("book_anomalies", _C, "messages inconsistent with the books, not applied"),
    Figure("messages_missed", _C, "messages the books lack (lost by the feed)"),
    Figure("bytes_per_live_order", _G, "book memory per resting order"),
    Figure("busiest", _I, "the BBO of the busiest symbols"),
)

_STREAM = ("stream",)

STREAMS = (
    Figure("channels_unheard", _G, "channels whose lines have carried nothing yet"),
    Figure("tier2_packets", _C, "data packets the plant sent on its tier-2 lines (each line)"),
    Figure("tier2_heartbeats", _C, "heartbeats and ends of session sent on tier-2 (each line)"),
    Figure("tier2_rerequests", _C, "re-requests the tier-2 re-request server received"),
    Figure("tier2_rerequests_refused", _C, "tier-2 re-requests not answered in full (caps, "
           "rate limits, malformed, unknown sessions)"),
    Figure("channels", _I, "with several channels, the worst few by number (1 from the first): "
           "their session, delivered and lost messages, gaps open, line states, events "
           "delivery p99"),
    Figure("channel_delivered_messages", _C, "each channel's messages delivered in order",
           ("channel",)),
    Figure("channel_lost_messages", _C, "each channel's messages given up", ("channel",)),
    Figure("channel_open_gaps", _G, "each channel's gaps open", ("channel",)),
    Figure("channel_line_state", _G, "each channel's lines: 0 down, 1 quiet, 2 up",
           ("channel", "line")),
    Figure("gc_frozen_objects", _G, "objects tickerplant run made while starting, kept out of "
           "the cyclic collector's sight (gc.freeze)"),
    Figure("stream_messages", _C, "messages journaled for the stream, lost ones included", _STREAM),
    Figure("stream_lost_messages", _C, "lost ranges journaled (itch: marks, events: notices)",
           _STREAM),
    Figure("clients", _G, "connections open, logged in or not", _STREAM),
    Figure("journal_memory_bytes", _G, "of the journal held in memory (the rest: its file)",
           _STREAM),
    Figure("journal_write_errors", _C, "journal file writes that failed (served from memory)",
           _STREAM),
    Figure("over_budget_cuts", _C, "slow consumers cut because the stream's clients together "
           "held over max_queued (the largest first)", _STREAM),
    Figure("journal_mended_blocks", _C, "journal file blocks a read found changed on disk, "
           "fetched again from the exchange and written back", _STREAM),
    Figure("journal_unmended_blocks", _C, "tries to mend a journal file block a read found "
           "changed on disk that failed (the block is not served; the next read tries again)",
           _STREAM),
    Figure("journal_unreadable", _C, "clients closed: what they were owed did not match the "
           "journal file's checksums (never served), or the ring had moved past it", _STREAM),
    Figure("deferred_pushes", _C, "live clients left to pull a publish in catch-up turns: past "
           "the publish's budget, or a burst too big to push", _STREAM),
    Figure("too_old_logins", _C, "logins for numbers the ring (no journal_dir) no longer held: "
           "served from its oldest, told", _STREAM),
    Figure("queued_bytes", _G, "bytes written for clients, not yet taken by their sockets",
           _STREAM),
    Figure("logins", _C, "logins accepted", _STREAM),
    Figure("rejected_logins", _C, "logins rejected", _STREAM),
    Figure("sent_messages", _C, "sequenced messages sent to clients", _STREAM),
    Figure("sent_bytes", _C, "bytes of Sequenced Data sent to clients", _STREAM),
    Figure("delivery_latency_seconds", _H,
           "a publish to the first of it taken for a client's socket", _STREAM),
    Figure("slow_consumers", _C, "slow consumers handled, by the policy applied",
           ("stream", "action")),
    Figure("conflated_updates", _C,
           "records merged away for conflated slow consumers (BBOs replaced, trades summarised)",
           _STREAM),
    Figure("conflated_rounds", _C, "conflated rounds sent to slow consumers", _STREAM),
    Figure("staleness_seconds", _H,
           "a conflated slow consumer's picture as each round went: since the oldest record "
           "it had not been sent was published", _STREAM),
    Figure("skipped_messages", _C, "messages skipped by slow consumers moved to live", _STREAM),
    Figure("subscriptions", _C, "symbol subscription requests served", _STREAM),
    Figure("refused_connections", _C, "over a limit, throttled, or from an address not served",
           _STREAM),
    Figure("glimpse_logins", _C, "snapshots served"),
)

_LINE = ("line",)

# The exchange simulator's (``tickerplant exchange --metrics``); the session is FEED's figure.
EXCHANGE = (
    Figure("published_messages", _C, "messages the exchange published"),
    Figure("published_packets", _C, "data packets published (each line, before loss injection)"),
    Figure("line_sent_packets", _C, "packets sent on the line", _LINE),
    Figure("line_dropped_packets", _C, "packets not sent on purpose: loss injection", _LINE),
    Figure("line_send_retries", _C, "sends deferred by a full socket buffer, none lost", _LINE),
    Figure("line_send_errors", _C, "sends that failed: the packet is lost on the line", _LINE),
    Figure("rerequests_received", _C, "MoldUDP64 re-requests received"),
    Figure("rerequest_messages_served", _C, "messages sent back to re-requests"),
    Figure("rerequests_refused", _C, "re-requests refused: another session or rate limited"),
    Figure("replay_logins", _C, "TCP replay sessions logged in"),
    Figure("replay_sent_messages", _C, "messages sent by TCP replay"),
    Figure("exchange_journal_memory_bytes", _G, "of the session's journal held in memory (the "
           "rest: its file)"),
)

REGISTRY: Mapping[str, Figure] = {f.name: f for f in (*FEED, *BOOKS, *STREAMS, *EXCHANGE)}

Figures = dict[str, Any]  # a snapshot: registry names to values, nested per label


def summed(figure: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """A two-label figure summed over its first label: ``gaps_repaired`` by repair alone."""
    out: dict[str, int] = {}
    for inner in figure.values():
        for label, n in inner.items():
            out[label] = out.get(label, 0) + n
    return out


WORST = 5  # channels listed by name (the worst first): never 48 of them


def by_channel(each: list[Figures]) -> Figures:
    """The channels' own figures (in channel order) as the figures that name them, by channel
    number from 1: a few of each for every channel (Prometheus labels them; 48 channels are a
    few hundred series); with several, the WORST that fare worst in full (most lost, then
    most gaps open, then the slowest events delivery), for the live table and the
    dashboard."""
    out: Figures = {f"channel_{name}": {str(n + 1): f[name] for n, f in enumerate(each)}
                    for name in ("delivered_messages", "lost_messages", "open_gaps",
                                 "line_state")}  # fmt: skip
    if len(each) == 1:
        return out

    def badness(n: int) -> tuple[int, int, float]:
        f = each[n]
        return (f["lost_messages"], f["open_gaps"],
                f["delivery_latency_seconds"]["events"].get("p99", 0.0))  # fmt: skip

    order = sorted(range(len(each)), key=badness, reverse=True)[:WORST]
    return out | {"session": f"{len(each)} channels", "channels": {str(n + 1): {
        "session": each[n]["session"],
        "delivered_messages": each[n]["delivered_messages"],
        "lost_messages": each[n]["lost_messages"],
        "open_gaps": each[n]["open_gaps"],
        "line_state": each[n]["line_state"],
        "events_delivery_p99_seconds": badness(n)[2],
    } for n in order}}  # fmt: skip


def added(a: Any, b: Any) -> Any:
    """Two channels' figures as one: counts and histograms added (a histogram's p50, p99 and
    max: the worse channel's), texts that differ joined, lists joined."""
    if isinstance(a, dict) and "buckets" in a:
        out = {"count": a["count"] + b["count"], "sum": a["sum"] + b["sum"],
               "buckets": [[bound, n + m] for (bound, n), (_, m)
                           in zip(a["buckets"], b["buckets"], strict=True)]}  # fmt: skip
        for key in ("p50", "p99", "max"):
            if key in a or key in b:
                out[key] = max(a.get(key, 0.0), b.get(key, 0.0))
        return out
    if isinstance(a, dict):
        return {key: added(value, b[key]) for key, value in a.items()}
    if isinstance(a, str):
        return a if a == b else ",".join(sorted(set(a.split(",")) | set(b.split(","))))
    return a + b  # (numbers, lists)
