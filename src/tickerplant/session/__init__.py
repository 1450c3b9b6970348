"""Protocol sessions as machines, sans-I/O: SoupBinTCP's client and server (``soupbin.py``)."""
