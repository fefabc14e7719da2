"""Property tests of message decoding on hostile input: whatever the bytes, ``decode`` (and ``decode_header`` +
``Header.message``, and every receiving socket) either returns a message that matches its header or raises
``MessageError`` with a kind in ``REJECT_KINDS``. Nothing else may come out: a receiving node counts and drops
that error, any other exception ends the node."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bus import message
from bus.message import (
    ALLOWED_DTYPES,
    MAX_DIM,
    REJECT_KINDS,
    SCHEMA_VERSION,
    Message,
    MessageError,
    decode,
    decode_header,
    encode,
)
from bus.transport import Client, Publisher, Server, Subscriber, bind_to_random_port, recv_frame_limit

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TIMEOUT = 5.0

# ------------------------------------------------------------------------------------------------ strategies
# msgpack holds ints in [-2**63, 2**64 - 1]; the edges and the numbers that break products are the interesting ones.
EDGE_INTS = [0, 1, 2, 7, 255, 256, 2**31 - 1, 2**31, 2**32 - 1, 2**32, MAX_DIM, MAX_DIM + 1, 2**62, 2**63 - 1, 2**63,
             2**64 - 1, -1, -(2**31), -(2**63)]
ints = st.one_of(st.sampled_from(EDGE_INTS), st.integers(-(2**63), 2**64 - 1), st.integers(-3, 40))
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(), st.text(max_size=12))
nested = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                          max_size=3), max_leaves=8)
dims = st.one_of(st.sampled_from(EDGE_INTS), st.integers(0, 6), st.just(0))
hostile_dims = st.one_of(dims, st.booleans(), st.floats(0, 4), st.none(), st.text(max_size=2))
dtypes = st.one_of(st.sampled_from(sorted(ALLOWED_DTYPES)), st.sampled_from([">f4", "|O", "<c8", "f4", "<U3", "|V8"]),
                   ints, st.none())
names = st.one_of(st.sampled_from(["a", "b", "target"]), st.text(max_size=6), ints)
shapes = st.one_of(st.lists(dims, max_size=5), st.lists(st.integers(0, 4), max_size=3),
                   st.lists(hostile_dims, max_size=4), hostile_dims)
# Zero-byte shapes whose dims' product overflows: the kind of shape that once reached np.ndarray and killed a node.
overflowing = st.lists(st.sampled_from([3, 2**31, 2**32, 2**62, 2**63, 2**64 - 1]), min_size=1, max_size=3).flatmap(
    lambda big: st.permutations([0, *big]))
buf_specs = st.one_of(
    st.fixed_dictionaries({"name": st.sampled_from(["a", "b", "target"]), "dtype": st.sampled_from(["<f8", "|u1"]),
                           "shape": st.one_of(st.lists(dims, max_size=4), overflowing)}),  # valid but for the dims
    st.fixed_dictionaries({"name": names, "dtype": dtypes, "shape": shapes}),
    st.dictionaries(st.sampled_from(["name", "dtype", "shape", "x"]), nested, max_size=4),
    nested,
)
meta_values = st.one_of(scalars, st.sampled_from(EDGE_INTS), nested, st.binary(max_size=0))
HOSTILE_FIELDS = {
    "v": nested,
    "topic": st.one_of(st.text(max_size=8), nested),
    "t": st.one_of(st.floats(), ints, nested),
    "seq": st.one_of(ints, st.booleans(), st.floats()),
    "bufs": st.one_of(st.lists(buf_specs, max_size=4), nested),
    "meta": st.one_of(st.dictionaries(st.text(max_size=8), meta_values, max_size=6), nested),
}


@st.composite
def hostile_headers(draw: st.DrawFn) -> dict:
    """A valid header with a few fields replaced by hostile values, keys sometimes dropped or added: most
    inputs then get past the early checks and reach the deep ones (shapes, meta values)."""
    header = {"v": SCHEMA_VERSION, "topic": "cmd", "t": 1.5, "seq": draw(st.integers(0, 2**64 - 1)),
              "bufs": draw(st.lists(buf_specs, max_size=3)),
              "meta": draw(st.dictionaries(st.text(max_size=8), st.one_of(scalars, st.sampled_from(EDGE_INTS)),
                                           max_size=4))}
    if not _one_in_ten(draw):  # distinct names, except now and then
        for i, spec in enumerate(header["bufs"]):
            if isinstance(spec, dict) and isinstance(spec.get("name"), str):
                spec["name"] = f"{spec['name']}{i}"
    for key in draw(st.lists(st.sampled_from(sorted(HOSTILE_FIELDS)), max_size=2, unique=True)):
        header[key] = draw(HOSTILE_FIELDS[key])
    if _one_in_ten(draw):
        header.pop(draw(st.sampled_from(sorted(header))))
    if _one_in_ten(draw):
        header.update(draw(st.dictionaries(st.text(max_size=5), scalars, min_size=1, max_size=2)))
    return header


def _one_in_ten(draw: st.DrawFn) -> bool:
    """True about once in ten draws (a middle value: hypothesis favours the ends of a range)."""
    return draw(st.integers(0, 9)) == 4


def _declared_bytes(spec: object) -> int | None:
    """Bytes a spec announces when that is small enough to send (so hostile headers get matching frames)."""
    if not isinstance(spec, dict):
        return None
    shape, dtype = spec.get("shape"), spec.get("dtype")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
            and isinstance(dtype, str) and dtype in ALLOWED_DTYPES):
        return None  # (math.prod of a str and an int would build that string)
    n = math.prod(shape) * np.dtype(dtype).itemsize
    return n if n <= 4096 else None


@st.composite
def hostile_messages(draw: st.DrawFn) -> list[bytes]:
    header = draw(hostile_headers())
    packed = msgpack.packb(header, use_bin_type=True)
    topic = header.get("topic")
    matching = isinstance(topic, str) and not _one_in_ten(draw)
    topic_frame = topic.encode() if matching else draw(st.binary(max_size=12))
    bufs = header.get("bufs") if isinstance(header.get("bufs"), list) else []
    frames = []
    for spec in bufs:
        n = _declared_bytes(spec)
        frames.append(bytes(n) if n is not None and not _one_in_ten(draw) else draw(st.binary(max_size=64)))
    if _one_in_ten(draw):
        frames = draw(st.lists(st.binary(max_size=32), max_size=4))
    return [topic_frame, packed, *frames]


def _valid_message(draw: st.DrawFn) -> list[bytes]:
    arrays = {"a": np.arange(6, dtype="<f4").reshape(2, 3), "z": np.zeros((0, 5), "<i8"), "s": np.array(3, "|u1")}
    meta = {"seed": draw(st.integers(-(2**63), 2**63 - 1)), "reason": "x", "ok": True, "f": 0.5}
    msg = Message(draw(st.sampled_from(["cmd", "robot/tactile"])), 1.5, draw(st.integers(0, 2**63 - 1)), arrays, meta)
    return [bytes(memoryview(f)) for f in encode(msg)]


@st.composite
def mutated_messages(draw: st.DrawFn) -> list[bytes]:
    """A valid message with bit flips, truncation or extension of any frame, or frames dropped/added."""
    frames = [bytearray(f) for f in _valid_message(draw)]
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(frames) - 1))
        frame = frames[i]
        op = draw(st.sampled_from(["flip", "set", "truncate", "extend", "drop", "add"]))
        if op == "flip" and frame:
            k = draw(st.integers(0, len(frame) - 1))
            frame[k] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and frame:
            frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
        elif op == "truncate":
            del frame[draw(st.integers(0, len(frame))):]
        elif op == "extend":
            frame.extend(draw(st.binary(min_size=1, max_size=16)))
        elif op == "drop" and len(frames) > 1:
            frames.pop(i)
        elif op == "add":
            frames.insert(i, bytearray(draw(st.binary(max_size=16))))
    return [bytes(f) for f in frames]


any_frames = st.lists(st.binary(max_size=80), max_size=6)
all_inputs = st.one_of(any_frames, hostile_messages(), mutated_messages())


# ------------------------------------------------------------------------------------------------ the property
def _check_outcome(frames: list, max_frame_bytes: int = message.DEFAULT_MAX_FRAME_BYTES) -> Message | None:
    """Decode ``frames``: a ``MessageError`` of a known kind, or a message that matches its header exactly."""
    try:
        msg = decode(frames, max_frame_bytes=max_frame_bytes)
    except MessageError as error:
        assert error.kind in REJECT_KINDS, error
        assert error.reason
        return None
    _assert_matches_header(msg, frames)
    return msg


def _same(a: object, b: object) -> bool:
    """Equality in which NaN equals NaN (a NaN meta value is carried as it came)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _assert_matches_header(msg: Message, frames: list) -> None:
    header = msgpack.unpackb(frames[1], raw=False)
    assert (msg.topic, msg.stamp, msg.seq) == (header["topic"], header["t"], header["seq"])
    assert frames[0] == msg.topic.encode()
    assert _same(msg.meta, header["meta"])
    assert [spec["name"] for spec in header["bufs"]] == list(msg.arrays)
    for spec, frame in zip(header["bufs"], frames[2:], strict=True):
        arr = msg.arrays[spec["name"]]
        assert arr.dtype.str == spec["dtype"] and arr.shape == tuple(spec["shape"])
        assert arr.tobytes() == bytes(frame) and not arr.flags.writeable
    for value in (*msg.meta.values(), msg.seq):  # every int a node may copy into meta of its own fits int64
        assert value is None or isinstance(value, (bool, float, str)) or -(2**63) <= value < 2**63


