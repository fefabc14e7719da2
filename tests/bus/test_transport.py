"""Transport over real sockets on random loopback ports: delivery, validation, conflation, req/rep."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import msgpack
import numpy as np
import pytest
import zmq

from bus.clock import LockstepClock
from bus.message import Message, encode
from bus.transport import (
    Client,
    Publisher,
    Server,
    Subscriber,
    bind_to_random_port,
    ipc_address,
    is_local_address,
    loopback_address,
)

TIMEOUT = 5.0  # generous: a loaded 2-core machine; passing tests never wait this long


@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    before = threading.active_count()
    yield
    assert threading.active_count() == before


@pytest.fixture
def pubsub() -> Iterator[tuple[Publisher, Subscriber]]:
    with Publisher(loopback_address()) as pub, Subscriber(pub.address, ["robot/"]) as sub:
        assert pub.wait_for_subscriber("robot/", TIMEOUT)
        yield pub, sub


@pytest.fixture
def raw_pub() -> Iterator[tuple[zmq.Socket, Subscriber]]:
    """A bare XPUB socket (sends anything) and a validating subscriber connected to it."""
    sock = zmq.Context.instance().socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        address = bind_to_random_port(sock)
        with Subscriber(address, ["robot/"], max_frame_bytes=4096) as sub:
            assert sock.poll(int(TIMEOUT * 1000)), "subscription never arrived"
            assert sock.recv() == b"\x01robot/"
            yield sock, sub
    finally:
        sock.close(linger=0)


def tactile(value: float = 0.0) -> dict[str, np.ndarray]:
    return {
        "offset": np.full((2, 63, 2), value, np.float32),  # (pads, markers, xy)
        "depth": np.full((2, 14, 18), value, np.float32),  # (pads, H, W)
    }


def test_publish_subscribe_round_trip(pubsub: tuple[Publisher, Subscriber]) -> None:
    pub, sub = pubsub
    sent = pub.publish("robot/tactile", tactile(1.5), meta={"pad": "both"})
    got = sub.recv(TIMEOUT)
    assert got is not None
    assert (got.topic, got.seq, got.stamp, got.meta) == (sent.topic, 0, sent.stamp, {"pad": "both"})
    np.testing.assert_array_equal(got.arrays["offset"], sent.arrays["offset"])
    assert got.arrays["depth"].shape == (2, 14, 18)
    assert abs(got.stamp - time.monotonic()) < TIMEOUT


def test_sequence_numbers_per_topic_and_prefix() -> None:
    with Publisher(loopback_address(), topic_prefix="robot/") as pub, Subscriber(pub.address) as sub:
        assert pub.wait_for_subscriber(timeout=TIMEOUT)
        for topic in ["a", "b", "a", "a", "b"]:
            pub.publish(topic)
        got = [sub.recv(TIMEOUT) for _ in range(5)]
    assert [(m.topic, m.seq) for m in got] == [
        ("robot/a", 0), ("robot/b", 0), ("robot/a", 1), ("robot/a", 2), ("robot/b", 1)
    ]


def test_topic_filter_is_a_prefix_match(pubsub: tuple[Publisher, Subscriber]) -> None:
    pub, sub = pubsub
    pub.publish("camera/rgb")  # not subscribed
    pub.publish("robot/wrench", {"wrench": np.zeros(6)})
    got = sub.recv(TIMEOUT)
    assert got is not None and got.topic == "robot/wrench"
    assert sub.recv(0) is None


def test_recv_times_out_with_none(pubsub: tuple[Publisher, Subscriber]) -> None:
    _, sub = pubsub
    start = time.monotonic()
    assert sub.recv(0.05) is None
    assert sub.recv(0) is None
    assert time.monotonic() - start >= 0.04


def test_invalid_messages_are_counted_logged_once_and_dropped(
    raw_pub: tuple[zmq.Socket, Subscriber], caplog: pytest.LogCaptureFixture
) -> None:
    sock, sub = raw_pub
    rng = np.random.default_rng(7)
    good = encode(Message("robot/tactile", 1.0, seq=0, arrays=tactile()))
    header = msgpack.unpackb(good[1])

    def with_header(**changes: object) -> list:
        return [good[0], msgpack.packb({**header, **changes}), *good[2:]]

    bad = [
        [b"robot/" + rng.bytes(40)],  # one frame of noise
        [b"robot/x", rng.bytes(100), rng.bytes(10)],  # noise header
        [b"robot/x", rng.bytes(100), rng.bytes(10)],
        with_header(v=99),
        with_header(v=2),
        with_header(bufs=[{**header["bufs"][0], "shape": [2, 63, 3]}, header["bufs"][1]]),
        with_header(bufs=[{**header["bufs"][0], "dtype": ">f4"}, header["bufs"][1]]),
        with_header(topic="robot/wrench"),
        [good[0], good[1], good[2], np.zeros(8192, np.uint8)],  # oversized and unexpected frame
        with_header(bufs=[{"name": "big", "dtype": "|u1", "shape": [8192]}])[:2] + [bytes(8192)],
    ]
    with caplog.at_level(logging.WARNING, logger="bus.transport"):
        for frames in bad:
            sock.send_multipart(frames)
        sock.send_multipart(good)
        got = sub.recv(TIMEOUT)
        assert got is not None and got.topic == "robot/tactile"  # still alive, still delivering
        assert sub.recv(0) is None
    assert dict(sub.rejects) == {
        "frames": 1, "header": 2, "version": 2, "shape": 1, "dtype": 1, "topic": 1, "size": 2
    }
    assert sub.received == 1
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == len(sub.rejects)  # once per kind, with the reason
    assert any("schema version 99" in text for text in warned)


def test_random_noise_never_stops_the_subscriber(raw_pub: tuple[zmq.Socket, Subscriber]) -> None:
    sock, sub = raw_pub
    rng = np.random.default_rng(3)
    for _ in range(300):
        n = int(rng.integers(1, 5))
        sock.send_multipart([b"robot/" + rng.bytes(3)] + [rng.bytes(int(rng.integers(0, 200))) for _ in range(n)])
    sock.send_multipart(encode(Message("robot/ok", 2.0, seq=5)))
    got = sub.recv(TIMEOUT)
    while got is not None and got.topic != "robot/ok":  # noise may, rarely, be valid; skip it
        got = sub.recv(TIMEOUT)
    assert got is not None and got.seq == 5
    assert sum(sub.rejects.values()) >= 290


def test_conflate_returns_the_newest_message() -> None:
    with Publisher(loopback_address()) as pub, Subscriber(pub.address, conflate=True) as sub:
        assert pub.wait_for_subscriber(timeout=TIMEOUT)
        for i in range(200):
            pub.publish("robot/tactile", tactile(i))
        seen = []
        deadline = time.monotonic() + TIMEOUT
        while (not seen or seen[-1] < 199) and time.monotonic() < deadline:
            time.sleep(0.05)  # let the burst land, then read once
            msg = sub.recv(TIMEOUT)
            assert msg is not None
            seen.append(msg.seq)
        assert seen[-1] == 199
        assert float(sub.latest["robot/tactile"].arrays["offset"][0, 0, 0]) == 199.0
        assert len(seen) < 20 and seen == sorted(seen)  # older messages were skipped, never reordered
        assert sub.recv(0) is None


def test_queue_mode_keeps_every_message_in_order(pubsub: tuple[Publisher, Subscriber]) -> None:
    pub, sub = pubsub
    for _ in range(50):
        pub.publish("robot/tactile", tactile())
    assert [sub.recv(TIMEOUT).seq for _ in range(50)] == list(range(50))


def test_drain_keeps_latest_per_topic() -> None:
    with Publisher(loopback_address()) as pub, Subscriber(pub.address, conflate=True) as sub:
        assert pub.wait_for_subscriber(timeout=TIMEOUT)
        for i in range(5):
            pub.publish("robot/wrench", {"wrench": np.full(6, i, np.float64)})
            pub.publish("robot/joint", {"q": np.full(7, i, np.float64)})
        deadline = time.monotonic() + TIMEOUT
        while sub.received < 10 and time.monotonic() < deadline:
            sub.drain()
            time.sleep(0.01)
    assert {topic: m.seq for topic, m in sub.latest.items()} == {"robot/wrench": 4, "robot/joint": 4}


def test_publish_refuses_invalid_data_at_the_sender(pubsub: tuple[Publisher, Subscriber]) -> None:
    pub, sub = pubsub
    with pytest.raises(ValueError, match="C-contiguous"):
        pub.publish("robot/img", {"rgb": np.zeros((4, 4, 3), np.uint8)[:, ::2]})
    pub.publish("robot/img", {"rgb": np.zeros((4, 2, 3), np.uint8)})
    got = sub.recv(TIMEOUT)
    assert got is not None and got.seq == 0  # the refused message used up no sequence number


def test_request_reply_round_trip() -> None:
    with Server(loopback_address()) as server, Client(server.address) as client:
        client.send("tick", meta={"dt": 0.01})
        request = server.recv(TIMEOUT)
        assert request is not None and request.message.meta == {"dt": 0.01}
        server.reply(request, "done", {"q": np.arange(7.0)})
        reply = client.recv(TIMEOUT)
    assert reply.topic == "done"
    np.testing.assert_array_equal(reply.arrays["q"], np.arange(7.0))


def test_request_times_out_then_drops_the_late_reply() -> None:
    with Server(loopback_address()) as server, Client(server.address) as client:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            client.request("tick", meta={"n": 1}, timeout=0.1)
        assert time.monotonic() - start >= 0.09
        late = server.recv(TIMEOUT)
        assert late is not None
        server.reply(late, "done", meta={"n": 1})  # too late: the client gave up
        client.send("tick", meta={"n": 2})
        request = server.recv(TIMEOUT)
        assert request is not None
        server.reply(request, "done", meta={"n": 2})
        assert client.recv(TIMEOUT).meta == {"n": 2}
        assert client.rejects["stale"] == 1


def test_request_without_server_times_out() -> None:
    with Client(loopback_address(1)) as client, pytest.raises(TimeoutError, match="no reply"):
        client.request("tick", timeout=0.05)


def test_server_drops_invalid_requests() -> None:
    with Server(loopback_address()) as server:
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        try:
            raw.connect(server.address)
            raw.send_multipart([b"no-id"])
            raw.send_multipart([bytes(8), b"tick", b"\xc1"])
            raw.send_multipart([bytes(8), *encode(Message("tick", 1.0))])
            request = server.recv(TIMEOUT)
        finally:
            raw.close(linger=0)
        assert request is not None and request.message.topic == "tick"
        assert dict(server.rejects) == {"frames": 1, "header": 1}


def test_lockstep_ticks_over_request_reply() -> None:
    """A coordinator advances a node's lockstep clock; the run is reproducible."""

    def run() -> list[tuple[float, int]]:
        node_clock = LockstepClock()
        with Server(loopback_address(), clock=node_clock) as node, Client(node.address) as coordinator:
            out = []
            for _ in range(20):
                coordinator.send("tick", meta={"dt": 0.005})
                tick = node.recv(TIMEOUT)
                assert tick is not None
                node_clock.advance(tick.message.meta["dt"])
                node.reply(tick, "tock")
                reply = coordinator.recv(TIMEOUT)
                out.append((reply.stamp, reply.seq))
            return out

    first, second = run(), run()
    assert first == second
    assert first[-1] == (0.1, 19)


