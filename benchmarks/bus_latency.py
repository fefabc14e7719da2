"""PUB/SUB latency and throughput across two processes on loopback TCP: our bus vs raw pyzmq.

For each message size (tactile-sized, image-sized) and each implementation (``bus``: validated
``bus.transport`` messages; ``raw``: ``send_multipart``/``recv_multipart`` of the same byte count with
no header encode/decode) a subscriber subprocess is started and the parent publishes:

1. latency phase: paced messages; the subscriber records ``monotonic() - stamp`` on receipt (after
   decode for ``bus``). CLOCK_MONOTONIC is shared by all processes of one Linux host.
2. throughput phase: the parent publishes flat out for a fixed time with ``ZMQ_XPUB_NODROP`` set on
   both publishers, so a full queue blocks the sender instead of dropping: messages/s is the rate both
   processes sustain together, with every message delivered (both share 2 cores here). The CPU time both
   processes spend in this phase (all their threads, ZeroMQ's I/O threads included) divided by the messages
   delivered is ``cpu_us_per_msg``: unlike messages/s it barely moves with other load on the machine.

Each (size, implementation) case runs ``rounds`` times, bus and raw alternating within a round so both see
the same background load (this machine is shared); the table shows per-case medians and the ratio is the
median of the per-round bus/raw ratios.

Prints a table, writes ``benchmarks/results/bus_latency.json`` (``out``) and prints that JSON as the last line.
Run: ``python -m benchmarks.bus_latency [rounds=5] [out=FILE]`` (about 8 s per round).
"""

from __future__ import annotations

import json
import os
import platform
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import publish  # noqa: E402
from bus.cli import UsageError, choose, command  # noqa: E402
from bus.clock import RateKeeper, RealtimeClock  # noqa: E402
from bus.config import compose, override  # noqa: E402
from bus.message import Message, decode, encode  # noqa: E402
from bus.transport import Publisher, Subscriber, bind_to_random_port  # noqa: E402
from sensors.types import MARKER_COLS, MARKER_ROWS  # noqa: E402


@dataclass
class BusLatencyConfig:
    """``configs/benchmarks/bus_latency.yaml``."""

    rounds: int = 5  # bus/raw pairs per size; medians are reported
    out: str = "benchmarks/results/bus_latency.json"
    role: str = "main"  # main: the benchmark; sub: the subscriber process it starts (with impl and address)
    impl: str = "bus"
    address: str = ""

    def __post_init__(self) -> None:
        choose("role", self.role, ("main", "sub"), "role")
        choose("impl", self.impl, ("bus", "raw"), "implementation")
        if self.rounds < 1:
            raise UsageError(f"rounds={self.rounds} must be >= 1")

# (name, arrays) with shapes from the design: 2 pads x R C markers x 2-D offsets and 2 x 14 x 18 depth;
# two 96 x 96 RGB cameras.
SIZES: dict[str, dict[str, tuple[tuple[int, ...], str]]] = {
    "tactile": {"offset": ((2, MARKER_ROWS * MARKER_COLS, 2), "<f4"), "depth": ((2, 14, 18), "<f4")},
    "image": {"rgb": ((2, 96, 96, 3), "|u1")},
}
LAT_COUNT = 400
LAT_HZ = 500.0
THR_SECONDS = 1.0
STAMP = struct.Struct("<d")


def apply_flow_control(sock: zmq.Socket) -> None:
    """Block (up to 5 s, then raise) instead of dropping when the subscriber lags: a fair throughput."""
    sock.setsockopt(zmq.XPUB_NODROP, 1)
    sock.setsockopt(zmq.SNDTIMEO, 5000)


def make_arrays(size: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: (rng.random(shape) * 200).astype(dtype) for name, (shape, dtype) in SIZES[size].items()}


# ---------------------------------------------------------------- subscriber process


