"""Typed multipart messages: a small msgpack header followed by raw array buffers.

Wire layout (one ZeroMQ multipart message)::

    frame 0      topic, UTF-8 bytes (PUB/SUB filters on its prefix)
    frame 1      header, msgpack map:
                   v      int    schema version (SCHEMA_VERSION)
                   topic  str    same text as frame 0
                   t      float  sender's monotonic stamp, seconds (``time.monotonic()`` or a lockstep clock)
                   seq    int    per-topic sequence number, 0 .. 2**63 - 1
                   bufs   list   one {"name": str, "dtype": str, "shape": [int, ...]} per array frame
                   meta   map    str -> None | bool | int (int64) | float | str
    frame 2..    one C-contiguous little-endian buffer per entry of ``bufs``, in order

Why this shape: the header is tiny and language-neutral, the arrays travel as raw bytes (no per-element
encoding, zero-copy on both ends for large buffers) and nothing on the wire can run code (no pickle).
``decode`` trusts nothing: every field is checked and anything malformed raises ``MessageError`` whose
``kind`` is one of ``REJECT_KINDS``, so a subscriber can count and drop bad input without crashing.

Bounds that keep hostile headers harmless (``encode`` refuses the same, so bad data fails at the sender): every
dimension is at most ``MAX_DIM``; an array's bytes must fit ``max_frame_bytes`` (kind "size"), and so must its
*extent*, the bytes it would hold with every zero dimension counted as 1 (kind "shape"). The extent bound is what
refuses ``[2**63, 0]``: zero bytes, but numpy cannot build it (the product of its dims overflows). Meta ints and
``seq`` must fit int64, the widest type every reader (numpy, torch, msgpack in other languages) stores them in:
nodes copy them into meta of their own (the teleop node publishes an operator message's ``seq`` as ``op_seq``),
and one beyond int64 would then make the node's own ``encode`` refuse.

Speed without trusting less: a stream repeats its array layout (names, dtypes, shapes) and meta in every
message, so ``encode`` packs that part once per layout and ``decode_header`` reads the per-message fields
(topic, stamp, seq) straight from the bytes and looks the rest up among byte strings it has already validated
in full; any other byte sequence takes the complete parse. ``decode_header`` + ``Header.message`` split
``decode`` so a receiver can take small array frames as bytes and large ones zero-copy (``bus.transport``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import msgpack
import numpy as np

SCHEMA_VERSION = 1

# Canonical ``np.dtype(...).str`` spellings; big-endian and object/str/void dtypes are refused.
ALLOWED_DTYPES = frozenset(
    {"|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"}
)

DEFAULT_MAX_FRAME_BYTES = 32 * 1024 * 1024  # one camera frame pair or a point cloud fits; a stray GB does not
MAX_HEADER_BYTES = 64 * 1024
MAX_TOPIC_BYTES = 255
MAX_BUFFERS = 64
MAX_NDIM = 32  # numpy's own limit
MAX_META_ITEMS = 64
MAX_DIM = 2**32 - 1  # per dimension: longer axes are no sensor's data, and their products overflow numpy's intp
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # meta ints must fit (see the module docstring)

# Stable categories of rejection, used as keys of the subscribers' ``rejects`` counters.
REJECT_KINDS = ("frames", "size", "header", "version", "topic", "dtype", "shape", "layout", "meta")

_NP_DTYPES = {name: np.dtype(name) for name in ALLOWED_DTYPES}
_HEADER_KEYS = frozenset({"v", "topic", "t", "seq", "bufs", "meta"})
_BUF_KEYS = frozenset({"name", "dtype", "shape"})

MetaValue = None | bool | int | float | str
Frame = Any  # bytes, memoryview, zmq.Frame or anything else exposing the buffer protocol


class MessageError(ValueError):
    """A message that cannot be encoded or was received malformed.

    ``kind`` is a short stable category (one of ``REJECT_KINDS``) for counting; ``reason`` says what was
    wrong and what was expected.
    """

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


@dataclass(slots=True)
class Message:
    """One decoded message.

    Attributes:
        topic: stream name, e.g. ``"robot/tactile"``.
        stamp: sender's clock when the data was taken, seconds (monotonic or lockstep time).
        seq: per-topic sequence number assigned by the sender; gaps mean drops.
        arrays: named arrays. After ``decode`` they are read-only views into the received frames
            (no copy); call ``.copy()`` to modify or to keep one beyond the message's life cheaply.
        meta: small flat dict of scalars and strings.
    """

    topic: str
    stamp: float
    seq: int = 0
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, MetaValue] = field(default_factory=dict)


def encode(msg: Message, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> list[Frame]:
    """Frames for ``socket.send_multipart(frames, copy=False)``.

    Array frames are the arrays themselves (no copy here; pyzmq copies those under its copy threshold
    and sends larger ones zero-copy, so do not write into a published array until it has gone out).
    Raises ``MessageError`` for anything ``decode`` would refuse, so bad data fails at the sender.

    The header bytes are exactly ``msgpack.packb(header)`` with the keys in wire order; the ``bufs`` part
    is packed once per array layout (names, dtypes, shapes) and reused, so a stream of same-shaped
    messages pays only for its stamp, sequence number and meta.
    """
    topic_prefix = _topic_prefix(msg.topic)
    arrays = msg.arrays
    if len(arrays) > MAX_BUFFERS:
        raise MessageError("frames", f"{len(arrays)} arrays, at most {MAX_BUFFERS} allowed")
    frames: list[Frame] = [topic_prefix[0], b""]
    layout = []
    for name, arr in arrays.items():
        if not isinstance(arr, np.ndarray):
            raise MessageError("dtype", f"array {name!r} is {type(arr).__name__}, expected np.ndarray")
        if not arr.flags.c_contiguous:
            raise MessageError("layout", f"array {name!r} is not C-contiguous; pass np.ascontiguousarray(...)")
        layout.append((name, arr.dtype.str, arr.shape))
        frames.append(arr)
    key = (tuple(layout), max_frame_bytes)
    bufs_packed = _ENCODED_LAYOUTS.get(key)
    if bufs_packed is None:
        bufs_packed = _pack_layout(arrays, max_frame_bytes)
        _remember(_ENCODED_LAYOUTS, key, bufs_packed)
    try:
        stamp, seq = float(msg.stamp), int(msg.seq)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MessageError("header", f"stamp {msg.stamp!r:.40} / seq {msg.seq!r:.40} are not numbers: {exc}") from exc
    if not math.isfinite(stamp) or not 0 <= seq <= INT64_MAX:
        raise MessageError("header", f"stamp {msg.stamp!r} must be finite and seq {msg.seq!r} in 0..2**63 - 1")
    meta = _clean_meta(msg.meta) if msg.meta else None
    try:
        meta_packed = _packb(meta) if meta else _EMPTY_MAP
        frames[1] = b"".join((topic_prefix[1], _F64.pack(stamp), _SEQ_KEY, _packb(seq), bufs_packed,
                              _META_KEY, meta_packed))
    except (OverflowError, ValueError, TypeError) as exc:  # e.g. an int beyond 64 bits
        raise MessageError("header", f"header of {msg.topic!r} cannot be packed: {exc}") from exc
    if len(frames[1]) > MAX_HEADER_BYTES:
        raise MessageError("size", f"header is {len(frames[1])} bytes, limit {MAX_HEADER_BYTES}; shrink meta")
    return frames


def decode(frames: Sequence[Frame], *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Message:
    """Validate received frames and view the array buffers without copying.

    Raises ``MessageError`` (and nothing else) on any malformed input.
    """
    if len(frames) < 2:
        raise MessageError("frames", f"{len(frames)} frame(s), expected topic + header + buffers")
    if len(frames) > 2 + MAX_BUFFERS:
        raise MessageError("frames", f"{len(frames)} frames, at most {2 + MAX_BUFFERS} allowed")
    views = [_view(f) for f in frames]
    for i, view in enumerate(views):
        if view.nbytes > max_frame_bytes:
            raise MessageError("size", f"frame {i} is {view.nbytes} bytes, limit {max_frame_bytes}")
    return decode_header(views[0], views[1], max_frame_bytes=max_frame_bytes).message(views[2:])


class BufferSpec(NamedTuple):
    """One validated entry of a header's ``bufs``: what the matching frame must hold."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    nbytes: int


