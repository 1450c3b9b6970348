"""tickerplant: a market-data ticker plant."""
