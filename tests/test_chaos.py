"""Chaos, short: the plant (or, a kill in three, the exchange's recovery host) killed with
SIGKILL every 1-3 s for ten seconds of a session of a million messages, and started again each
time on its journals; an ``itch`` and an ``events`` client end with every message and record
exactly once, in order (:mod:`chaos`; ``bench/chaos.py`` runs the issue's ten million and
sixty seconds)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict

import pytest

from chaos import run_chaos


@pytest.mark.slow
def test_a_plant_killed_again_and_again_loses_and_repeats_nothing() -> None:
    result = asyncio.run(run_chaos(messages=1_000_000, rate=80_000, kill_for=10.0))
    print(json.dumps(asdict(result)))
    assert result.published == 1_000_000
    assert result.restarts + result.recovery_restarts >= 3, result
    assert result.itch_messages == 1_000_000
    assert result.lost == [], "the plant reported ranges lost"
    assert result.identical, "a client's stream is not the published one"
    assert result.itch_reconnects >= result.restarts