@FUZZ
@given(any_frames)
def test_arbitrary_frames_decode_or_raise_message_error(frames: list[bytes]) -> None:
    _check_outcome(frames)


@FUZZ
@given(hostile_messages())
def test_hostile_headers_decode_or_raise_message_error(frames: list[bytes]) -> None:
    _check_outcome(frames)


@FUZZ
@given(mutated_messages())
def test_mutated_valid_messages_decode_or_raise_message_error(frames: list[bytes]) -> None:
    _check_outcome(frames)


@FUZZ
@given(all_inputs, st.sampled_from([64, 1024, 65536]))
def test_small_frame_limits_hold_for_every_input(frames: list[bytes], limit: int) -> None:
    msg = _check_outcome(frames, max_frame_bytes=limit)
    if msg is not None:
        assert all(a.nbytes <= limit and math.prod(n or 1 for n in a.shape) * a.itemsize <= limit
                   for a in msg.arrays.values())


@FUZZ
@given(all_inputs)
def test_decode_header_then_message_agrees_with_decode(frames: list[bytes]) -> None:
    """The split path (what the sockets use, with frames as bytes or memoryviews) gives decode's outcome."""
    assume(len(frames) >= 2)
    try:
        expected = ("ok", decode(frames))
    except MessageError as error:
        expected = ("rejected", error.kind)
    try:
        header = decode_header(memoryview(frames[0]), frames[1])
        got = ("ok", header.message([memoryview(f) for f in frames[2:]]))
    except MessageError as error:
        assert error.kind in REJECT_KINDS
        got = ("rejected", error.kind)
    if expected[0] == "ok" and got[0] == "ok":
        _assert_matches_header(got[1], frames)
    else:
        assert got[0] == expected[0] == "rejected"


