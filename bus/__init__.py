"""Shared transport for every process of the stack.

* ``bus.message``: typed multipart messages (msgpack header + raw array buffers, validated on receipt).
* ``bus.transport``: ZeroMQ publish/subscribe and request/reply wrappers that count and drop bad input.
* ``bus.clock``: realtime and lockstep clocks behind one protocol, and a drift-free ``RateKeeper``.
* ``bus.curve`` / ``bus.keys``: optional CURVE encryption and client allow-lists for cross-host links, and the
  key files they read (``python -m bus.keys generate DIR``).

Import the submodules directly; this package re-exports nothing so that ``bus.clock`` stays free of
ZeroMQ.
"""
