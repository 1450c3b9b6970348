"""The demo's verdict: what the exchange published against what the plant delivered and what
each demo client received (by count and sha256), the events clients against the plant's events
journal, and the lines that say so."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console

from tickerplant.ops.figures import summed
from tickerplant.wire import events as ev

if TYPE_CHECKING:
    from tickerplant.demo import DemoClient, EventsClient
    from tickerplant.plant import Plant

STALENESS_P99 = 0.5  # the bound on the conflated client's staleness at the 99th percentile, s
# Seconds a stopped demo waits for the exchange's summary (its session ends within
# simulator.STOPPED_END_OF_SESSION) and for what is in flight, of the 2 s a stop may take: the
# verdict covers what came in by then.
STOP_WAIT = 0.8


def summary(
    plant: Plant, published: dict[str, Any], clients: dict[str, DemoClient], seconds: float,
    watchers: dict[str, EventsClient] | None = None, staleness: list[float] | None = None,
) -> dict[str, Any]:
    """The verdict (delivered == published and received == published, by count and sha256,
    nothing lost; the events clients as :func:`_events_verdict` judges them), then the plant's
    figures, the clients' and the exchange's summary."""
    figures = plant.figures()
    books = plant.books.figures()  # once: asked per figure, it cost a stopped demo 0.15 s
    count = published.get("published")
    sha = published.get("sha256")
    delivered = figures["delivered_messages"]
    # Each channel's session against what the exchange published on it (one channel: the day);
    # the demo's clients read the first.
    wanted = [(c["published"], c["sha256"]) for c in published.get("channels", ())] or [
        (count, sha)]  # fmt: skip
    got = [(c.feed.session.counters.delivered, c.feed.session.digest) for c in plant.channels]
    digest = got[0][1]
    received = {
        name: {"messages": c.messages, "lost": c.lost, "reconnects": c.reconnects,
               "identical": (c.messages, c.sha256.hexdigest()) == wanted[0]}
        for name, c in clients.items()
    }  # fmt: skip
    identical = (
        count is not None
        and got == wanted
        and figures["lost_messages"] == 0
        and all(c["identical"] for c in received.values())
    )
    events = _events_verdict(plant, watchers or {}, staleness or [])
    return {
        "published": count,
        "delivered": delivered,
        "identical": identical,
        "verdict": identical and events.get("ok", True),
        "duplicates_delivered": figures["duplicates_delivered"],
        "seconds": round(seconds, 3),
        "published_sha256": sha,
        "delivered_sha256": digest,
        "clients": received,
        "channels": [{"session": c.get("session"), "published": c.get("published"),
                      "delivered": n, "identical": (n, d) == (c.get("published"),
                                                            c.get("sha256"))}
                     for c, (n, d) in zip(published.get("channels", ()), got, strict=False)],
        "slow_consumers_cut": figures["slow_consumers"]["itch"]["disconnect"],
        "events": events,
        "feed": {k: v for k, v in figures.items() if k not in books},
        "books": books,
        "exchange": published,
    }


def _events_verdict(plant: Plant, watchers: dict[str, EventsClient], staleness: list[float]
                    ) -> dict[str, Any]:  # fmt: skip
    """The events clients against the plant's events journal: the reader has all of it (by
    sha256); the conflated client ends with every symbol's last BBO and its trades' count and
    volume (trades and summaries), and was never staler than STALENESS_P99 at the 99th
    percentile; neither slow client missed a record unannounced."""
    journal = plant.channels[0].event_stream.journal
    total, blocks = (journal.blocks(1, len(journal)) if journal is not None and len(journal)
                     else (0, b""))  # fmt: skip
    sha = hashlib.sha256(ev.from_blocks(blocks).tobytes()).hexdigest()
    full = watchers.get("events")
    out: dict[str, Any] = {"records": total}
    for name, c in watchers.items():
        out[name] = {
            "records": c.records, "conflated": c.conflated, "skipped": c.skipped,
            "unannounced": c.unannounced,
            "identical": c.records == total and c.sha256.hexdigest() == sha,
            "last_bbo_identical": full is not None and c.quotes.bbo == full.quotes.bbo,
            "trades_identical": full is not None
            and bool((c.trade_count == full.trade_count).all())
            and bool((c.trade_volume == full.trade_volume).all()),
        }  # fmt: skip
    if "conflated" in out:
        ages = np.array(staleness or [0.0])
        out["conflated"]["staleness_seconds"] = {
            "samples": len(staleness), "p50": float(np.percentile(ages, 50)),
            "p99": float(np.percentile(ages, 99)), "max": float(ages.max())}  # fmt: skip
    conflated, skipper, reader = (out.get(n, {}) for n in ("conflated", "skipper", "events"))
    out["ok"] = bool(
        reader.get("identical", True)
        and conflated.get("last_bbo_identical", True)
        and conflated.get("trades_identical", True)
        and conflated.get("staleness_seconds", {}).get("p99", 0.0) <= STALENESS_P99
        and conflated.get("unannounced", 0) == 0
        and skipper.get("unannounced", 0) == 0
        and all(out[name]["identical"] for name in watchers if name.startswith("edge"))
    )
    return out


def print_summary(result: dict[str, Any], console: Console) -> None:
    feed = result["feed"]
    repaired = summed(feed["gaps_repaired"])
    ok = "[green]identical[/]"
    # Stopped early, a shortfall may be the stop's rather than a fault's: said so, not in red.
    stopped = result.get("stopped", False)
    bad = "[yellow]incomplete (stopped early)[/]" if stopped else "[bold red]NOT identical[/]"
    verdict = ok if result["identical"] else bad
    clients = "; ".join(
        f"{name} received {c['messages']:,}"
        + (f" over {c['reconnects'] + 1} connections" if c["reconnects"] else "")
        + f" {ok if c['identical'] else bad}"
        for name, c in result["clients"].items()
    )
    if stopped:
        console.print(f"stopped early: the verdict covers what the exchange published before the"
                      f" stop and what came in within {STOP_WAIT:g} s of it")  # fmt: skip
    published = result["published"]
    console.print(
        f"published {'?' if published is None else f'{published:,}'} messages,"
        f" delivered {result['delivered']:,}:"
        f" {verdict} (sha256 {str(result['delivered_sha256'])[:16]}...)\n"
        f"gaps seen {sum(feed['gaps_seen'].values()):,}: repaired by the other line"
        f" {repaired['line']:,}, by re-request {repaired['rerequest']:,},"
        f" by replay {repaired['replay']:,}; lost {sum(feed['gaps_lost'].values()):,}."
        f" Duplicates delivered: {result['duplicates_delivered']}.\n"
        f"itch stream: {clients}; slow consumers cut: {result['slow_consumers_cut']}."
    )
    events = result["events"]
    if events:
        full, conflated, skipper = (events.get(n, {}) for n in ("events", "conflated", "skipper"))
        console.print(
            f"events stream: {events['records']:,} records; reader received"
            f" {full.get('records', 0):,} {ok if full.get('identical') else bad};"
            f" conflated client {conflated.get('records', 0):,} records,"
            f" {conflated.get('conflated', 0):,} merged away, last BBOs"
            f" {ok if conflated.get('last_bbo_identical') else bad}, trades (count and"
            f" volume per symbol) {ok if conflated.get('trades_identical') else bad},"
            f" staleness {_staleness_text(conflated.get('staleness_seconds'))};"
            f" skipping client {skipper.get('records', 0):,} records,"
            f" {skipper.get('skipped', 0):,} skipped and told"
            f" ({skipper.get('unannounced', 0)} unannounced)."
        )
    edges = {n: c for n, c in (events or {}).items() if n.startswith("edge")}
    if edges:
        console.print("edges (over tier-2): " + "; ".join(
            f"{name}'s client received {c['records']:,} {ok if c['identical'] else bad}"
            for name, c in edges.items()) + ".")
    if result["verdict"]:
        console.print("[bold green]verdict: every check passed[/]")
    elif not stopped:
        console.print("[bold red]verdict: a check failed (above, in red)[/]")


def _staleness_text(ages: dict[str, float] | None) -> str:
    """p50 / p99 / max of the conflated client's staleness, the p99 judged."""
    if not ages:
        return "not measured"
    style = "green" if ages["p99"] <= STALENESS_P99 else "bold red"
    return (f"p50 {ages['p50'] * 1e3:.0f} ms, p99 [{style}]{ages['p99'] * 1e3:.0f} ms[/]"
            f" (<= {STALENESS_P99 * 1e3:.0f}), max {ages['max'] * 1e3:.0f} ms")
