"""The distribution side's machines, sans-I/O: the streams' journals and the fan-out."""
