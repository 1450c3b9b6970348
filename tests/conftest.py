from hypothesis import settings

# The first example of a property test may compile numba kernels; time is measured in bench/.
settings.register_profile("tickerplant", deadline=None)
settings.load_profile("tickerplant")
