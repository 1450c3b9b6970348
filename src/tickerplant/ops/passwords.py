"""Users' passwords as scrypt hashes: what the config holds, never the password itself.

``scrypt$N$r$p$salt$key`` (salt and key in base64). scrypt is memory-hard (16 MiB a check at the
default N=2**14, r=8): a stolen config costs an attacker that per guess. A check takes tens of
milliseconds, so the servers run it off the event loop; failed logins are throttled per address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from tickerplant.errors import ConfigError

N, R, P = 1 << 14, 8, 1
_KEY = 32
_MAXMEM = 64 << 20


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=_KEY, maxmem=_MAXMEM)
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(key)}"


def verify(stored: str, password: bytes) -> bool:
    """Whether ``password`` (as a login carries it, space-padded) matches ``stored``."""
    n, r, p, salt, key = _parse(stored, "password")
    got = hashlib.scrypt(password.rstrip(b" "), salt=salt, n=n, r=r, p=p, dklen=len(key),
                         maxmem=_MAXMEM)
    return hmac.compare_digest(got, key)


def check(stored: str, field: str) -> None:
    """Raise :class:`ConfigError` for ``field`` unless ``stored`` is a hash :func:`verify` reads."""
    _parse(stored, field)


def _parse(stored: str, field: str) -> tuple[int, int, int, bytes, bytes]:
    parts = stored.split("$")
    fix = "store a hash, not a password: make one with `tickerplant passwd USER`"
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ConfigError(field, "is not an scrypt hash", fix)
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        key = base64.b64decode(parts[5], validate=True)
    except ValueError:
        raise ConfigError(field, "is not an scrypt hash", fix) from None
    if n < 2 or n & (n - 1) or n * r * 128 > _MAXMEM or not (r >= 1 and p >= 1 and key):
        raise ConfigError(field, f"has unusable scrypt settings N={n} r={r} p={p}", fix)
    return n, r, p, salt, key


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
