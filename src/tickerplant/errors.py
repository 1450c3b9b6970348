"""Every error tickerplant raises on purpose: one family, named by who is at fault (h11's local
and remote split, widened to the plant's four parties).

- :class:`ConfigError`: the user's settings (a field, what is wrong with it, the fix);
- :class:`InputError`: bytes we were given that are not what they claim to be (a datagram, a
  packet on a stream, a file, a message source): counted and dropped on the wire, named with
  their offset in a file;
- :class:`RemoteError`: the peer at the other end of a session refused or failed us (a login
  rejected); retrying the same way will not help;
- :class:`LocalProtocolError`: our own side called a session at the wrong time: a bug.

A caller catches :class:`TickerplantError` for all of them; any other exception is a bug. The
first two are ValueErrors and the last a RuntimeError, as Python's own would be.
"""

from __future__ import annotations

import enum


class TickerplantError(Exception):
    """The root: an error tickerplant raised on purpose, with a message that says what to do."""


class ConfigError(TickerplantError, ValueError):
    """A setting the user got wrong: ``field`` (a dotted path), what is wrong, and the fix.

    The user's mistake, not ours: commands print it and exit 2, where a bug gets a traceback.
    """

    def __init__(self, field: str, problem: str, fix: str) -> None:
        super().__init__(f"{field}: {problem}; {fix}")
        self.field = field
        self.problem = problem
        self.fix = fix

    def within(self, table: str) -> ConfigError:
        """The same error, its field seen from the enclosing ``table``."""
        return ConfigError(f"{table}.{self.field}" if table else self.field, self.problem, self.fix)


class InputError(TickerplantError, ValueError):
    """Bytes we were given are not what they claim to be."""


class MalformedPacket(InputError):
    """Bytes that are not a packet of their protocol (MoldUDP64 or SoupBinTCP); ``defect``, one
    of that codec's ``Defect`` values, says why."""

    def __init__(self, defect: enum.Enum, detail: str) -> None:
        super().__init__(f"{defect.name.lower()}: {detail}")
        self.defect = defect


class RemoteError(TickerplantError):
    """The peer refused or failed the session: trying again the same way will not help."""


class LocalProtocolError(TickerplantError, RuntimeError):
    """Our own side called a session at the wrong time: a bug, so it raises."""
