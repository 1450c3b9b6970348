"""Where the exchange and the plant meet unless told otherwise: one place for every command."""

from tickerplant.endpoint import Endpoint

LINE_A = Endpoint("239.192.77.1", 31001)
LINE_B = Endpoint("239.192.77.2", 31002)
REREQUEST = Endpoint("127.0.0.1", 31003)
REPLAY = Endpoint("127.0.0.1", 31004)
