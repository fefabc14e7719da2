"""ZeroMQ transport: publish/subscribe for streams, request/reply for lockstep ticks.

Every socket here speaks ``bus.message`` frames and validates what it receives: a malformed message is
counted in ``rejects`` (per ``MessageError.kind``), logged once per kind and dropped, so one bad sender
cannot crash a node. Addresses come from configuration; the helpers below only build loopback/IPC ones.

Latest-value-only subscribers: ``ZMQ_CONFLATE`` keeps only the last *frame* and breaks multipart
messages, and a tiny receive high-water mark is no substitute because ZeroMQ drops the *newest* messages
when a queue is full (a reader would get the stale ones). So a latest-only ``Subscriber`` keeps the normal
bounded queue (``hwm``) and, on each ``recv``, drains everything queued without blocking, validates it and
returns the newest valid message. The cost is decoding messages it then drops (a few microseconds each).

Security: binding to anything but loopback, IPC or in-process addresses needs ``allow_remote=True``.
TODO: CURVE keys (``curve_secretkey``/``curve_server`` on the binding side, ``curve_serverkey`` on the
connecting side) for cross-host runs, as DESIGN.md asks; not wired yet.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import struct
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import zmq

from bus.clock import Clock
from bus.message import DEFAULT_MAX_FRAME_BYTES, Message, MessageError, MetaValue, decode, encode

log = logging.getLogger(__name__)

_E = TypeVar("_E", bound="_Endpoint")

LOOPBACK_HOST = "127.0.0.1"
DEFAULT_HWM = 1000


def loopback_address(port: int | None = None) -> str:
    """``tcp://127.0.0.1:PORT``; without a port, ``tcp://127.0.0.1:*`` (the OS picks a free port at bind).

    The wildcard form avoids the race of probing for a free port and binding later; read the real
    endpoint from ``.address`` after binding.
    """
    if port is None:
        return f"tcp://{LOOPBACK_HOST}:*"
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range 1..65535")
    return f"tcp://{LOOPBACK_HOST}:{port}"


def ipc_address(name: str, directory: str | None = None) -> str:
    """``ipc://<dir>/<name>.sock`` in a private per-user folder (created, mode 0700).

    IPC skips the TCP stack on one host. Socket paths are limited to ~107 bytes, so keep names short.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise ValueError(f"ipc name {name!r} must be 1-64 chars of [A-Za-z0-9_.-]")
    if directory is None:
        directory = os.path.join(tempfile.gettempdir(), f"slowfast-bus-{os.getuid()}")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, f"{name}.sock")
    if len(path.encode()) > 100:
        raise ValueError(f"ipc path {path!r} is too long for a unix socket (max ~100 bytes)")
    return f"ipc://{path}"


def bind_to_random_port(socket: zmq.Socket, host: str = LOOPBACK_HOST) -> str:
    """Bind ``socket`` to a free TCP port on ``host``; returns the full endpoint."""
    port = socket.bind_to_random_port(f"tcp://{host}")
    return f"tcp://{host}:{port}"


