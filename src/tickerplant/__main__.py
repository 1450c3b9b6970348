"""``python -m tickerplant`` is the ``tickerplant`` command."""

from tickerplant.cli import main

raise SystemExit(main())
