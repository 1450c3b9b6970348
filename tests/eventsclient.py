"""An events client in a process of its own (run inside a host's namespace): reads a stream from
a number to its End of Session, or to a number, checking that each record comes once and in
order, appends the records to a file, and prints what it read as one JSON line.

    python tests/eventsclient.py HOST:PORT OUT [--first N] [--until N] [--session NAME]
        [--user NAME --password WORD]
"""

from __future__ import annotations

import argparse
import asyncio
import json

from tickerplant.client import Events, Lost, Reconnected, subscribe
from tickerplant.endpoint import Endpoint


async def read(args: argparse.Namespace) -> dict[str, int]:
    wanted, records, lost, reconnects = args.first, 0, 0, 0
    with open(args.out, "ab") as out:
        async for record in subscribe(Endpoint.parse(args.endpoint, "HOST:PORT"),
                                      first=args.first, session=args.session, events=True,
                                      username=args.user, password=args.password,
                                      retry=0.2):  # fmt: skip
            if isinstance(record, Events):
                numbers = record.records["sequence"].tolist()
                assert numbers == list(range(wanted, wanted + len(numbers))), (wanted, numbers[:3])
                out.write(record.records.tobytes())
                wanted += len(numbers)
                records += len(numbers)
                if args.until and wanted > args.until:
                    break
            elif isinstance(record, Lost):
                lost += 1
                wanted += 1
            elif isinstance(record, Reconnected):
                reconnects += 1
    return {"first": args.first, "next": wanted, "records": records, "lost": lost,
            "reconnects": reconnects}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("out")
    parser.add_argument("--first", type=int, default=1)
    parser.add_argument("--until", type=int, default=0)
    parser.add_argument("--session", default="")
    parser.add_argument("--user", default="")
    parser.add_argument("--password", default="")
    print(json.dumps(asyncio.run(read(parser.parse_args())), separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