@FUZZ
@given(mutated_messages())
def test_cached_layouts_agree_with_a_cold_decoder(frames: list[bytes]) -> None:
    """Warm caches (the fast path) never accept or refuse differently from the full check."""
    def outcome() -> tuple:
        try:
            msg = decode(frames)
        except MessageError as error:
            return ("rejected", error.kind)
        return ("ok", msg.topic, msg.stamp, msg.seq, {k: (v.shape, v.tobytes()) for k, v in msg.arrays.items()},
                msg.meta)

    warm = outcome()
    for cache in (message._DECODED_LAYOUTS, message._TOPICS):
        cache.clear()
    assert outcome() == warm


@pytest.mark.parametrize("shape", [[2**63, 0], [2**64 - 1, 0], [0, 2**63], [2**32, 2**32, 0], [2**31, 0, 2**31]])
def test_the_zero_byte_shapes_numpy_cannot_build_are_refused_as_shape(shape: list[int]) -> None:
    header = {"v": SCHEMA_VERSION, "topic": "cmd", "t": 1.0, "seq": 0,
              "bufs": [{"name": "target", "dtype": "<f8", "shape": shape}], "meta": {}}
    with pytest.raises(MessageError) as info:
        decode([b"cmd", msgpack.packb(header), b""])
    assert info.value.kind == "shape"