def run_subscriber(impl: str, address: str) -> None:
    """Receive until the "end" topic; print one JSON line of raw timings."""
    lat: list[float] = []
    thr_count, thr_first, thr_last = 0, 0.0, 0.0
    cpu_first = cpu_last = 0.0

    if impl == "bus":
        sub = Subscriber(address)

        def receive() -> tuple[str, float, int]:
            msg = sub.recv()
            assert msg is not None
            return msg.topic, msg.stamp, sum(a.nbytes for a in msg.arrays.values())
    else:
        sock = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(address)

        def receive() -> tuple[str, float, int]:
            frames = sock.recv_multipart(copy=False)
            stamp = STAMP.unpack_from(frames[1].buffer)[0]
            return frames[0].bytes.decode(), stamp, sum(len(f) for f in frames[2:])

    while True:
        topic, stamp, nbytes = receive()
        now = time.monotonic()
        if topic.endswith(".lat"):
            lat.append(now - stamp)
        elif topic.endswith(".thr"):
            if thr_count == 0:
                thr_first, cpu_first = now, time.process_time()
            thr_last = now
            thr_count += 1
            if thr_count % 64 == 0:
                cpu_last = time.process_time()
        elif topic == "end":
            break
    print(json.dumps({
        "lat": lat, "thr_count": thr_count, "thr_span": thr_last - thr_first,
        "thr_cpu": max(cpu_last, time.process_time()) - cpu_first,
    }))


# ---------------------------------------------------------------- publisher (parent) side