def test_address_helpers(tmp_path) -> None:
    assert loopback_address(5555) == "tcp://127.0.0.1:5555"
    assert loopback_address() == "tcp://127.0.0.1:*"
    with pytest.raises(ValueError):
        loopback_address(70000)
    assert is_local_address("tcp://127.0.0.1:1") and is_local_address("tcp://[::1]:1")
    assert is_local_address("ipc:///tmp/x.sock") and is_local_address("inproc://x")
    assert not is_local_address("tcp://0.0.0.0:1") and not is_local_address("tcp://*:1")
    assert not is_local_address("tcp://10.0.0.2:1")
    with pytest.raises(ValueError, match="allow_remote"):
        Publisher("tcp://0.0.0.0:*")
    with pytest.raises(ValueError):
        ipc_address("../escape")


def test_ipc_transport(tmp_path) -> None:
    address = ipc_address("robot-state", directory=str(tmp_path))
    assert address == f"ipc://{tmp_path}/robot-state.sock"
    with Publisher(address) as pub, Subscriber(address) as sub:
        assert pub.wait_for_subscriber(timeout=TIMEOUT)
        pub.publish("robot/state", {"q": np.zeros(7)})
        got = sub.recv(TIMEOUT)
    assert got is not None and got.arrays["q"].shape == (7,)


