"""Recorded episodes: the on-disk format, durable I/O, the episode recorder, verify/recover, training-set build,
LeRobot v3 import/export, and the features computed from raw streams at load time (shared with the runtime)."""
