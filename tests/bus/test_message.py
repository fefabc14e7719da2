"""Message encoding: round trips, every rejection kind, and fuzzing of the decoder."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest

from bus import message
from bus.message import (
    ALLOWED_DTYPES,
    MAX_HEADER_BYTES,
    REJECT_KINDS,
    SCHEMA_VERSION,
    Message,
    MessageError,
    decode,
    decode_header,
    encode,
)

SHAPES = [(), (0,), (3,), (2, 0, 4), (7, 9, 2), (2, 14, 18), (1, 1, 1, 1, 3)]


def wire(frames: list) -> list[bytes]:
    """What a socket delivers: plain bytes, one per frame."""
    return [f if isinstance(f, bytes) else memoryview(f).tobytes() for f in frames]


def raw_frames(topic_frame: bytes = b"robot/tactile", buffers: list[bytes] | None = None, **header_overrides):
    """Hand-built frames around a valid header, with fields overridden (``None`` value: key removed)."""
    buffers = [np.arange(6, dtype="<f4").tobytes()] if buffers is None else buffers
    header = {
        "v": SCHEMA_VERSION,
        "topic": "robot/tactile",
        "t": 12.5,
        "seq": 4,
        "bufs": [{"name": "offset", "dtype": "<f4", "shape": [2, 3]}],
        "meta": {"pad": "left"},
    }
    for key, value in header_overrides.items():
        if value is None:
            header.pop(key)
        else:
            header[key] = value
    return [topic_frame, msgpack.packb(header, use_bin_type=True), *buffers]


def reject_kind(frames, **kwargs) -> str:
    with pytest.raises(MessageError) as info:
        decode(frames, **kwargs)
    assert info.value.kind in REJECT_KINDS
    assert info.value.reason  # says what was wrong
    return info.value.kind


@pytest.mark.parametrize("dtype", sorted(ALLOWED_DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_round_trip_every_dtype_and_shape(dtype: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    arr = np.asarray(rng.random(shape) * 100).astype(dtype)
    flipped = arr.reshape(-1)[::-1].reshape(shape).copy()
    msg = Message("robot/tactile", stamp=123.25, seq=7, arrays={"x": arr, "y": flipped})
    out = decode(wire(encode(msg)))
    assert (out.topic, out.stamp, out.seq) == ("robot/tactile", 123.25, 7)
    for name in ("x", "y"):
        assert out.arrays[name].dtype.str == dtype
        assert out.arrays[name].shape == shape
        np.testing.assert_array_equal(out.arrays[name], msg.arrays[name])


def test_round_trip_meta_and_no_arrays() -> None:
    meta = {"pad": "left", "n": 3, "gain": 0.5, "ok": True, "none": None, "np": np.float32(2.0)}
    out = decode(wire(encode(Message("cmd", stamp=0.0, meta=meta))))
    assert out.arrays == {}
    assert out.meta == {"pad": "left", "n": 3, "gain": 0.5, "ok": True, "none": None, "np": 2.0}
    assert type(out.meta["np"]) is float


def test_decoded_arrays_are_read_only_views_of_the_frames() -> None:
    frames = wire(encode(Message("img", 1.0, arrays={"rgb": np.ones((2, 96, 96, 3), np.uint8)})))
    arr = decode(frames).arrays["rgb"]
    assert np.shares_memory(arr, np.frombuffer(frames[2], np.uint8))  # no copy on receive
    assert not arr.flags.writeable
    with pytest.raises(ValueError):
        arr[0, 0, 0, 0] = 3


def test_encode_sends_arrays_without_copy() -> None:
    arr = np.zeros((2, 63, 2), np.float32)
    frames = encode(Message("tactile", 1.0, arrays={"offset": arr}))
    assert frames[2] is arr


@pytest.mark.parametrize(
    ("msg", "kind"),
    [
        (Message("", 1.0), "topic"),
        (Message("t" * 256, 1.0), "topic"),
        (Message("t", 1.0, arrays={"a": np.zeros(3, ">f4")}), "dtype"),
        (Message("t", 1.0, arrays={"a": np.array(["x"])}), "dtype"),
        (Message("t", 1.0, arrays={"a": np.zeros(3, np.complex64)}), "dtype"),
        (Message("t", 1.0, arrays={"a": [1.0, 2.0]}), "dtype"),  # type: ignore[dict-item]
        (Message("t", 1.0, arrays={"a": np.zeros((4, 4), np.float32)[:, ::2]}), "layout"),
        (Message("t", 1.0, meta={"a": [1, 2]}), "meta"),
        (Message("t", 1.0, meta={1: "x"}), "meta"),  # type: ignore[dict-item]
        (Message("t", math.nan), "header"),
        (Message("t", 1.0, seq=-1), "header"),
        (Message("t", 1.0, meta={"big": 2**70}), "meta"),
        (Message("t", 1.0, meta={"big": 2**63}), "meta"),  # msgpack could carry it as uint64; int64 readers cannot
        (Message("t", 1.0, meta={"big": np.uint64(2**64 - 1)}), "meta"),
        (Message("t", 1.0, meta={"small": -(2**63) - 1}), "meta"),
        (Message("t", 1.0, arrays={"a": np.empty((2**40, 0), np.uint8)}), "shape"),  # empty, but its extent is not
        (Message("t", 1.0, seq=2**64), "header"),
        (Message("t", 1.0, seq=2**63), "header"),  # seq must fit int64, like meta ints: nodes copy it into meta
        (Message("t", "now"), "header"),  # type: ignore[arg-type]
        (Message("t", 1.0, meta={"s": "x" * (MAX_HEADER_BYTES + 1)}), "size"),
    ],
)
def test_encode_refuses_what_decode_would_reject(msg: Message, kind: str) -> None:
    with pytest.raises(MessageError) as info:
        encode(msg)
    assert info.value.kind == kind


def test_encode_refuses_oversized_array() -> None:
    with pytest.raises(MessageError) as info:
        encode(Message("t", 1.0, arrays={"a": np.zeros(2048, np.uint8)}), max_frame_bytes=1024)
    assert info.value.kind == "size"


def test_valid_raw_frames_decode() -> None:
    msg = decode(raw_frames())
    assert msg.arrays["offset"].shape == (2, 3)
    assert msg.meta == {"pad": "left"}


@pytest.mark.parametrize(
    ("frames", "kind"),
    [
        # frame count
        ([b"robot/tactile"], "frames"),
        ([], "frames"),
        (raw_frames(buffers=[]), "frames"),
        (raw_frames(buffers=[b"\0" * 24, b"extra"]), "frames"),
        (raw_frames(buffers=[b""] * 100), "frames"),
        ([b"robot/tactile", b"x", 3], "frames"),
        # header is not a valid map
        (raw_frames()[:1] + [b"\xc1\xc1\xc1"] + raw_frames()[2:], "header"),
        (raw_frames()[:1] + [msgpack.packb([1, 2, 3])] + raw_frames()[2:], "header"),
        (raw_frames()[:1] + [msgpack.packb({"v": 1})] + raw_frames()[2:], "header"),
        (raw_frames()[:1] + [msgpack.packb({1: 1})] + raw_frames()[2:], "header"),
        (raw_frames()[:1] + [msgpack.packb({"v": 1}) + b"trailing"] + raw_frames()[2:], "header"),
        (raw_frames()[:1] + [b"\x91" * 5000] + raw_frames()[2:], "header"),  # deep nesting
        (raw_frames(extra=1), "header"),
        (raw_frames(t=None), "header"),
        (raw_frames(t="now"), "header"),
        (raw_frames(t=5), "header"),
        (raw_frames(t=math.inf), "header"),
        (raw_frames(seq=-1), "header"),
        (raw_frames(seq=True), "header"),
        (raw_frames(seq=1.0), "header"),
        (raw_frames(seq=2**63), "header"),
        (raw_frames(seq=2**64 - 1), "header"),
        (raw_frames(bufs={"name": "offset"}), "header"),
        (raw_frames(bufs=[{"name": "offset", "dtype": "<f4"}]), "header"),
        (raw_frames(bufs=[{"name": "", "dtype": "<f4", "shape": [6]}]), "header"),
        (raw_frames(bufs=[{"name": 3, "dtype": "<f4", "shape": [6]}]), "header"),
        (raw_frames(bufs=[{"name": "a", "dtype": "<f4", "shape": [6]}] * 2, buffers=[bytes(24)] * 2), "header"),
        # schema version
        (raw_frames(v=2), "version"),
        (raw_frames(v=0), "version"),
        (raw_frames(v="1"), "version"),
        (raw_frames(v=1.0), "version"),
        (raw_frames(v=True), "version"),
        (raw_frames(v=None), "version"),
        # topic
        (raw_frames(topic_frame=b"robot/wrench"), "topic"),
        (raw_frames(topic_frame=b"robot/tactile\0"), "topic"),
        (raw_frames(topic_frame=b"", topic=""), "topic"),
        (raw_frames(topic=7), "topic"),
        # dtype
        (raw_frames(bufs=[{"name": "offset", "dtype": ">f4", "shape": [2, 3]}]), "dtype"),
        (raw_frames(bufs=[{"name": "offset", "dtype": "|O", "shape": [2, 3]}]), "dtype"),
        (raw_frames(bufs=[{"name": "offset", "dtype": "<c8", "shape": [3]}]), "dtype"),
        (raw_frames(bufs=[{"name": "offset", "dtype": "f4", "shape": [2, 3]}]), "dtype"),
        (raw_frames(bufs=[{"name": "offset", "dtype": ["<f4"], "shape": [2, 3]}]), "dtype"),
        (raw_frames(bufs=[{"name": "offset", "dtype": 7, "shape": [2, 3]}]), "dtype"),
        # shape
        (raw_frames(bufs=[{"name": "offset", "dtype": "<f4", "shape": [3, 3]}]), "shape"),
        (raw_frames(bufs=[{"name": "offset", "dtype": "<f8", "shape": [2, 3]}]), "shape"),
        (raw_frames(bufs=[{"name": "offset", "dtype": "<f4", "shape": [-2, -3]}]), "shape"),
        (raw_frames(bufs=[{"name": "offset", "dtype": "<f4", "shape": [2.0, 3]}]), "shape"),
        (raw_frames(bufs=[{"name": "offset", "dtype": "<f4", "shape": [True, 6]}]), "shape"),
        (raw_frames(bufs=[{"name": "offset", "dtype": "<f4", "shape": 6}]), "shape"),
        (raw_frames(bufs=[{"name": "offset", "dtype": "<f4", "shape": [1] * 33}]), "shape"),
        (raw_frames(bufs=[{"name": "offset", "dtype": "<f4", "shape": [2**40, 2**40]}]), "shape"),
        (raw_frames(bufs=[{"name": "offset", "dtype": "<f4", "shape": []}]), "shape"),
        # shapes numpy cannot build although they hold zero bytes: refused by their extent, never by numpy
        (raw_frames(bufs=[{"name": "offset", "dtype": "<f4", "shape": [2**63, 0]}], buffers=[b""]), "shape"),
        (raw_frames(bufs=[{"name": "offset", "dtype": "<f4", "shape": [2**32, 0]}], buffers=[b""]), "shape"),
        (raw_frames(bufs=[{"name": "offset", "dtype": "|u1", "shape": [2**31, 2**31, 0]}], buffers=[b""]), "shape"),
        (raw_frames(bufs=[{"name": "offset", "dtype": "|u1", "shape": [0] + [2**20] * 5}], buffers=[b""]), "shape"),
        (raw_frames(bufs=[{"name": "offset", "dtype": "|u1", "shape": [2**64 - 1, 0]}], buffers=[b""]), "shape"),
        # meta
        (raw_frames(meta=[1]), "meta"),
        (raw_frames(meta={"a": [1]}), "meta"),
        (raw_frames(meta={"a": {"b": 1}}), "meta"),
        (raw_frames(meta={"seed": 2**64 - 1}), "meta"),  # valid msgpack (uint64), beyond int64
        (raw_frames(meta={"seed": 2**63}), "meta"),
    ],
)
def test_decode_rejects_with_stable_kind(frames: list, kind: str) -> None:
    assert reject_kind(frames) == kind


@pytest.mark.parametrize("value", [-(2**63), 2**63 - 1])
def test_meta_ints_at_the_edges_of_int64_pass_both_ways(value: int) -> None:
    assert decode(raw_frames(meta={"seed": value})).meta == {"seed": value}
    assert decode(wire(encode(Message("t", 1.0, meta={"seed": value})))).meta == {"seed": value}


def test_a_layout_cached_under_a_large_frame_limit_is_checked_again_under_a_small_one() -> None:
    frames = wire(encode(Message("robot/x", 1.0, arrays={"a": np.zeros(4096, np.uint8)})))
    assert decode(frames).arrays["a"].size == 4096  # cached under the default 32 MiB limit
    with pytest.raises(MessageError) as info:
        decode_header(frames[0], frames[1], max_frame_bytes=1024)
    assert info.value.kind == "size"
    empty = wire(encode(Message("robot/y", 1.0, arrays={"a": np.zeros((0, 4096), np.uint8)})))
    assert decode(empty).arrays["a"].shape == (0, 4096)
    with pytest.raises(MessageError) as info:
        decode_header(empty[0], empty[1], max_frame_bytes=1024)
    assert info.value.kind == "shape"


def test_decode_rejects_oversized_frames() -> None:
    big = raw_frames(bufs=[{"name": "offset", "dtype": "|u1", "shape": [4096]}], buffers=[b"\0" * 4096])
    assert decode(big).arrays["offset"].size == 4096
    assert reject_kind(big, max_frame_bytes=1024) == "size"
    huge_header = raw_frames(meta={"s": "x" * MAX_HEADER_BYTES})
    assert reject_kind(huge_header) == "size"


def test_decode_raises_only_message_error_on_random_bytes() -> None:
    rng = np.random.default_rng(1234)
    kinds = set()
    for _ in range(3000):
        n = int(rng.integers(0, 6))
        frames = [rng.bytes(int(rng.integers(0, 64))) for _ in range(n)]
        with pytest.raises(MessageError) as info:
            decode(frames)
        kinds.add(info.value.kind)
    assert kinds <= set(REJECT_KINDS)


def test_decode_survives_corrupted_valid_messages() -> None:
    """Flip bytes of a real header: the result is either a valid message or a MessageError."""
    rng = np.random.default_rng(99)
    good = wire(encode(Message("robot/tactile", 3.0, seq=1, arrays={"o": np.zeros((2, 63, 2), np.float32)},
                               meta={"pad": "left", "k": 2})))
    outcomes = {"ok": 0, "rejected": 0}
    for _ in range(3000):
        header = bytearray(good[1])
        for _ in range(int(rng.integers(1, 4))):
            header[int(rng.integers(0, len(header)))] = int(rng.integers(0, 256))
        try:
            decode([good[0], bytes(header), *good[2:]])
            outcomes["ok"] += 1
        except MessageError as error:
            assert error.kind in REJECT_KINDS
            outcomes["rejected"] += 1
    assert outcomes["rejected"] > 0


@pytest.mark.parametrize("topic", ["t", "robot/tactile", "x" * 31, "x" * 32, "é" * 127])
@pytest.mark.parametrize("seq", [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1])
def test_header_bytes_are_plain_msgpack(topic: str, seq: int) -> None:
    """The precompiled header equals msgpack of the documented map, so any msgpack reader can parse it."""
    arrays = {"offset": np.zeros((2, 63, 2), np.float32), "n": np.zeros((), "<i8")}
    meta = {"pad": "left", "k": 2} if seq % 2 else {}
    header = encode(Message(topic, 0.1 * seq, seq, arrays, meta))[1]
    expected = {
        "v": SCHEMA_VERSION, "topic": topic, "t": 0.1 * seq, "seq": seq,
        "bufs": [{"name": "offset", "dtype": "<f4", "shape": [2, 63, 2]}, {"name": "n", "dtype": "<i8", "shape": []}],
        "meta": meta,
    }
    assert header == msgpack.packb(expected, use_bin_type=True)
    assert decode(wire(encode(Message(topic, 0.1 * seq, seq, arrays, meta)))).seq == seq


def _outcome(frames: list[bytes]) -> tuple:
    try:
        msg = decode(frames)
    except MessageError as error:
        return ("rejected", error.kind)
    arrays = {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in msg.arrays.items()}
    return ("ok", msg.topic, msg.stamp, msg.seq, arrays, msg.meta)


def _forget_layouts() -> None:
    for cache in (message._DECODED_LAYOUTS, message._TOPICS, message._ENCODED_LAYOUTS, message._TOPIC_PREFIXES):
        cache.clear()


def test_cached_layouts_never_accept_what_the_full_check_refuses() -> None:
    """Decoding with layouts remembered gives exactly what a cold decoder gives, for corrupted headers too."""
    rng = np.random.default_rng(5)
    good = wire(encode(Message("robot/tactile", 3.0, seq=300, arrays={"o": np.zeros((2, 63, 2), np.float32)},
                               meta={"pad": "left"})))
    differing = 0
    for _ in range(2000):
        header = bytearray(good[1])
        for _ in range(int(rng.integers(1, 3))):
            header[int(rng.integers(0, len(header)))] = int(rng.integers(0, 256))
        frames = [good[0], bytes(header), *good[2:]]
        decode(good)  # warm: the valid layout and topic are remembered
        warm = _outcome(frames)
        _forget_layouts()
        cold = _outcome(frames)
        assert warm == cold, bytes(header)
        differing += warm[0] == "ok" and warm != _outcome(good)
    assert differing > 0  # some corruptions are valid messages (e.g. another stamp) and both paths agree


def test_decode_header_then_message_is_decode() -> None:
    frames = wire(encode(Message("robot/tactile", 1.5, seq=3, arrays={"o": np.ones(4, np.float32)}, meta={"a": 1})))
    header = decode_header(frames[0], frames[1])
    assert (header.topic, header.stamp, header.seq) == ("robot/tactile", 1.5, 3)
    assert [b.name for b in header.buffers] == ["o"] and header.buffers[0].nbytes == 16
    msg = header.message(frames[2:])
    msg.meta["b"] = 2  # each message owns its meta, even when the layout is cached
    assert decode(frames).meta == {"a": 1}
    with pytest.raises(MessageError) as info:
        header.message([])
    assert info.value.kind == "frames"
