"""Gap recovery: wait for the other line, then re-request, then replay, then give up.

Sans-I/O like aioquic's loss recovery, with the session machines' one clock interface and one
way out: :meth:`Recovery.handle_timer` takes ``now`` and looks at the sequencer's outstanding
gaps; :meth:`Recovery.next_event` gives what it found due (:class:`Rerequest`, :class:`Replay`,
:class:`CancelReplay`); :meth:`Recovery.get_timer` says when to call it again. It is also called
whenever new gaps appear. The feed session performs the actions and feeds whatever comes back
into the sequencer as data from ``Source.REREQUEST`` or ``Source.REPLAY``. A gap that no means
has filled by ``give_up_after`` is handed back to the sequencer as lost, which puts a GapLost
marker in the stream: nothing is skipped silently.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from tickerplant.ops.config import check
from tickerplant.receive.gaps import Gap
from tickerplant.receive.sequencer import Sequencer


@dataclass(frozen=True, slots=True)
class RecoveryConfig:
    # The copy on the other line normally lands within microseconds; a line that lost a packet
    # should not trigger a re-request the other line was about to make unnecessary.
    line_wait: float = 0.001
    rerequest: bool = True
    rerequest_timeout: float = 0.010
    rerequest_backoff: float = 2.0
    rerequest_attempts: int = 5
    max_request: int = 1000  # messages asked for in one request; the server may cap lower
    max_requests_per_poll: int = 64
    replay: bool = True
    # Larger gaps (a late join, a long outage) go to the TCP replay: one stream beats thousands of
    # UDP requests, and the re-request server is rate limited per source anyway.
    replay_threshold: int = 20_000
    replay_retry: float = 0.5
    # A replay that delivers nothing this long is cancelled (a server that logs us in and then
    # sends only heartbeats would otherwise hold its gaps open until the replay's own timeout).
    replay_stall: float = 5.0
    give_up_after: float = 2.0

    def __post_init__(self) -> None:
        checks = [
            ("line_wait", self.line_wait >= 0, "a delay in seconds, 0 or more"),
            ("rerequest_timeout", self.rerequest_timeout > 0, "seconds, more than 0"),
            ("rerequest_backoff", self.rerequest_backoff >= 1, "a factor of 1 or more"),
            ("rerequest_attempts", self.rerequest_attempts >= 1, "1 or more"),
            ("max_request", 1 <= self.max_request <= 0xFFFE, "1 to 65534 messages"),
            ("max_requests_per_poll", self.max_requests_per_poll >= 1, "1 or more"),
            ("replay_threshold", self.replay_threshold >= 1, "1 or more messages"),
            ("replay_retry", self.replay_retry >= 0, "seconds, 0 or more"),
            ("replay_stall", self.replay_stall > 0, "seconds, more than 0"),
            ("give_up_after", self.give_up_after > self.line_wait, "seconds, above line_wait"),
        ]
        for name, ok, fix in checks:
            check(name, ok, getattr(self, name), f"use {fix}")


@dataclass(frozen=True, slots=True)
class Rerequest:
    sequence: int
    count: int


@dataclass(frozen=True, slots=True)
class Replay:
    first: int
    end: int  # exclusive


@dataclass(frozen=True, slots=True)
class CancelReplay:
    """The replay session has sent nothing for ``replay_stall``: end it, it counts as failed."""


Action = Rerequest | Replay | CancelReplay


@dataclass(slots=True)
class RecoveryCounters:
    rerequests_sent: int = 0
    replays_started: int = 0
    replays_failed: int = 0


class Recovery:
    def __init__(self, sequencer: Sequencer, config: RecoveryConfig | None = None) -> None:
        self.sequencer = sequencer
        self.config = config or RecoveryConfig()
        self.replaying: Replay | None = None
        self._replay_heard = 0.0  # when the replay session last delivered (or started)
        self._replay_retry_at = 0.0
        self._timer: float | None = None
        self.counters = RecoveryCounters()
        self._actions: deque[Action] = deque()

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` next has something to do (None: nothing outstanding)."""
        return self._timer

    def handle_timer(self, now: float) -> None:
        """Find what is due at ``now`` (requests to send, a replay to start or cancel, for
        :meth:`next_event`); gaps past ``give_up_after`` are handed back to the sequencer as
        lost."""
        cfg = self.config
        seq = self.sequencer
        actions = self._actions
        deadline = float("inf")
        requests = 0
        if self.replaying is not None:
            stalled_at = self._replay_heard + cfg.replay_stall
            if now >= stalled_at:
                # Logged in but silent (or trickling nothing): a replay must not keep its gaps
                # open past give_up_after just by holding the connection.
                actions.append(CancelReplay())
                self.replay_finished(False, now)
            else:
                deadline = stalled_at
        for gap in list(seq.gaps):
            if self._covered_by_replay(gap):
                continue  # the replay's own timeout bounds it
            failed = gap.replay_failed_at
            opened = gap.record.opened_at if failed is None else failed
            give_up_at = opened + cfg.give_up_after
            if now < give_up_at:
                deadline = min(deadline, give_up_at)
            elif gap is seq.gaps[0]:
                seq.give_up(gap, now)
                continue
            # Otherwise given up later, in stream order: above a gap still open (one a replay
            # covers), its GapLost would land inside what that repair brings, and the next
            # replay may still fetch it.
            if now < opened + cfg.line_wait:
                deadline = min(deadline, opened + cfg.line_wait)
                continue
            # A replay busy with a lower gap is not usable either: re-request meanwhile.
            replay_usable = cfg.replay and self.replaying is None and now >= self._replay_retry_at
            if cfg.rerequest and (gap.size <= cfg.replay_threshold or not replay_usable
                                  or failed is not None):  # fmt: skip
                if 0 <= gap.requested_end <= gap.start:
                    # Everything asked for has come: ask for the next part at once. (A partial
                    # answer is still arriving, or was capped: that waits for the timeout.)
                    gap.attempts = 0
                    gap.next_try = now
                    if failed is not None:  # a fallback moving on: its give-up clock too
                        gap.replay_failed_at = now
                if gap.attempts < cfg.rerequest_attempts:
                    if now >= gap.next_try and requests < cfg.max_requests_per_poll:
                        count = min(gap.size, cfg.max_request)
                        actions.append(Rerequest(gap.start, count))
                        requests += 1
                        gap.requested_end = gap.start + count
                        gap.attempts += 1
                        wait = cfg.rerequest_timeout * cfg.rerequest_backoff ** (gap.attempts - 1)
                        gap.next_try = now + wait
                    deadline = min(deadline, gap.next_try)
                    continue
            if cfg.replay and self.replaying is None:
                if now >= self._replay_retry_at:
                    # One TCP session from here to the end of the last gap; what it repeats of
                    # held data the sequencer drops as duplicates.
                    self.replaying = Replay(gap.start, seq.gaps[-1].end)
                    self._replay_heard = now
                    self.counters.replays_started += 1
                    actions.append(self.replaying)
                    deadline = min(deadline, now + cfg.replay_stall)
                else:
                    deadline = min(deadline, self._replay_retry_at)
        self.counters.rerequests_sent += requests
        self._timer = deadline if deadline != float("inf") else None

    def next_event(self) -> Action | None:
        """The oldest action found due and not yet taken (None: nothing to do)."""
        return self._actions.popleft() if self._actions else None

    def reset(self) -> None:
        """A new session: whatever was under way belonged to the old one."""
        self.replaying = None
        self._replay_retry_at = 0.0
        self._timer = None

    def replay_progress(self, now: float) -> None:
        """The replay session delivered something."""
        self._replay_heard = now

    def replay_finished(self, ok: bool, now: float) -> None:
        """The replay session ended: complete (ok) or failed (refused, timed out, cut). The gaps
        a failed one covered fall back to re-requests, with give_up_after to repair them."""
        if not ok and self.config.rerequest:
            for gap in self.sequencer.gaps:
                if gap.replay_failed_at is None and self._covered_by_replay(gap):
                    gap.replay_failed_at = now
        self.replaying = None
        if not ok:
            self.counters.replays_failed += 1
            self._replay_retry_at = now + self.config.replay_retry
        self._timer = now

    def _covered_by_replay(self, gap: Gap) -> bool:
        r = self.replaying
        return r is not None and gap.start < r.end and gap.end > r.first
