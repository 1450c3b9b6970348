"""A journal's spilled blocks that the disk changed, fetched again from where the feed came
from: the plant's ``itch`` journal from the exchange's replay service, an edge's ``events``
journals from the plant's ``events`` service.

A block read back for a client that does not match its checksum is not served (the client is
told and closed, and resumes by number). The messages whose bytes cover it (from the journal's
mark before it to the one after) are fetched again from the replay service, and where the
bytes they make match the block's checksum, kept since the block was written, they are written
over it: the next read is served. Bytes the checksum does not vouch for (the service answered
otherwise, or a lost range's marks or notices are in the block) are left unserved, and logged.
The plant's ``events`` journal has no such source at run time: its bad blocks stay unserved (a
restart rebuilds its file from the books' replay)."""

from __future__ import annotations

import asyncio
import logging

from tickerplant.capture.checksums import CorruptBlock
from tickerplant.capture.journal import JournalFile
from tickerplant.distribute.journal import Journal
from tickerplant.feed.handler import FeedConfig
from tickerplant.io.replay_client import ReplayClient
from tickerplant.ops.logs import fields

log = logging.getLogger(__name__)


class Mender:
    def __init__(self, file: JournalFile, feed: FeedConfig) -> None:
        self.feed = feed
        self.file = file
        self.mended = 0  # blocks written back whole
        self.failed = 0  # blocks that could not be
        self._pending: dict[tuple[bytes, int], asyncio.Task[None]] = {}
        file.on_damage = self.damaged

    def damaged(self, journal: Journal, err: CorruptBlock) -> None:
        key = (journal.session, err.start)
        if key in self._pending:
            return  # being fetched already (each client asking for it is told meanwhile)
        if self.feed.replay is None:
            self._failed(journal, err.start, err.end, "no replay service to fetch it from")
            return
        task = asyncio.get_running_loop().create_task(self._mend(journal, err.start, err.end))
        self._pending[key] = task
        task.add_done_callback(lambda _: self._pending.pop(key, None))

    async def _mend(self, journal: Journal, start: int, end: int) -> None:
        feed = self.feed
        assert feed.replay is not None
        try:
            first, last, begin, stop = journal.covering(start, end)
        except ValueError as err:  # the block's end still in memory: the next read asks again
            self._failed(journal, start, end, str(err))
            return
        parts: list[bytes] = []
        client = ReplayClient(feed.replay.host, feed.replay.port, journal.session,
                              lambda _first, _count, blocks: parts.append(blocks),
                              feed.replay_username, feed.replay_password)  # fmt: skip
        try:
            got = await client.fetch(first, last, feed.replay_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # refused, unreachable, cut: told, the block stays unserved
            self._failed(journal, start, end, f"{type(err).__name__}: {err}")
            return
        data = b"".join(parts)
        if got < last:
            self._failed(journal, start, end, f"the replay gave {first}..{got} of {first}.."
                         f"{last} ({client.stop_reason})")  # fmt: skip
        elif len(data) != stop - begin or not self.file.mend(journal, begin, data, start, end):
            self._failed(journal, start, end, f"messages {first}..{last} fetched again do not "
                         "make the bytes its checksum vouches for")  # fmt: skip
        else:
            self.mended += 1
            log.warning("journal %s bytes %d-%d mended with messages %d..%d fetched again",
                        journal.session.decode("ascii").strip(), start, end, first, last,
                        extra=fields(event="journal_mended", start=start, end=end,
                                     first=first, last=last))  # fmt: skip

    def _failed(self, journal: Journal, start: int, end: int, why: str) -> None:
        self.failed += 1
        log.error("journal %s bytes %d-%d do not match their checksum and cannot be mended: %s;"
                  " not served", journal.session.decode("ascii").strip(), start, end, why,
                  extra=fields(event="journal_mend_failed", start=start, end=end, reason=why))

    async def close(self) -> None:
        for task in list(self._pending.values()):
            task.cancel()
        await asyncio.gather(*self._pending.values(), return_exceptions=True)