class Header(NamedTuple):
    """A validated header: everything about a message except its array frames.

    ``decode_header`` + ``message`` is ``decode`` split in two, so a receiver can read the header first
    and then take each array frame the cheapest way for its size (small: copied bytes; large: zero-copy).
    """

    topic: str
    stamp: float
    seq: int
    buffers: tuple[BufferSpec, ...]
    meta: Mapping[str, MetaValue]

    def message(self, frames: Sequence[Frame]) -> Message:
        """The message with ``frames`` (one per buffer) as read-only array views; checks count and sizes."""
        if len(frames) != len(self.buffers):
            raise MessageError(
                "frames", f"{len(frames) + 2} frames but header lists {len(self.buffers)} buffers"
            )
        arrays: dict[str, np.ndarray] = {}
        for spec, frame in zip(self.buffers, frames, strict=True):
            buf = frame if type(frame) is bytes else _view(frame)  # bytes: already a read-only buffer
            nbytes = len(buf) if type(buf) is bytes else buf.nbytes
            if nbytes != spec.nbytes:
                raise MessageError(
                    "shape", f"array {spec.name!r}: {nbytes} bytes do not fit shape {spec.shape} of"
                    f" {spec.dtype.str} ({spec.nbytes} bytes)"
                )
            try:
                arr = np.ndarray(spec.shape, spec.dtype, buf)
            except (ValueError, TypeError, OverflowError) as exc:  # bounds checked already; numpy has the last word
                raise MessageError(
                    "shape", f"array {spec.name!r}: shape {spec.shape} of {spec.dtype.str} is not constructible: {exc}"
                ) from exc
            if type(buf) is not bytes and not buf.readonly:  # e.g. a zmq.Frame
                arr.flags.writeable = False
            arrays[spec.name] = arr
        return Message(self.topic, self.stamp, self.seq, arrays, dict(self.meta) if self.meta else {})


