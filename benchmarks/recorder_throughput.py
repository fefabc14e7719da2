"""Episode recorder throughput, fsync included, for a realistic teleoperation stream mix.

Streams (simulated seconds of data, appended as fast as possible in timestamp order):
two tactile pads (R, C, 2) float64 marker offsets at 200 Hz, wrench (6,) at 200 Hz, tcp pose (7,) at 50 Hz,
two cameras (96, 96, 3) uint8 at 10 Hz. Each episode is begun, filled and committed (chunk files fsynced
every ``flush`` seconds of recorded time, metadata and renames fsynced) into a fresh dataset directory.

Reports MB/s and samples/s of the whole begin..commit, the real-time factor (recorded seconds per wall
second: how much headroom a live recorder has), and the append latency tail (p99 and max), whose max is the
longest stall a flush causes to the recording loop. Writes ``benchmarks/results/recorder_throughput.json`` (``out``)
and prints that JSON as the last line. Run: ``python -m benchmarks.recorder_throughput [seconds=5] [repeats=5]
[flush=[0.5,0.1]] [dir=DIR]`` (~5 s).
"""

from __future__ import annotations

import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bus.cli import UsageError, command
from bus.config import compose

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import publish  # noqa: E402
from dataset.format import verify_dataset  # noqa: E402
from dataset.recorder import EpisodeRecorder  # noqa: E402
from sensors.types import MARKER_GRID  # noqa: E402


@dataclass
class ThroughputConfig:
    """``configs/benchmarks/recorder_throughput.yaml``."""

    seconds: float = 5.0  # simulated seconds per episode
    repeats: int = 5
    flush: list[float] = field(default_factory=lambda: [0.5, 0.1])  # flush intervals to compare, s
    dir: str | None = None  # where to write; None: a temporary directory
    out: str = "benchmarks/results/recorder_throughput.json"

    def __post_init__(self) -> None:
        if self.seconds <= 0 or self.repeats < 1:
            raise UsageError(f"seconds={self.seconds} must be > 0 and repeats={self.repeats} >= 1")
        if not self.flush or min(self.flush) <= 0:
            raise UsageError(f"flush=[{','.join(map(str, self.flush))}]: expected intervals > 0, e.g. flush=[0.5,0.1]")

# name, rate Hz, shape, dtype
MIX = [
    ("tactile_left", 200, (*MARKER_GRID, 2), np.float64),
    ("tactile_right", 200, (*MARKER_GRID, 2), np.float64),
    ("wrench", 200, (6,), np.float64),
    ("tcp_pose", 50, (7,), np.float64),
    ("camera_wrist", 10, (96, 96, 3), np.uint8),
    ("camera_scene", 10, (96, 96, 3), np.uint8),
]


def make_events(seconds: float, seed: int = 0) -> list[tuple[float, str, np.ndarray]]:
    """All samples of the mix, sorted by timestamp, generated before timing starts."""
    rng = np.random.default_rng(seed)
    events = []
    for name, rate, shape, dtype in MIX:
        n = int(seconds * rate)
        for i in range(n):
            if dtype == np.uint8:
                v = rng.integers(0, 256, shape, dtype=np.uint8)
            else:
                v = rng.standard_normal(shape).astype(dtype)
            events.append((1000.0 + i / rate, name, v))
    events.sort(key=lambda e: e[0])
    return events


def record_once(root: Path, events: list[tuple[float, str, np.ndarray]], flush_s: float) -> dict:
    """One begin..commit; returns wall time and per-append latencies."""
    rec = EpisodeRecorder(root, flush_interval_s=flush_s)
    lat = np.empty(len(events))
    t_start = time.perf_counter()
    rec.begin({"task": "benchmark", "seed": 0})
    for j, (t, name, v) in enumerate(events):
        a = time.perf_counter()
        rec.append(name, t, v)
        lat[j] = time.perf_counter() - a
    c = time.perf_counter()
    ep = rec.commit(success=True)
    commit_s = time.perf_counter() - c
    wall = time.perf_counter() - t_start
    on_disk = sum(p.stat().st_size for p in ep.iterdir())
    return {"wall_s": wall, "commit_s": commit_s, "lat": lat, "bytes_on_disk": on_disk,
            "chunks": sum(1 for p in ep.iterdir() if p.suffix == ".npz")}


@command("benchmarks.recorder_throughput")
def main(argv: Sequence[str] | None = None) -> int:
    args = compose(ThroughputConfig, "benchmarks/recorder_throughput", list(sys.argv[1:] if argv is None else argv),
                   "recorder_throughput", "seconds=2 repeats=2 flush=[0.5]")

    events = make_events(args.seconds)
    payload = sum(v.nbytes + 8 for _, _, v in events)  # values + float64 timestamps
    base = Path(tempfile.mkdtemp(prefix="recorder_bench_", dir=args.dir))
    runs = []
    try:
        for flush_s in args.flush:
            trials = [record_once(base / f"flush_{flush_s}", events, flush_s) for _ in range(args.repeats)]
            problems, _ = verify_dataset(base / f"flush_{flush_s}")
            assert not problems, problems
            wall = float(np.median([r["wall_s"] for r in trials]))
            lat = np.concatenate([r["lat"] for r in trials])
            runs.append({
                "flush_interval_s": flush_s,
                "wall_s_median": round(wall, 4),
                "mb_per_s": round(payload / wall / 1e6, 2),
                "samples_per_s": round(len(events) / wall),
                "realtime_factor": round(args.seconds / wall, 1),
                "commit_ms_median": round(1e3 * float(np.median([r["commit_s"] for r in trials])), 2),
                "append_us_p50": round(1e6 * float(np.percentile(lat, 50)), 1),
                "append_us_p99": round(1e6 * float(np.percentile(lat, 99)), 1),
                "append_ms_max": round(1e3 * float(lat.max()), 2),
                "chunk_files_per_episode": trials[0]["chunks"],
                "bytes_on_disk_per_episode": trials[0]["bytes_on_disk"],
            })
            print(f"flush {flush_s:>4} s: {runs[-1]['mb_per_s']:7.1f} MB/s {runs[-1]['samples_per_s']:>8} samples/s"
                  f"  x{runs[-1]['realtime_factor']} real time  append p99 {runs[-1]['append_us_p99']} us"
                  f"  max {runs[-1]['append_ms_max']} ms  commit {runs[-1]['commit_ms_median']} ms")
    finally:
        shutil.rmtree(base, ignore_errors=True)

    result = {
        "benchmark": "recorder_throughput",
        "mix": [{"stream": n, "rate_hz": r, "shape": list(s), "dtype": np.dtype(d).str} for n, r, s, d in MIX],
        "simulated_seconds": args.seconds,
        "samples_per_episode": len(events),
        "payload_mb_per_episode": round(payload / 1e6, 3),
        "repeats": args.repeats,
        "runs": runs,
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                    "write_dir": str(args.dir or tempfile.gettempdir())},
    }
    publish(result, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