class RawSender:
    """Raw pyzmq with the same frames and byte counts as ``bus``, a stamp in the header's place."""

    def __init__(self, size: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        apply_flow_control(self.sock)
        self.address = bind_to_random_port(self.sock)
        self.arrays = list(make_arrays(size).values())
        self.header_len = len(encode(Message(f"{size}.thr", 1.0, 1000, make_arrays(size)))[1])

    def wait_for_subscriber(self, timeout: float) -> bool:
        return bool(self.sock.poll(int(timeout * 1000))) and self.sock.recv()[:1] == b"\x01"

    def publish(self, topic: str, arrays: dict[str, np.ndarray] | None = None) -> None:
        header = STAMP.pack(time.monotonic()).ljust(self.header_len, b"\0")
        self.sock.send_multipart([topic.encode(), header, *(self.arrays if arrays else [])], copy=False)

    def close(self) -> None:
        self.sock.close(linger=0)


class BusSender:
    def __init__(self) -> None:
        self.pub = Publisher("tcp://127.0.0.1:*")
        apply_flow_control(self.pub.socket)
        self.address = self.pub.address

    def wait_for_subscriber(self, timeout: float) -> bool:
        return self.pub.wait_for_subscriber(timeout=timeout)

    def publish(self, topic: str, arrays: dict[str, np.ndarray] | None = None) -> None:
        self.pub.publish(topic, arrays)

    def close(self) -> None:
        self.pub.close()


def run_case(impl: str, size: str) -> dict:
    sender = BusSender() if impl == "bus" else RawSender(size)
    arrays = make_arrays(size)
    child = subprocess.Popen(
        [sys.executable, __file__, "role=sub", f"impl={impl}", override("address", sender.address)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        if not sender.wait_for_subscriber(timeout=20.0):
            raise RuntimeError(f"{impl}/{size}: subscriber never connected")
        rate = RateKeeper(LAT_HZ, RealtimeClock(spin_s=0.0))
        for _ in range(LAT_COUNT):
            sender.publish(f"{size}.lat", arrays)
            rate.sleep()
        time.sleep(0.05)
        sent = 0
        start, cpu_start = time.monotonic(), time.process_time()
        while time.monotonic() - start < THR_SECONDS:
            for _ in range(50):
                sender.publish(f"{size}.thr", arrays)
            sent += 50
        send_span, send_cpu = time.monotonic() - start, time.process_time() - cpu_start
        sender.publish("end")  # arrives after every earlier message
        out, _ = child.communicate(timeout=20.0)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        sender.close()
    result = json.loads(out.strip().splitlines()[-1])
    lat_us = np.asarray(result["lat"]) * 1e6
    payload = sum(a.nbytes for a in arrays.values())
    thr = result["thr_count"] / result["thr_span"] if result["thr_span"] > 0 else float("nan")
    return {
        "impl": impl,
        "size": size,
        "payload_bytes": payload,
        "latency_us_p50": float(np.percentile(lat_us, 50)),
        "latency_us_p99": float(np.percentile(lat_us, 99)),
        "latency_samples": int(lat_us.size),
        "throughput_msgs_s": float(thr),
        "throughput_MB_s": float(thr * payload / 1e6),
        "sent_msgs_s": sent / send_span,
        "delivered_fraction": result["thr_count"] / sent,
        "cpu_us_per_msg": (send_cpu + result["thr_cpu"]) / max(result["thr_count"], 1) * 1e6,
    }


def median_case(runs: list[dict]) -> dict:
    """One case's runs summarised by the median of every measured figure."""
    out = {k: runs[0][k] for k in ("impl", "size", "payload_bytes", "latency_samples")}
    for key in ("latency_us_p50", "latency_us_p99", "throughput_msgs_s", "throughput_MB_s", "sent_msgs_s",
                "delivered_fraction", "cpu_us_per_msg"):
        out[key] = float(np.median([r[key] for r in runs]))
    out["rounds"] = len(runs)
    return out


def codec_cost_us(size: str, n: int = 3000) -> dict[str, float]:
    """In-process encode and decode time per message (no sockets)."""
    msg = Message(f"{size}.thr", 1.0, 1, make_arrays(size))
    start = time.perf_counter()
    for _ in range(n):
        frames = encode(msg)
    encode_us = (time.perf_counter() - start) / n * 1e6
    wire = [f if isinstance(f, bytes) else f.tobytes() for f in frames]
    start = time.perf_counter()
    for _ in range(n):
        decode(wire)
    decode_us = (time.perf_counter() - start) / n * 1e6
    return {"encode_us": encode_us, "decode_us": decode_us}


@command("benchmarks.bus_latency")
def main(argv: Sequence[str] | None = None) -> int:
    args = compose(BusLatencyConfig, "benchmarks/bus_latency", list(sys.argv[1:] if argv is None else argv),
                   "bus_latency", "rounds=1")
    if args.role == "sub":
        run_subscriber(args.impl, args.address)
        return 0

    t0 = time.monotonic()
    runs = []
    for size in SIZES:
        for r in range(args.rounds):
            for impl in ("bus", "raw") if r % 2 == 0 else ("raw", "bus"):
                runs.append(run_case(impl, size) | {"round": r})
    cases = [median_case([c for c in runs if c["size"] == size and c["impl"] == impl])
             for size in SIZES for impl in ("bus", "raw")]
    codec = {size: codec_cost_us(size) for size in SIZES}
    ratios, round_ratios, cpu_ratios = {}, {}, {}
    for size in SIZES:
        ours, raw = (next(c for c in cases if c["size"] == size and c["impl"] == i) for i in ("bus", "raw"))
        cpu_ratios[size] = raw["cpu_us_per_msg"] / ours["cpu_us_per_msg"]
        per_round = []
        for r in range(args.rounds):
            ours, raw = (next(c for c in runs if (c["size"], c["impl"], c["round"]) == (size, i, r))
                         for i in ("bus", "raw"))
            per_round.append(ours["throughput_msgs_s"] / raw["throughput_msgs_s"])
        round_ratios[size] = per_round
        ratios[size] = float(np.median(per_round))

    header = (f"{'size':8} {'impl':4} {'bytes':>7} {'p50 us':>8} {'p99 us':>8} {'msgs/s':>9} {'MB/s':>8}"
              f" {'deliv':>6} {'cpu us/msg':>10}")
    print(header)
    print("-" * len(header))
    for c in cases:
        print(
            f"{c['size']:8} {c['impl']:4} {c['payload_bytes']:7d} {c['latency_us_p50']:8.0f} "
            f"{c['latency_us_p99']:8.0f} {c['throughput_msgs_s']:9.0f} {c['throughput_MB_s']:8.1f} "
            f"{c['delivered_fraction']:6.2f} {c['cpu_us_per_msg']:10.1f}"
        )
    for size in SIZES:
        print(
            f"{size}: bus/raw throughput {ratios[size]:.2f} (rounds: "
            f"{' '.join(f'{x:.2f}' for x in round_ratios[size])}); CPU efficiency raw/bus {cpu_ratios[size]:.2f};"
            f" encode {codec[size]['encode_us']:.1f} us, "
            f"decode {codec[size]['decode_us']:.1f} us in process"
        )

    report = {
        "benchmark": "bus_latency",
        "transport": "tcp loopback, PUB/SUB, 2 processes",
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                 "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()},
        "settings": {"latency_msgs": LAT_COUNT, "latency_hz": LAT_HZ, "throughput_seconds": THR_SECONDS,
                     "rounds": args.rounds},
        "cases": cases,
        "runs": runs,
        "codec_us": codec,
        "throughput_ratio_bus_over_raw": ratios,
        "throughput_ratio_per_round": round_ratios,
        "cpu_per_msg_ratio_raw_over_bus": cpu_ratios,
        "wall_s": time.monotonic() - t0,
    }
    publish(report, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