def test_subscriber_can_bind_and_publishers_connect() -> None:
    with Subscriber(loopback_address(), bind=True) as recorder, Publisher(recorder.address, bind=False) as pub:
        deadline = time.monotonic() + TIMEOUT
        # A binding SUB hands its subscriptions to new peers only while it is being used (libzmq).
        while not pub.wait_for_subscriber(timeout=0.02) and time.monotonic() < deadline:
            assert recorder.recv(0) is None
        pub.publish("robot/wrench", {"wrench": np.zeros(6)})
        assert recorder.recv(TIMEOUT) is not None


def test_sockets_close_cleanly() -> None:
    pub = Publisher(loopback_address())
    with pub:
        assert not pub.closed
    assert pub.closed
    pub.close()  # idempotent
    with pytest.raises(zmq.ZMQError):
        pub.publish("robot/x")


def test_large_arrays_arrive_zero_copy_and_read_only() -> None:
    """Frames from ZERO_COPY_RECV_BYTES up are received as zmq frames (no copy), small ones as bytes.

    The publisher copies (``copy=True``): pyzmq's zero-copy *send* starts a process-wide helper thread that
    would outlive the test.
    """
    rgb = np.random.default_rng(0).integers(0, 255, (2, 96, 96, 3), dtype=np.uint8)  # 55 KB
    depth = np.random.default_rng(1).random((240, 320), dtype=np.float32)  # 300 KB
    with Publisher(loopback_address(), copy=True) as pub, Subscriber(pub.address, ["robot/"]) as sub:
        assert pub.wait_for_subscriber("robot/", TIMEOUT)
        pub.publish("robot/cameras", {"rgb": rgb, "depth": depth, "small": np.arange(3.0)})
        got = sub.recv(TIMEOUT)
    assert got is not None
    for name, sent in (("rgb", rgb), ("depth", depth), ("small", np.arange(3.0))):
        np.testing.assert_array_equal(got.arrays[name], sent)
        assert not got.arrays[name].flags.writeable
    owner = got.arrays["depth"].base
    assert isinstance(getattr(owner, "obj", owner), zmq.Frame)  # a view of the received frame, not a copy


