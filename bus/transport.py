"""ZeroMQ transport: publish/subscribe for streams, request/reply for lockstep ticks.

Every socket here speaks ``bus.message`` frames and validates what it receives: a malformed message is
counted in ``rejects`` (per ``MessageError.kind``), logged once per kind and dropped, so one bad sender
cannot crash a node. Addresses come from configuration; the helpers below only build loopback/IPC ones.

Latest-value-only subscribers: ``ZMQ_CONFLATE`` keeps only the last *frame* and breaks multipart
messages, and a tiny receive high-water mark is no substitute because ZeroMQ drops the *newest* messages
when a queue is full (a reader would get the stale ones). So a latest-only ``Subscriber`` keeps the normal
bounded queue (``hwm``) and, on each ``recv``, drains everything queued without blocking, validates it and
returns the newest valid message. The cost is decoding messages it then drops (a few microseconds each).

Hostile bytes: decoding raises nothing but ``MessageError`` (``bus.message``), which every receive path here
counts and drops. Before that, on every socket that binds (the ones any peer can reach: command and operator
sockets, tick servers, chunk sockets, a recorder's subscriber), libzmq itself refuses absurd frames:
``ZMQ_MAXMSGSIZE`` is set (``recv_frame_limit``), so a 10 MB frame sent to a 64 KiB command socket is never
buffered. libzmq applies that option to each frame of a multipart message on its own (its decoder checks each
frame's announced size before reading it; the total is not limited: a message may hold 2 + ``MAX_BUFFERS``
frames of that size, and at most ``hwm`` messages queue), and answers an oversized frame by dropping that
peer's connection: nothing of the message is delivered or counted, the peer (the connecting side) reconnects by
itself, other peers never notice. The limit leaves ``MAX_HEADER_BYTES`` of room above ``max_frame_bytes``, so a
sender a little over the limit is still heard, counted as a "size" reject and logged instead of cut off.
Connecting sockets do not set it: libzmq treats an oversized frame as a protocol error and a *connecting*
socket that sees one ends that connection for good, without reconnecting (libzmq 4.3.5, measured), so one bad
frame from the endpoint it was configured to read would silence it for the rest of the run. Those sockets
receive such a frame whole and count it as a "size" reject instead.

Security: binding to anything but loopback, IPC or in-process addresses needs ``allow_remote=True``. For
cross-host links pass ``curve=`` (``bus.curve.CurveServer`` on the binding side, ``CurveClient`` on the
connecting side, keys from ``python -m bus.keys generate``): traffic is then encrypted and only allowed client
keys get in. CURVE is off by default; loopback runs do not need it.
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
import zmq.backend

from bus.clock import Clock
from bus.curve import Curve, apply
from bus.message import (
    DEFAULT_MAX_FRAME_BYTES,
    MAX_HEADER_BYTES,
    Message,
    MessageError,
    MetaValue,
    decode_header,
    encode,
)

log = logging.getLogger(__name__)

_E = TypeVar("_E", bound="_Endpoint")

LOOPBACK_HOST = "127.0.0.1"
DEFAULT_HWM = 1000

# The hot path calls pyzmq's compiled socket methods with plain-int flags: the Python layer above them
# (``send_multipart``/``recv_multipart``) builds an enum per flag and a Frame per part, which cost more than
# the whole message codec for tactile-sized messages (measured: benchmarks/bus_latency.py).
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_get = zmq.backend.Socket.get
_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
# Array frames at least this large are received zero-copy (a zmq.Frame, ~0.5 us whatever the size); smaller ones
# are copied into bytes, which is cheaper up to a few KiB (measured: 0.4 us at 1 KiB, 2.5 us at 54 KiB).
ZERO_COPY_RECV_BYTES = 4096


def recv_frame_limit(max_frame_bytes: int) -> int:
    """``ZMQ_MAXMSGSIZE`` for a binding socket that accepts frames of ``max_frame_bytes``: libzmq drops the
    connection of a peer sending any one frame larger than this (per frame, not per multipart message; see the
    module docstring). ``MAX_HEADER_BYTES`` of room: a frame a little over the limit still arrives and is counted."""
    return max(max_frame_bytes, 0) + MAX_HEADER_BYTES


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
    """One socket with LINGER 0, ``ZMQ_MAXMSGSIZE`` when it binds, reject bookkeeping and context-manager close."""

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
        curve: Curve | None = None,
        recv_limit: int | None = None,
    ) -> None:
        if bind and not allow_remote and not is_local_address(address):
            raise ValueError(
                f"refusing to bind {address!r}: not loopback/ipc; pass allow_remote=True "
                "(and curve=CurveServer(...) to encrypt it and admit only known clients)"
            )
        self.max_frame_bytes = max_frame_bytes
        self.rejects: Counter[str] = Counter()
        self.received = 0
        self._logged_kinds: set[str] = set()
        self._sock = (ctx or zmq.Context.instance()).socket(socket_type)
        self._curve = None
        try:
            self._sock.setsockopt(zmq.LINGER, 0)
            if bind:  # before bind: libzmq copies options into each connection as it is made (module docstring)
                limit = recv_frame_limit(max_frame_bytes) if recv_limit is None else recv_limit
                self._sock.setsockopt(zmq.MAXMSGSIZE, limit)
            for opt, value in (options or {}).items():
                self._sock.setsockopt(opt, value)
            self._curve = apply(self._sock, curve)
            if bind:
                self._sock.bind(address)
            else:
                self._sock.connect(address)
        except BaseException:
            self._sock.close(linger=0)
            if self._curve is not None:
                self._curve.release()
            raise
        self.curve = curve
        self.address: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT) if bind else address
        self._copy_threshold: int = self._sock.copy_threshold
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
        self._curve.release()

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

    def _send_frames(self, frames: list, flags: int = 0, copy: bool = True) -> None:
        """One multipart message. Frames under the copy threshold are always copied (cheaper than
        pinning them); larger arrays go zero-copy unless ``copy``. Raises ``zmq.Again`` like ``send``."""
        sock, threshold = self._sock, self._copy_threshold
        last = len(frames) - 1
        more = flags | _SNDMORE
        for i, frame in enumerate(frames):
            small = type(frame) is bytes or frame.nbytes < threshold
            _send(sock, frame, more if i < last else flags, copy or small)

    def _readable(self) -> bool:
        """Something is queued to read (cheaper than a NOBLOCK receive that raises ``zmq.Again``)."""
        return bool(_get(self._sock, _EVENTS) & _POLLIN)

    def _recv_head(self, flags: int, count: int) -> tuple[list[bytes], bool]:
        """The first ``count`` frames of the next message (routing ids, topic, header: copied, small) and
        whether more frames follow. Raises ``zmq.Again`` when nothing is queued and ``flags`` has NOBLOCK."""
        sock = self._sock
        head = [_recv(sock, flags, True)]
        more = _get(sock, _RCVMORE)
        while more and len(head) < count:
            head.append(_recv(sock, 0, True))
            more = _get(sock, _RCVMORE)
        return head, bool(more)

    def _recv_body(self, head: list[bytes], more: bool, source: str) -> Message | None:
        """Validate ``head`` = [topic, header] and receive the array frames it announces.

        Each array frame is received the cheapest way for its announced size: copied into ``bytes`` when
        small, as a zero-copy ``zmq.Frame`` from ``ZERO_COPY_RECV_BYTES`` up. A malformed message is consumed
        to its last frame, counted in ``rejects``, logged once per kind and dropped (None).
        """
        sock, limit = self._sock, self.max_frame_bytes
        try:
            if len(head) < 2:
                raise MessageError("frames", f"{len(head)} frame(s), expected topic + header + buffers")
            for i, frame in enumerate(head):
                if len(frame) > limit:
                    raise MessageError("size", f"frame {i} is {len(frame)} bytes, limit {limit}")
            header = decode_header(head[0], head[1], max_frame_bytes=limit)
            buffers = []
            for spec in header.buffers:
                if not more:
                    raise MessageError(
                        "frames", f"{len(buffers) + 2} frames but header lists {len(header.buffers)} buffers"
                    )
                frame = _recv(sock, 0, spec.nbytes < ZERO_COPY_RECV_BYTES)
                more = _get(sock, _RCVMORE)
                if len(frame) > limit:
                    raise MessageError("size", f"frame {len(buffers) + 2} is {len(frame)} bytes, limit {limit}")
                buffers.append(frame)
            if more:
                raise MessageError("frames", f"more frames than the {len(header.buffers)} buffers the header lists")
            msg = header.message(buffers)
        except MessageError as error:
            self._skip_rest(more)
            self._reject(error, source)
            return None
        self.received += 1
        return msg

    def _skip_rest(self, more: bool) -> None:
        """Consume the remaining frames of a message being dropped (zero-copy: they are never read)."""
        sock = self._sock
        while more:
            _recv(sock, 0, False)
            more = _get(sock, _RCVMORE)


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
        curve: ``bus.curve.CurveServer`` (binding side) or ``CurveClient`` (connecting side) to encrypt and
            authenticate the link; None (default) leaves it plain.
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
        curve: Curve | None = None,
    ) -> None:
        super().__init__(
            zmq.XPUB, address, bind=bind, allow_remote=allow_remote, max_frame_bytes=max_frame_bytes,
            ctx=ctx, options={zmq.SNDHWM: hwm, zmq.XPUB_VERBOSE: 1}, curve=curve,
            recv_limit=MAX_HEADER_BYTES,  # it only ever receives subscriptions (a topic prefix of <= 255 bytes)
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
        self._send_frames(encode(msg, max_frame_bytes=self.max_frame_bytes), 0, self.copy)
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
        curve: ``bus.curve.CurveClient`` (connecting) or ``CurveServer`` (binding); None: plain.

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
        curve: Curve | None = None,
    ) -> None:
        super().__init__(
            zmq.SUB, address, bind=bind, allow_remote=allow_remote, max_frame_bytes=max_frame_bytes,
            ctx=ctx, options={zmq.RCVHWM: hwm}, curve=curve,
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
        if timeout is None and not self.conflate:
            while True:  # block inside libzmq: no poll round trip per message
                msg = self._recv_body(*self._recv_head(0, 2), "subscriber")
                if msg is not None:
                    self.latest[msg.topic] = msg
                    return msg
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
        while self._readable():
            try:
                head, more = self._recv_head(_NOBLOCK, 2)
            except zmq.Again:
                return None
            msg = self._recv_body(head, more, "subscriber")
            if msg is not None:
                self.latest[msg.topic] = msg
                return msg
        return None

    def _drain_newest(self) -> Message | None:
        newest = None
        for _ in range(self._max_drain):  # bounded: a faster publisher must not trap us here
            if not self._readable():
                break
            try:
                head, more = self._recv_head(_NOBLOCK, 2)
            except zmq.Again:
                break
            msg = self._recv_body(head, more, "subscriber")
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
    """Answers requests (e.g. lockstep ticks) from any number of ``Client``s; ROUTER socket, binds.

    ``curve=CurveServer(...)`` encrypts the link and admits only the allowed client keys.
    """

    def __init__(
        self,
        address: str,
        *,
        bind: bool = True,
        clock: Clock | None = None,
        allow_remote: bool = False,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        ctx: zmq.Context | None = None,
        curve: Curve | None = None,
    ) -> None:
        super().__init__(
            zmq.ROUTER, address, bind=bind, allow_remote=allow_remote, max_frame_bytes=max_frame_bytes,
            ctx=ctx, curve=curve,
        )
        self._sequencer = _Sequencer(clock)

    def recv(self, timeout: float | None = None) -> Request | None:
        """Next valid request, waiting up to ``timeout`` s (None: forever); None on timeout."""
        deadline = _deadline(timeout)
        while True:
            try:
                head, more = self._recv_head(_NOBLOCK, 4)
            except zmq.Again:
                if not self._wait(deadline):
                    return None
                continue
            if len(head) < 2 or len(head[1]) != _REQUEST_ID.size:
                self._skip_rest(more)
                self._reject(MessageError("frames", "request lacks its 8-byte request id frame"), "server")
                continue
            msg = self._recv_body(head[2:], more, "server")
            if msg is not None:
                return Request(msg, peer=head[0], request_id=head[1])

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
        self._send_frames([request.peer, request.request_id, *frames], 0, False)
        self._sequencer.sent(msg)
        return msg


class Client(_Endpoint):
    """Sends requests to a ``Server`` and waits for replies with a timeout; DEALER socket, connects.

    One request in flight at a time (``send`` then ``recv``, or ``request``); a coordinator that ticks
    N nodes in parallel holds N clients, sends to all, then collects. Unlike REQ, a DEALER survives a
    timed-out request; a late reply to it is counted as ``rejects["stale"]`` and dropped.
    ``curve=CurveClient(...)`` for a server that runs CURVE.
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
        curve: Curve | None = None,
    ) -> None:
        super().__init__(
            zmq.DEALER, address, bind=bind, allow_remote=allow_remote, max_frame_bytes=max_frame_bytes,
            ctx=ctx, curve=curve,
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
            self._send_frames([self._pending, *frames], _NOBLOCK, False)
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
                head, more = self._recv_head(_NOBLOCK, 3)
            except zmq.Again:
                if not self._wait(deadline):
                    raise TimeoutError(
                        f"no reply from {self.address} within {timeout:.3f} s"
                    ) from None
                continue
            if head[0] != self._pending:
                self._skip_rest(more)
                self._reject(MessageError("stale", "reply to an earlier or unknown request"), "client")
                continue
            msg = self._recv_body(head[1:], more, "client")
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
    "recv_frame_limit",
]
