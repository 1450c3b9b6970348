"""Figures as Prometheus metrics, by the names in :mod:`tickerplant.ops.figures` and no others.

A :class:`FiguresCollector` turns the latest figures snapshot into metric families when it is
scraped: ``tickerplant_`` + the figure's name, counters exposed with ``_total``, each label of
the figure a Prometheus label (sources, lines, repairs, defects, streams, slow-consumer actions:
bounded sets, never a client address or a symbol), latencies as histograms, line state as a
gauge (0 down, 1 quiet, 2 up), the session as an info metric. Text figures for people (lost
ranges, replay failure reasons, the busiest symbols) are not exported.

The collector never calls into the plant: the process hands it snapshots (:class:`Snapshot`,
replaced whole from the event loop and handed whole to the listener process, which collects
from its copy), so that a scrape costs the plant nothing and sees one consistent moment.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tickerplant.ops.figures import REGISTRY, Figure, Figures, Kind

PREFIX = "tickerplant_"
LINE_STATES = {"down": 0, "quiet": 1, "up": 2}


class Snapshot:
    """The latest figures, replaced whole (one reference assignment: atomic under the GIL),
    when (``time``, seconds since the epoch), and the operator's events lately logged
    (``events``, a bounded ring :class:`tickerplant.ops.logs.EventRing` fills). Each
    :meth:`set` is handed to the watchers (the listener process's channel)."""

    def __init__(self, events: int = 200) -> None:
        self.figures: Figures = {}
        self.time = 0.0
        self.events: deque[dict[str, Any]] = deque(maxlen=events)
        self.watchers: list[Callable[[Snapshot], None]] = []

    def set(self, figures: Figures, at: float | None = None) -> None:
        self.time = time.time() if at is None else at
        self.figures = figures
        for watcher in tuple(self.watchers):  # a watcher may leave as it is told
            watcher(self)


def _leaves(
    value: Any, depth: int, labels: tuple[str, ...] = ()
) -> Iterator[tuple[list[str], Any]]:
    """(label values, value) of a figure nested ``depth`` levels deep."""
    if depth == 0:
        yield list(labels), value
        return
    for key, inner in value.items():
        yield from _leaves(inner, depth - 1, (*labels, str(key)))


def family(figure: Figure, value: Any) -> Metric | None:
    """The metric family of one figure's value (None: not a Prometheus figure)."""
    name = PREFIX + figure.name
    labels = list(figure.labels)
    if figure.kind is Kind.INFO:
        if figure.name != "session":
            return None
        info = InfoMetricFamily(name, figure.help)
        info.add_metric([], {"session": str(value)})
        return info
    if figure.kind is Kind.HISTOGRAM:
        histogram = HistogramMetricFamily(name, figure.help, labels=labels)
        for values, stats in _leaves(value, len(labels)):
            buckets = [(_bound(b), float(n)) for b, n in stats["buckets"]]
            histogram.add_metric(values, buckets, float(stats["sum"]))
        return histogram
    out = (CounterMetricFamily if figure.kind is Kind.COUNTER else GaugeMetricFamily)(
        name, figure.help, labels=labels
    )
    for values, leaf in _leaves(value, len(labels)):
        out.add_metric(values, float(_state(leaf) if isinstance(leaf, str) else leaf))
    return out


def _state(states: str) -> int:
    """A line's state as a number; several channels' lines in different states ("down,up"):
    the worst."""
    return min(LINE_STATES[state] for state in states.split(","))


def _bound(bound: float | str) -> str:
    return bound if isinstance(bound, str) else repr(float(bound))


class FiguresCollector(Collector):
    """Every registered figure of the latest snapshot, as its metric family."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        for name, value in self._snapshot.figures.items():
            figure = REGISTRY.get(name)
            if figure is not None and (metric := family(figure, value)) is not None:
                yield metric