def test_malformed_frame_counts_never_desynchronise_the_stream(raw_pub: tuple[zmq.Socket, Subscriber]) -> None:
    """Every bad message is consumed to its last frame: each valid one after it arrives whole and in order."""
    sock, sub = raw_pub
    good = encode(Message("robot/tactile", 1.0, seq=0, arrays=tactile()))
    header = msgpack.unpackb(good[1])
    bad = [
        good[:3],  # header lists 2 buffers, 1 sent
        [*good, b"\0" * 24, b"\0" * 5000],  # 2 more frames than listed (one over the zero-copy size)
        [*good[:3], np.zeros(5000, np.uint8)],  # second buffer of the wrong size, received zero-copy
        [good[0], b"\xc1" * 10, *[b"x" * 3000] * 5],  # unreadable header, 5 frames to skip
        [good[0], msgpack.packb({**header, "bufs": header["bufs"] * 40}), *good[2:]],  # too many listed
        [b"robot/one-frame"],
    ]
    for i, frames in enumerate(bad):
        sock.send_multipart(frames)
        sock.send_multipart(encode(Message("robot/ok", 2.0, seq=i, arrays={"x": np.full(3, i, np.int32)})))
    for i in range(len(bad)):
        got = sub.recv(None if i % 2 else TIMEOUT)  # None: the blocking path (everything is already sent)
        assert got is not None and got.topic == "robot/ok" and got.seq == i
        np.testing.assert_array_equal(got.arrays["x"], np.full(3, i, np.int32))
    assert sub.recv(0) is None
    assert sum(sub.rejects.values()) == len(bad) and sub.received == len(bad)
