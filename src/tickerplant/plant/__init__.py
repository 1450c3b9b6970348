"""``tickerplant run``: a whole plant in one process (:mod:`.core`), its settings
(:mod:`.config`) and its live books (:mod:`.books`)."""

from tickerplant.plant.config import EventsConfig, GlimpseConfig, PlantConfig, StreamConfig
from tickerplant.plant.core import Plant

__all__ = ["EventsConfig", "GlimpseConfig", "Plant", "PlantConfig", "StreamConfig"]
