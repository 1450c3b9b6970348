"""The fan-out's settings: its limits (one set per server, from the config) and the policies a
user may have for when it falls behind."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tickerplant.ops.config import check

MAX_BACKLOG = 16 << 20  # bytes a live subscriber may leave unread before it is dropped
# Bytes io may hold for all a server's logged-in clients together beyond their sockets: a cap
# per client times thousands of clients is no bound (500 that never read took a plant from
# 385 MB to 1.6 GB in 25 s).
MAX_QUEUED = 256 << 20
CHUNK_MESSAGES = 16384  # read from the journal per catch-up write: ~0.5 MiB of ITCH
# What one catch-up turn may write before it yields: 8 MiB held the loop up to 36 ms (a client
# reading from 1 on loopback never fills its socket), 1 MiB about 5 (bench/loop_lag.py).
TURN_BYTES = 1 << 20
# What all catch-up turns together may write before the loop looks at its sockets again: the
# turns due are granted a few at a time, so that a login waits behind this much work at most,
# however many clients catch up (1,000 that logged in from 1 and never read held a new login
# unanswered for seconds when each took its turn on its own timer, all due at once).
TICK_BYTES = 2 << 20
# io's transport asks us to stop writing above this, resumes below a quarter; a client whose
# socket is that full leaves the push path (2 MiB: 1,000 non-readers held 2 GB in io; 256 KiB:
# those live as the feed began were pushed for their first ~0.3 s, each taking ``UNSENT`` in
# its kernel and this in io before it left).
HIGH_WATER = 64 << 10
LINGER = 2.0  # seconds a dropped client gets to read the Debug packet before the reset
PUBLISH_BYTES = 16 << 20  # ~15 ms of writes on this machine
# A slow consumer under ``conflate`` gets a round (everything published since its last, each
# symbol's latest BBO, its trades summarised) at most this often, and only once its socket has
# taken the round before: what its kernel buffers hold stays a few rounds, not seconds of them.
CONFLATE_INTERVAL = 0.1
CONFLATE_UNSENT = 16 << 10  # bytes a conflate user's kernel may hold unsent, and io beyond it
# What any client's kernel may hold unsent (TCP_NOTSENT_LOWAT): the rest waits in io, where
# max_backlog and max_queued see it. Left to the kernel (autotuned up to 4 MiB a socket), 1,000
# clients that never read took ~1 MB of kernel memory each, pushed TCP into memory pressure, and
# each write to one of them cost ~30 us; capped, ~5 us, then an append to io's buffer (0.1 us).
# 128 KiB let 1,000 non-readers live as the feed began be pushed for their first ~0.2 s (attacked
# p99 205 ms; 32 KiB: 12.6 ms), for catch-up from 1 at 0.94x.
UNSENT = 32 << 10


class Policy(enum.Enum):
    """What becomes of a slow consumer (one per user, from the config)."""

    DISCONNECT = "disconnect"  # told why and closed; it resumes from the journal
    CONFLATE = "conflate"  # events: while it lags, only each symbol's latest BBO is sent
    SKIP = "skip"  # events: moved to live, told the exact range it skipped


@dataclass(frozen=True, slots=True)
class FanOutLimits:
    max_backlog: int = MAX_BACKLOG
    max_queued: int = MAX_QUEUED
    chunk_messages: int = CHUNK_MESSAGES
    turn_bytes: int = TURN_BYTES
    tick_bytes: int = TICK_BYTES
    linger: float = LINGER
    # A socket that takes nothing this long while we have bytes for it (io paused writing) is a
    # slow consumer too, however little it holds: a dead reader must not keep its place.
    write_deadline: float = 10.0
    max_connections: int = 10_000  # open at once, logged in or not
    max_per_address: int = 1_000
    failed_logins: int = 5  # from one address within throttle seconds: then it is refused
    throttle: float = 10.0
    max_checks: int = 8  # password checks under way at once (each ~16 MiB and tens of ms)
    # What one publish may push in all: past it, the live subscribers left pull the batch in
    # catch-up turns from the next loop iteration, so that a burst to thousands of clients does
    # not hold the loop (and the feed it shares) for one long call.
    publish_bytes: int = PUBLISH_BYTES
    conflate_interval: float = CONFLATE_INTERVAL
    conflate_unsent: int = CONFLATE_UNSENT
    unsent: int = UNSENT

    def __post_init__(self) -> None:
        for name in ("max_backlog", "max_queued", "chunk_messages", "turn_bytes", "tick_bytes",
                     "max_connections", "max_per_address", "failed_logins", "max_checks",
                     "publish_bytes", "conflate_unsent", "unsent"):
            check(name, getattr(self, name) >= 1, getattr(self, name), "give 1 or more")
        for name in ("linger", "throttle", "conflate_interval"):
            check(name, getattr(self, name) >= 0, getattr(self, name), "give seconds, 0 or more")
        check("write_deadline", self.write_deadline > 0, self.write_deadline, "give seconds > 0")