# ------------------------------------------------------------------------------------------------ over sockets
@pytest.fixture(scope="module")
def raw_pub_and_subscriber() -> Iterator[tuple[zmq.Socket, Subscriber]]:
    """A bare XPUB (sends anything) and a validating Subscriber with a 4 KiB frame limit, over loopback TCP."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        address = bind_to_random_port(sock)
        with Subscriber(address, [""], max_frame_bytes=4096, hwm=100_000) as sub:
            assert sock.poll(int(TIMEOUT * 1000)), "subscription never arrived"
            sock.recv()
            yield sock, sub
    finally:
        sock.close(linger=0)


def _sendable(frames: list[bytes]) -> list[bytes]:
    return frames if frames else [b""]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(all_inputs)
def test_a_subscriber_drops_hostile_messages_and_counts_them(raw_pub_and_subscriber, frames: list[bytes]) -> None:
    sock, sub = raw_pub_and_subscriber
    rejected, received = sum(sub.rejects.values()), sub.received
    sock.send_multipart(_sendable(frames))
    marker = [bytes(memoryview(f)) for f in encode(Message("zz/marker", 1.0))]
    sock.send_multipart(marker)
    got = []
    while True:  # everything up to the marker, in order: the hostile message is dropped or is a valid one
        msg = sub.recv(timeout=TIMEOUT)
        assert msg is not None, "the subscriber stopped delivering"
        if msg.topic == "zz/marker":
            break
        got.append(msg)
    assert (sum(sub.rejects.values()) - rejected) + (sub.received - received - 1) == 1
    assert set(sub.rejects) <= set(REJECT_KINDS)
    for msg in got:
        _assert_matches_header(msg, frames)


@pytest.fixture(scope="module")
def raw_dealer_and_server() -> Iterator[tuple[zmq.Socket, Server, Client]]:
    """A bare DEALER (sends anything) and a Server; a well-behaved Client beside it."""
    with Server("tcp://127.0.0.1:*", max_frame_bytes=4096) as server, Client(server.address) as client:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(server.address)
            yield sock, server, client
        finally:
            sock.close(linger=0)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(all_inputs.map(lambda f: [b"\0" * 8, *f]), all_inputs))
def test_a_server_drops_hostile_requests_and_still_answers(raw_dealer_and_server, frames: list[bytes]) -> None:
    sock, server, client = raw_dealer_and_server
    sock.send_multipart(_sendable(frames))
    client.send("ping", meta={"from": "the well-behaved client"})
    while True:  # the hostile request first (dropped, or answered if it happens to be valid), then the ping
        request = server.recv(timeout=TIMEOUT)
        assert request is not None, "the server stopped answering"
        if request.message.meta == {"from": "the well-behaved client"}:
            server.reply(request, "pong")
            break
    assert client.recv(timeout=TIMEOUT).topic == "pong"
    assert set(server.rejects) <= set(REJECT_KINDS)


# ------------------------------------------------------------------------------------------------ ZMQ_MAXMSGSIZE
def _until(predicate, what: str, timeout: float = TIMEOUT) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, what


def test_a_binding_subscriber_cuts_oversized_frames_and_the_sender_comes_back() -> None:
    with Subscriber("tcp://127.0.0.1:*", [""], bind=True, max_frame_bytes=4096) as sub, \
            Publisher(sub.address, bind=False) as pub, Publisher(sub.address, bind=False) as other:
        assert sub.socket.getsockopt(zmq.MAXMSGSIZE) == recv_frame_limit(4096)
        received: list[str] = []

        def heard(sender: Publisher, topic: str) -> bool:
            sender.publish(topic)
            msg = sub.recv(timeout=0.05)  # a binding subscriber hands out its subscription while it is used
            received.extend([msg.topic] if msg is not None else [])
            return topic in received

        _until(lambda: heard(pub, "before"), "the publisher never got through")
        pub.socket.send_multipart([b"a little over", bytes(4097)])  # still delivered: counted
        pub.socket.send_multipart([b"huge", bytes(10 * 2**20)])  # over ZMQ_MAXMSGSIZE: the connection is dropped
        _until(lambda: heard(pub, "after"), "the cut publisher never reconnected")
        _until(lambda: heard(other, "other"), "another publisher was disturbed")
        assert sub.rejects == {"size": 1}  # the 10 MB frame was never buffered, delivered or counted


def test_a_connecting_subscriber_counts_oversized_frames_and_stays_connected() -> None:
    """A connecting socket takes no ZMQ_MAXMSGSIZE: libzmq would end its connection for good, not reconnect."""
    with Publisher("tcp://127.0.0.1:*") as pub, Subscriber(pub.address, [""], max_frame_bytes=4096) as sub:
        assert sub.socket.getsockopt(zmq.MAXMSGSIZE) == -1
        assert pub.wait_for_subscriber("", timeout=TIMEOUT)
        pub.socket.send_multipart([b"huge", bytes(10 * 2**20)])
        pub.publish("after")
        msg = sub.recv(timeout=TIMEOUT)
        assert msg is not None and msg.topic == "after"
        assert sub.rejects == {"size": 1}


def test_a_server_cuts_an_oversized_request_and_the_client_comes_back() -> None:
    with Server("tcp://127.0.0.1:*", max_frame_bytes=4096) as server:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(server.address)
            sock.send_multipart([b"\0" * 8, b"ping", bytes(10 * 2**20)])
            ping = [bytes(memoryview(f)) for f in encode(Message("ping", 1.0))]

            def answered() -> bool:
                sock.send_multipart([b"\1" * 8, *ping])
                request = server.recv(timeout=0.1)
                if request is not None:
                    server.reply(request, "pong")
                return sock.poll(100) and sock.recv_multipart()[1] == b"pong"

            _until(answered, "the cut client never got an answer again")
            assert server.rejects == {}
        finally:
            sock.close(linger=0)
