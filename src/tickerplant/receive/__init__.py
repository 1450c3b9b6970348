"""The receiving side's machines, sans-I/O: the feed session and what it composes."""
