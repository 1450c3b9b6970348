"""Sockets read by priority: of those ready in one turn of the loop, the higher priorities'
first (real UDP sockets on loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import pytest

from harness import until
from tickerplant.endpoint import Endpoint
from tickerplant.errors import ConfigError
from tickerplant.feed.handler import FeedConfig
from tickerplant.io.loop import run_loop
from tickerplant.io.ready import Priorities
from tickerplant.plant import PlantConfig


@pytest.mark.parametrize("run", [asyncio.run, run_loop], ids=["asyncio", "uvloop"])
def test_the_ready_sockets_of_a_turn_are_read_highest_priority_first(
    run: Callable[[Coroutine[Any, Any, list[int]]], list[int]],
) -> None:
    ranks = [0, 3, 1, 3, 2]  # two of 3: in the order the loop found them

    async def main() -> list[int]:
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in ranks]
        read: list[int] = []
        try:
            for sock in socks:
                sock.bind(("127.0.0.1", 0))
                sock.setblocking(False)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                for sock in socks:  # every one ready before the loop looks
                    sender.sendto(b"x", sock.getsockname())
            def take(n: int) -> None:  # (asyncio's loop may call it again once it is empty)
                with contextlib.suppress(BlockingIOError):
                    socks[n].recv(8)
                    read.append(n)

            priorities = Priorities()
            for n, (sock, rank) in enumerate(zip(socks, ranks, strict=True)):
                priorities.add_reader(sock.fileno(), rank, partial(take, n))
            await until(lambda: len(read) == len(socks), 5, "every socket read")
            for sock in socks:
                asyncio.get_running_loop().remove_reader(sock.fileno())
            return read
        finally:
            for sock in socks:
                sock.close()

    read = run(main())
    assert [ranks[n] for n in read] == [3, 3, 2, 1, 0]


def test_priorities_go_to_channels_in_order_and_no_more_of_them_than_channels() -> None:
    feed = FeedConfig(Endpoint("239.192.77.1", 31001), Endpoint("239.192.77.2", 31002))
    config = PlantConfig(feed, channels=3, priorities=[0, 5])
    assert [config.of_channel(n).feed.priority for n in range(3)] == [0, 5, 0]
    with pytest.raises(ConfigError, match="priorities: 3 of them for 2 channels"):
        PlantConfig(feed, channels=2, priorities=[1, 2, 3])
    with pytest.raises(ConfigError, match=r"priorities\[1\]: 'high' is not a whole number"):
        PlantConfig(feed, channels=2, priorities=[1, "high"])  # type: ignore[list-item]