def decode_header(
    topic_frame: Frame, header_frame: Frame, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> Header:
    """Validate the topic and header frames of a message; arrays must fit ``max_frame_bytes`` (extent included).

    Fast path: a header laid out as ``encode`` writes it (keys in wire order) is split into its per-message
    fields, read directly, and its ``bufs``/``meta`` bytes, which repeat from message to message, are
    looked up among layouts already validated in full. Anything else, and every layout seen for the first
    time, goes through the complete msgpack parse and validation. Same bytes give the same parse, so the
    cache never accepts what the full check would refuse; a cached layout also records its largest extent,
    so a receiver with a smaller ``max_frame_bytes`` than the one that cached it takes the full check.
    """
    topic_view = topic_frame if type(topic_frame) is bytes else _view(topic_frame)
    raw = header_frame if type(header_frame) is bytes else _view(header_frame)
    if len(raw) > MAX_HEADER_BYTES:  # checked before any copy
        raise MessageError("size", f"header frame is {len(raw)} bytes, limit {MAX_HEADER_BYTES}")
    if type(raw) is not bytes:
        raw = raw.tobytes()
    fields = _split_header(raw)
    if fields is not None:
        topic_bytes, stamp, seq, tail = fields
        cached = _DECODED_LAYOUTS.get(tail)
        if cached is not None and math.isfinite(stamp) and seq <= INT64_MAX and cached[2] <= max_frame_bytes:
            topic = _TOPICS.get(topic_bytes)
            if topic is not None:
                if topic_view != topic_bytes:
                    raise MessageError(
                        "topic", f"topic frame {bytes(topic_view[:64])!r} differs from header topic {topic!r}"
                    )
                return Header(topic, stamp, seq, cached[0], cached[1])
    header = _unpack_header(raw)
    topic = _check_header_fields(header)
    if topic_view != topic.encode():
        raise MessageError("topic", f"topic frame {bytes(topic_view[:64])!r} differs from header topic {topic!r}")
    specs = header["bufs"]
    if len(specs) > MAX_BUFFERS:
        raise MessageError("frames", f"header lists {len(specs)} buffers, at most {MAX_BUFFERS} allowed")
    buffers = []
    widest = 0
    for spec in specs:
        name, dtype, shape = _check_buf_spec(spec)
        if any(b.name == name for b in buffers):
            raise MessageError("header", f"array name {name!r} repeated")
        nbytes, extent = _check_extent(name, shape, dtype.itemsize, max_frame_bytes)
        widest = max(widest, extent)
        buffers.append(BufferSpec(name, dtype, shape, nbytes))
    meta = _check_meta(header["meta"])
    result = Header(topic, header["t"], header["seq"], tuple(buffers), MappingProxyType(dict(meta)))
    if fields is not None:  # a well-formed header in wire order: remember its layout and topic
        _remember(_DECODED_LAYOUTS, fields[3], (result.buffers, result.meta, widest))
        _remember(_TOPICS, fields[0], topic)
    return result


# ----------------------------------------------------------------------------------------------- header bytes
# The fixed parts of a header in wire order (see the module docstring), as msgpack writes them.
_HEAD = b"\x86\xa1v" + msgpack.packb(SCHEMA_VERSION) + b"\xa5topic"
_STAMP_KEY = b"\xa1t\xcb"  # "t", then a float64
_SEQ_KEY = b"\xa3seq"
_BUFS_KEY = b"\xa4bufs"
_META_KEY = b"\xa4meta"
_EMPTY_MAP = b"\x80"
_F64 = struct.Struct(">d")
# msgpack unsigned int encodings: type byte -> (struct, width)
_UINTS = {0xCC: struct.Struct(">B"), 0xCD: struct.Struct(">H"), 0xCE: struct.Struct(">I"), 0xCF: struct.Struct(">Q")}
_CACHE_LIMIT = 512  # distinct layouts / topics remembered; a flood of new ones only costs the slow path
_ENCODED_LAYOUTS: dict[tuple, bytes] = {}
_DECODED_LAYOUTS: dict[bytes, tuple[tuple[BufferSpec, ...], Mapping[str, MetaValue], int]] = {}  # + widest extent
_TOPICS: dict[bytes, str] = {}
_TOPIC_PREFIXES: dict[str, tuple[bytes, bytes]] = {}
_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def _remember(cache: dict, key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value


def _topic_prefix(topic: object) -> tuple[bytes, bytes]:
    """(topic frame, header bytes up to and including the stamp's type byte), cached per topic."""
    cached = _TOPIC_PREFIXES.get(topic) if type(topic) is str else None
    if cached is None:
        raw = _check_topic(topic)
        cached = (raw, _HEAD + _packb(topic) + _STAMP_KEY)
        if type(topic) is str:
            _remember(_TOPIC_PREFIXES, topic, cached)
    return cached


def _pack_layout(arrays: Mapping[str, np.ndarray], max_frame_bytes: int) -> bytes:
    """``"bufs"`` key and value as msgpack bytes, after checking names, dtypes and sizes."""
    bufs = []
    for name, arr in arrays.items():
        if not isinstance(name, str) or not name:
            raise MessageError("header", f"array name {name!r} must be a non-empty str")
        dtype = arr.dtype.str
        if dtype not in ALLOWED_DTYPES:
            raise MessageError("dtype", f"array {name!r} has dtype {dtype}, expected one of {_allowed()}")
        _check_extent(name, arr.shape, arr.itemsize, max_frame_bytes)
        bufs.append({"name": name, "dtype": dtype, "shape": list(arr.shape)})
    return _BUFS_KEY + _packb(bufs)


def _split_header(raw: bytes) -> tuple[bytes, float, int, bytes] | None:
    """(topic bytes, stamp, seq, bufs-and-meta bytes) of a header in wire order; None for any other layout."""
    if not raw.startswith(_HEAD):
        return None
    i = len(_HEAD)
    if len(raw) < i + 2:
        return None
    kind = raw[i]
    if 0xA1 <= kind <= 0xBF:  # fixstr of 1..31 bytes
        n, i = kind & 0x1F, i + 1
    elif kind == 0xD9:  # str8
        n, i = raw[i + 1], i + 2
    else:
        return None
    topic = raw[i:i + n]
    i += n
    if len(topic) != n or raw[i:i + 3] != _STAMP_KEY or len(raw) < i + 3 + 8 + 5:
        return None
    (stamp,) = _F64.unpack_from(raw, i + 3)
    i += 11
    if raw[i:i + 4] != _SEQ_KEY:
        return None
    kind = raw[i + 4]
    if kind < 0x80:  # positive fixint
        seq, i = kind, i + 5
    else:
        fmt = _UINTS.get(kind)
        if fmt is None or len(raw) < i + 5 + fmt.size:
            return None
        (seq,) = fmt.unpack_from(raw, i + 5)
        i += 5 + fmt.size
    return topic, stamp, seq, raw[i:]


def _allowed() -> str:
    return ", ".join(sorted(ALLOWED_DTYPES))


def _view(frame: Frame) -> memoryview:
    try:
        view = memoryview(frame)
    except (TypeError, ValueError, BufferError) as exc:
        raise MessageError("frames", f"frame of type {type(frame).__name__} exposes no buffer") from exc
    if view.ndim == 1 and view.itemsize == 1:
        return view
    if view.nbytes == 0:
        return memoryview(b"")
    if not view.c_contiguous:
        raise MessageError("layout", f"frame of type {type(frame).__name__} is not contiguous")
    try:
        return view.cast("B")
    except (TypeError, ValueError) as exc:  # e.g. a structured or non-native format
        raise MessageError("layout", f"frame of type {type(frame).__name__} ({view.format!r:.40}) is not plain "
                           f"bytes: {exc}") from exc


def _check_topic(topic: object) -> bytes:
    if not isinstance(topic, str) or not topic:
        raise MessageError("topic", f"topic {topic!r} must be a non-empty str")
    raw = topic.encode()
    if len(raw) > MAX_TOPIC_BYTES:
        raise MessageError("topic", f"topic is {len(raw)} bytes, at most {MAX_TOPIC_BYTES}")
    return raw


def _unpack_header(view: memoryview | bytes) -> dict:
    try:
        header = msgpack.unpackb(
            view,
            raw=False,
            strict_map_key=True,
            max_bin_len=0,
            max_ext_len=0,
            max_str_len=MAX_HEADER_BYTES,
            max_array_len=MAX_BUFFERS + MAX_NDIM,
            max_map_len=MAX_META_ITEMS,
        )
    except Exception as exc:  # msgpack raises several unrelated types on hostile input
        raise MessageError("header", f"not a msgpack document ({type(exc).__name__}: {exc})") from exc
    if not isinstance(header, dict):
        raise MessageError("header", f"header is a {type(header).__name__}, expected a map")
    return header


def _is_int(x: object) -> bool:
    return type(x) is int  # msgpack yields exact ints; excludes bool


def _check_header_fields(header: dict) -> str:
    """Check the header's fixed fields; returns the topic."""
    version = header.get("v")
    if version != SCHEMA_VERSION or not _is_int(version):
        raise MessageError("version", f"schema version {version!r}, expected {SCHEMA_VERSION}")
    keys = set(header)
    if keys != _HEADER_KEYS:
        raise MessageError(
            "header", f"keys {sorted(map(str, keys))}, expected {sorted(_HEADER_KEYS)}"
        )
    topic = header["topic"]
    if not isinstance(topic, str) or not topic or len(topic.encode()) > MAX_TOPIC_BYTES:
        raise MessageError("topic", f"header topic {topic!r:.80} must be a non-empty str")
    stamp = header["t"]
    if not isinstance(stamp, float) or not math.isfinite(stamp):
        raise MessageError("header", f"stamp t={stamp!r:.40} must be a finite float")
    seq = header["seq"]
    if not _is_int(seq) or not 0 <= seq <= INT64_MAX:
        raise MessageError("header", f"seq={seq!r:.40} must be an int in 0..2**63 - 1")
    if not isinstance(header["bufs"], list):
        raise MessageError("header", f"bufs is {type(header['bufs']).__name__}, expected a list")
    if not isinstance(header["meta"], dict):
        raise MessageError("meta", f"meta is {type(header['meta']).__name__}, expected a map")
    return topic


def _check_buf_spec(spec: object) -> tuple[str, np.dtype, tuple[int, ...]]:
    if not isinstance(spec, dict) or set(spec) != _BUF_KEYS:
        raise MessageError("header", f"buffer spec {spec!r:.80} must be a map with keys {sorted(_BUF_KEYS)}")
    name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
    if not isinstance(name, str) or not name:
        raise MessageError("header", f"buffer name {name!r:.80} must be a non-empty str")
    np_dtype = _NP_DTYPES.get(dtype) if isinstance(dtype, str) else None
    if np_dtype is None:
        raise MessageError("dtype", f"array {name!r}: dtype {dtype!r:.40}, expected one of {_allowed()}")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise MessageError(
            "shape", f"array {name!r}: shape {shape!r:.80} must be a list of <= {MAX_NDIM} ints"
        )
    for n in shape:
        if type(n) is not int or not 0 <= n <= MAX_DIM:
            raise MessageError("shape", f"array {name!r}: shape {shape!r:.80} must hold ints in 0..{MAX_DIM}")
    return name, np_dtype, tuple(shape)


def _check_extent(name: str, shape: tuple[int, ...], itemsize: int, max_frame_bytes: int) -> tuple[int, int]:
    """(bytes, extent) of an array layout, both within ``max_frame_bytes``: extent counts zero dims as 1, so a
    shape numpy cannot build (its dims' product overflows) is refused even when the array would be empty."""
    for n in shape:
        if not 0 <= n <= MAX_DIM:
            raise MessageError("shape", f"array {name!r}: dimension {n} outside 0..{MAX_DIM} in shape {shape}")
    nbytes = math.prod(shape) * itemsize
    if nbytes > max_frame_bytes:
        raise MessageError("size", f"array {name!r} is {nbytes} bytes (shape {shape}), limit {max_frame_bytes}")
    extent = math.prod(n or 1 for n in shape) * itemsize
    if extent > max_frame_bytes:
        raise MessageError(
            "shape", f"array {name!r}: shape {shape} spans {extent} bytes counting zero dims as 1, limit"
            f" {max_frame_bytes}; numpy may not build it"
        )
    return nbytes, extent


def _check_meta(meta: dict) -> dict[str, MetaValue]:
    for key, value in meta.items():
        if not isinstance(key, str):
            raise MessageError("meta", f"meta key {key!r:.40} must be a str")
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise MessageError("meta", f"meta[{key!r}] is {type(value).__name__}, expected a scalar or str")
        if type(value) is int and not INT64_MIN <= value <= INT64_MAX:
            raise MessageError("meta", f"meta[{key!r}]={value} does not fit int64 (-2**63 .. 2**63 - 1)")
    return meta


def _clean_meta(meta: Mapping[str, Any]) -> dict[str, MetaValue]:
    """Meta as plain python scalars (numpy scalars unwrapped), refusing anything nested."""
    if len(meta) > MAX_META_ITEMS:
        raise MessageError("meta", f"{len(meta)} meta items, at most {MAX_META_ITEMS}")
    clean: dict[str, MetaValue] = {}
    for key, value in meta.items():
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(key, str):
            raise MessageError("meta", f"meta key {key!r} must be a str")
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise MessageError("meta", f"meta[{key!r}] is {type(value).__name__}, expected a scalar or str")
        if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
            raise MessageError("meta", f"meta[{key!r}]={value} does not fit int64 (-2**63 .. 2**63 - 1); receivers "
                               "refuse it")
        clean[key] = value
    return clean
