"""``tickerplant recovery``: the exchange's recovery host, a process of its own.

A real exchange answers re-requests and replays from hosts apart from its publisher: either may
die and come back without the other. The simulator's publisher writes its session's journal to
``--journal-dir`` (``tickerplant exchange --journal-dir DIR --no-rerequest --no-replay``); this
process follows the newest journal file there as it grows (checked against its checksums,
:class:`~tickerplant.capture.journal.JournalFollower`) and serves it: MoldUDP64 re-requests
and SoupBinTCP replay, then End of Session once the publisher has marked the file whole. Killed
and started again, it reads the file back from the start and goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from tickerplant.capture.journal import JournalFollower
from tickerplant.distribute.fanout import FanOut
from tickerplant.endpoint import Endpoint
from tickerplant.errors import ConfigError
from tickerplant.io.rerequest import RerequestServer
from tickerplant.io.soupbin import SoupServer

log = logging.getLogger(__name__)

POLL = 0.005  # seconds between looks at the file: what a re-request may wait for the newest


@dataclass(frozen=True, slots=True)
class RecoveryConfig:
    journal_dir: Path
    rerequest: Endpoint | None
    replay: Endpoint | None


async def run_recovery(config: RecoveryConfig, stop: asyncio.Event) -> int:
    """Serve the newest session in ``journal_dir`` until ``stop``; returns messages served from."""
    path = await _newest(config.journal_dir, stop)
    if path is None:
        return 0
    follower = JournalFollower(path)
    journal = follower.journal
    rerequest = replay = None
    ended = False
    try:
        if config.rerequest is not None:
            rerequest = RerequestServer(journal, config.rerequest.host, config.rerequest.port)
            await _listen("rerequest", config.rerequest, rerequest)
        if config.replay is not None:
            replay = SoupServer(FanOut(journal), config.replay.host, config.replay.port)
            await _listen("replay", config.replay, replay)
        log.info("recovery for %s: following %s", journal.session.decode().strip(), path)
        while not stop.is_set():
            if follower.poll() and replay is not None:
                replay.publish()
            if not ended and follower.ended:
                ended = True
                log.info("%s is whole at %d messages: End of Session", path.name, len(journal))
                if replay is not None:
                    replay.end_session()
            await _nap(stop, POLL)
        return len(journal)
    finally:
        if replay is not None:
            await replay.close()
        if rerequest is not None:
            await rerequest.close()
        follower.close()


async def _newest(directory: Path, stop: asyncio.Event) -> Path | None:
    """The newest journal file in ``directory``, waited for until one is there."""
    if not directory.is_dir():
        raise ConfigError("journal_dir", f"{str(directory)!r} is not a directory",
                          "give the exchange's --journal-dir")  # fmt: skip
    while not stop.is_set():
        files = sorted(directory.glob("*.journal"), key=lambda p: p.stat().st_mtime)
        if files:
            return files[-1]
        await _nap(stop, 0.05)
    return None


async def _nap(stop: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less if ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _listen(name: str, where: Endpoint, server: RerequestServer | SoupServer) -> None:
    try:
        await server.start()
    except OSError as exc:
        raise ConfigError(name, f"cannot listen on {where} ({exc.strerror})",
                          "choose a free port on a local address") from exc  # fmt: skip