def is_local_address(address: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback host."""
    scheme, _, rest = address.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a hostname: may be reachable from outside


class _Endpoint:
    """One socket with LINGER 0, reject bookkeeping and context-manager close."""

    def __init__(
        self,
        socket_type: int,
        address: str,
        *,
        bind: bool,
        allow_remote: bool,
        max_frame_bytes: int,
        ctx: zmq.Context | None,
        options: Mapping[int, int] | None = None,
    ) -> None:
        if bind and not allow_remote and not is_local_address(address):
            raise ValueError(
                f"refusing to bind {address!r}: not loopback/ipc; pass allow_remote=True "
                "(and protect it, CURVE is not wired yet)"
            )
        self.max_frame_bytes = max_frame_bytes
        self.rejects: Counter[str] = Counter()
        self.received = 0
        self._logged_kinds: set[str] = set()
        self._sock = (ctx or zmq.Context.instance()).socket(socket_type)
        try:
            self._sock.setsockopt(zmq.LINGER, 0)
            for opt, value in (options or {}).items():
                self._sock.setsockopt(opt, value)
            if bind:
                self._sock.bind(address)
            else:
                self._sock.connect(address)
        except zmq.ZMQError:
            self._sock.close(linger=0)
            raise
        self.address: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT) if bind else address
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)

    @property
    def socket(self) -> zmq.Socket:
        """The underlying socket, for options not wrapped here (e.g. benchmarks, monitors)."""
        return self._sock

    @property
    def closed(self) -> bool:
        return self._sock.closed

    def close(self) -> None:
        """Close the socket now, dropping anything unsent (LINGER 0)."""
        if not self._sock.closed:
            self._sock.close(linger=0)

    def __enter__(self: _E) -> _E:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wait(self, deadline: float | None) -> bool:
        """Block until the socket is readable or ``deadline`` (monotonic) passes."""
        if deadline is None:
            return bool(self._poller.poll())
        remaining_ms = max(0, int((deadline - time.monotonic()) * 1000.0 + 0.999))
        return bool(self._poller.poll(remaining_ms))

    def _reject(self, error: MessageError, source: str) -> None:
        self.rejects[error.kind] += 1
        if error.kind not in self._logged_kinds:
            self._logged_kinds.add(error.kind)
            log.warning(
                "%s on %s dropped an invalid message (%s); further %r rejects are only counted",
                source, self.address, error, error.kind,
            )

    def _decode(self, frames: list[zmq.Frame], source: str) -> Message | None:
        try:
            msg = decode(frames, max_frame_bytes=self.max_frame_bytes)
        except MessageError as error:
            self._reject(error, source)
            return None
        self.received += 1
        return msg


class _Sequencer:
    """Per-topic sequence numbers and stamps for outgoing messages.

    A number is used up only by ``sent``, so a message refused by ``encode`` leaves no gap that
    receivers would read as a drop.
    """

    def __init__(self, clock: Clock | None) -> None:
        self._now = clock.now if clock is not None else time.monotonic
        self._seq: dict[str, int] = {}

    def make(
        self,
        topic: str,
        arrays: Mapping[str, np.ndarray] | None,
        meta: Mapping[str, MetaValue] | None,
        stamp: float | None,
    ) -> Message:
        return Message(
            topic=topic,
            stamp=self._now() if stamp is None else stamp,
            seq=self._seq.get(topic, 0),
            arrays=dict(arrays) if arrays else {},
            meta=dict(meta) if meta else {},
        )

    def sent(self, msg: Message) -> None:
        self._seq[msg.topic] = msg.seq + 1


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + max(0.0, timeout)


class Publisher(_Endpoint):
    """Publishes messages on topics; binds by default (the data owner binds, readers connect).

    An XPUB socket underneath lets ``wait_for_subscriber`` see subscriptions arrive, which removes the
    "slow joiner" sleep from tests and start-up code. Messages to a subscriber whose queue holds ``hwm``
    messages are dropped (PUB never blocks the control loop).

    Args:
        address: endpoint to bind (or connect, with ``bind=False``), e.g. ``loopback_address()``.
        topic_prefix: prepended to every topic, e.g. ``"left/"`` for a second robot.
        clock: stamps messages by default; ``time.monotonic`` when None.
        copy: send array buffers by copy. Default False: buffers over pyzmq's copy threshold (64 KiB) go
            zero-copy, so an array must not be written while it is still queued; set True if you reuse them.
    """

    def __init__(
        self,
        address: str,
        topic_prefix: str = "",
        *,
        bind: bool = True,
        hwm: int = DEFAULT_HWM,
        clock: Clock | None = None,
        copy: bool = False,
        allow_remote: bool = False,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        ctx: zmq.Context | None = None,
    ) -> None:
        super().__init__(
            zmq.XPUB, address, bind=bind, allow_remote=allow_remote, max_frame_bytes=max_frame_bytes,
            ctx=ctx, options={zmq.SNDHWM: hwm, zmq.XPUB_VERBOSE: 1},
        )
        self.topic_prefix = topic_prefix
        self.copy = copy
        self.sent = 0
        self._sequencer = _Sequencer(clock)
        self._subscriptions: Counter[bytes] = Counter()

    def publish(
        self,
        topic: str,
        arrays: Mapping[str, np.ndarray] | None = None,
        meta: Mapping[str, MetaValue] | None = None,
        stamp: float | None = None,
    ) -> Message:
        """Stamp (clock now unless given), number and send one message; returns what was sent."""
        msg = self._sequencer.make(self.topic_prefix + topic, arrays, meta, stamp)
        self._sock.send_multipart(encode(msg, max_frame_bytes=self.max_frame_bytes), copy=self.copy)
        self._sequencer.sent(msg)
        self.sent += 1
        return msg

    def wait_for_subscriber(self, topic: str = "", timeout: float | None = 5.0) -> bool:
        """Block until a subscription that receives ``topic`` (after the prefix) exists.

        Returns False on timeout. Subscriptions are counted per connection, so this works for the
        second subscriber to the same topic too. Subscription events queue up (a few bytes each) until
        this is called; publishing never reads them.
        """
        wanted = (self.topic_prefix + topic).encode()
        deadline = _deadline(timeout)
        while True:
            while self._sock.poll(0, zmq.POLLIN):
                event = self._sock.recv()
                if event[:1] == b"\x01":
                    self._subscriptions[event[1:]] += 1
                elif event[:1] == b"\x00" and self._subscriptions[event[1:]] > 0:
                    self._subscriptions[event[1:]] -= 1
            if any(n > 0 and wanted.startswith(prefix) for prefix, n in self._subscriptions.items()):
                return True
            if not self._wait(deadline):
                return False


class Subscriber(_Endpoint):
    """Receives, validates and (optionally) conflates messages; never raises on bad input.

    Args:
        address: endpoint to connect (or bind, with ``bind=True``, e.g. a recorder many nodes publish to).
        topics: topic *prefixes* to receive (ZeroMQ prefix matching: ``"tact"`` also gets ``"tactile"``);
            ``("",)`` receives everything.
        conflate: latest-value-only mode: ``recv`` drains the queue and returns the newest valid message.
        hwm: receive queue bound in messages; beyond it ZeroMQ drops new messages for this subscriber.

    ``latest`` holds the newest valid message per topic seen so far (handy for multi-topic conflation).
    A *binding* subscriber passes its subscriptions to publishers that connect later only while it is
    being used (``recv``/``drain``), a libzmq quirk: publishers lose messages until it is first polled.
    """

    def __init__(
        self,
        address: str,
        topics: Iterable[str] = ("",),
        *,
        conflate: bool = False,
        hwm: int = DEFAULT_HWM,
        bind: bool = False,
        allow_remote: bool = False,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        ctx: zmq.Context | None = None,
    ) -> None:
        super().__init__(
            zmq.SUB, address, bind=bind, allow_remote=allow_remote, max_frame_bytes=max_frame_bytes,
            ctx=ctx, options={zmq.RCVHWM: hwm},
        )
        self.conflate = conflate
        self._max_drain = max(1, hwm) * 2
        self.latest: dict[str, Message] = {}
        self.topics = tuple(topics)
        for topic in self.topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode())

    def recv(self, timeout: float | None = None) -> Message | None:
        """Next valid message (newest, in conflate mode), waiting up to ``timeout`` s; None on timeout.

        ``timeout=None`` waits forever, ``0`` only looks at what has arrived.
        """
        deadline = _deadline(timeout)
        while True:
            msg = self._drain_newest() if self.conflate else self._next_valid()
            if msg is not None:
                return msg
            if not self._wait(deadline):
                return None

    def drain(self) -> int:
        """Receive everything queued without blocking into ``latest``; returns how many were valid."""
        before = self.received
        self._drain_newest()
        return self.received - before

    def _next_valid(self) -> Message | None:
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return None
            msg = self._decode(frames, "subscriber")
            if msg is not None:
                self.latest[msg.topic] = msg
                return msg

    def _drain_newest(self) -> Message | None:
        newest = None
        for _ in range(self._max_drain):  # bounded: a faster publisher must not trap us here
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            msg = self._decode(frames, "subscriber")
            if msg is not None:
                self.latest[msg.topic] = msg
                newest = msg
        return newest


# Request/reply envelope: [request id (8 bytes, big-endian u64), *message frames]; ROUTER prepends
# the peer identity. The id lets a client drop late replies to a request it already gave up on.
_REQUEST_ID = struct.Struct(">Q")


@dataclass(frozen=True, slots=True)
class Request:
    """A validated request and the routing needed to answer it."""

    message: Message
    peer: bytes
    request_id: bytes


class Server(_Endpoint):
    """Answers requests (e.g. lockstep ticks) from any number of ``Client``s; ROUTER socket, binds."""

    def __init__(
        self,
        address: str,
        *,
        bind: bool = True,
        clock: Clock | None = None,
        allow_remote: bool = False,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        ctx: zmq.Context | None = None,
    ) -> None:
        super().__init__(
            zmq.ROUTER, address, bind=bind, allow_remote=allow_remote, max_frame_bytes=max_frame_bytes,
            ctx=ctx,
        )
        self._sequencer = _Sequencer(clock)

    def recv(self, timeout: float | None = None) -> Request | None:
        """Next valid request, waiting up to ``timeout`` s (None: forever); None on timeout."""
        deadline = _deadline(timeout)
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                if not self._wait(deadline):
                    return None
                continue
            if len(frames) < 2 or len(frames[1]) != _REQUEST_ID.size:
                self._reject(MessageError("frames", "request lacks its 8-byte request id frame"), "server")
                continue
            msg = self._decode(frames[2:], "server")
            if msg is not None:
                return Request(msg, peer=frames[0].bytes, request_id=frames[1].bytes)

    def reply(
        self,
        request: Request,
        topic: str,
        arrays: Mapping[str, np.ndarray] | None = None,
        meta: Mapping[str, MetaValue] | None = None,
        stamp: float | None = None,
    ) -> Message:
        """Answer ``request``; a reply to a client that has gone away is dropped by ZeroMQ."""
        msg = self._sequencer.make(topic, arrays, meta, stamp)
        frames = encode(msg, max_frame_bytes=self.max_frame_bytes)
        self._sock.send_multipart([request.peer, request.request_id, *frames], copy=False)
        self._sequencer.sent(msg)
        return msg


class Client(_Endpoint):
    """Sends requests to a ``Server`` and waits for replies with a timeout; DEALER socket, connects.

    One request in flight at a time (``send`` then ``recv``, or ``request``); a coordinator that ticks
    N nodes in parallel holds N clients, sends to all, then collects. Unlike REQ, a DEALER survives a
    timed-out request; a late reply to it is counted as ``rejects["stale"]`` and dropped.
    """

    def __init__(
        self,
        address: str,
        *,
        bind: bool = False,
        clock: Clock | None = None,
        allow_remote: bool = False,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        ctx: zmq.Context | None = None,
    ) -> None:
        super().__init__(
            zmq.DEALER, address, bind=bind, allow_remote=allow_remote, max_frame_bytes=max_frame_bytes,
            ctx=ctx,
        )
        self._sequencer = _Sequencer(clock)
        self._next_id = 0
        self._pending: bytes | None = None

    def send(
        self,
        topic: str,
        arrays: Mapping[str, np.ndarray] | None = None,
        meta: Mapping[str, MetaValue] | None = None,
        stamp: float | None = None,
    ) -> Message:
        """Send a request without waiting; a previous unanswered request is abandoned.

        Raises ``TimeoutError`` when the outgoing queue is full (server gone for long), never blocks.
        """
        msg = self._sequencer.make(topic, arrays, meta, stamp)
        frames = encode(msg, max_frame_bytes=self.max_frame_bytes)
        self._pending = _REQUEST_ID.pack(self._next_id)
        self._next_id += 1
        try:
            self._sock.send_multipart([self._pending, *frames], zmq.NOBLOCK, copy=False)
        except zmq.Again:
            raise TimeoutError(f"send queue to {self.address} is full; is the server alive?") from None
        self._sequencer.sent(msg)
        return msg

    def recv(self, timeout: float = 1.0) -> Message:
        """The reply to the last ``send``; raises ``TimeoutError`` if none arrives in ``timeout`` s."""
        if self._pending is None:
            raise RuntimeError("Client.recv without a request in flight; call send first")
        deadline = _deadline(timeout)
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                if not self._wait(deadline):
                    raise TimeoutError(
                        f"no reply from {self.address} within {timeout:.3f} s"
                    ) from None
                continue
            if not frames or frames[0].bytes != self._pending:
                self._reject(MessageError("stale", "reply to an earlier or unknown request"), "client")
                continue
            msg = self._decode(frames[1:], "client")
            if msg is not None:
                self._pending = None
                return msg

    def request(
        self,
        topic: str,
        arrays: Mapping[str, np.ndarray] | None = None,
        meta: Mapping[str, MetaValue] | None = None,
        timeout: float = 1.0,
        stamp: float | None = None,
    ) -> Message:
        """``send`` then ``recv``: one lockstep round trip."""
        self.send(topic, arrays, meta, stamp)
        return self.recv(timeout)


__all__ = [
    "Client",
    "Publisher",
    "Request",
    "Server",
    "Subscriber",
    "bind_to_random_port",
    "ipc_address",
    "is_local_address",
    "loopback_address",
]
