"""EpisodeRecorder: mixed-rate round trip, validation, periodic flush, crash (kill -9), disk full, permissions."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from dataset.cli import main
from dataset.durable import sha256_file
from dataset.format import (
    INPROGRESS_PREFIX,
    list_episodes,
    list_in_progress,
    load_stream,
    read_meta,
    recover_dataset,
    verify_dataset,
)
from dataset.recorder import EpisodeMeta, EpisodeRecorder, RecorderError

REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    """Wall clock under test control, so flush deadlines are deterministic."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _mixed_streams(rng: np.random.Generator, seconds: float = 1.0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Streams at their native rates with jittered (non-grid) timestamps, as a robot node would stamp them."""

    def stamps(rate: float) -> np.ndarray:
        n = int(seconds * rate)
        return np.arange(n) / rate + rng.uniform(0, 0.2 / rate, n) + 100.0

    out = {}
    for name, rate, shape, dtype in [
        ("tcp_pose", 50, (7,), np.float64),
        ("wrench", 200, (6,), np.float64),
        ("marker_offset", 200, (2, 7, 9, 2), np.float32),
        ("scene_rgb", 10, (96, 96, 3), np.uint8),
        ("action", 24, (7,), np.float32),
    ]:
        t = stamps(rate)
        v = (rng.standard_normal((t.size, *shape)) * 50).astype(dtype)
        out[name] = (t, v)
    return out


def _interleaved(streams: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[tuple[float, str, np.ndarray]]:
    events = [(float(t[i]), name, v[i]) for name, (t, v) in streams.items() for i in range(t.size)]
    return sorted(events, key=lambda e: e[0])


def test_round_trip_mixed_rates_preserves_timestamps_exactly(tmp_path: Path) -> None:
    streams = _mixed_streams(np.random.default_rng(0))
    rec = EpisodeRecorder(tmp_path / "ds", flush_interval_s=0.1)
    rec.begin(EpisodeMeta(task="wipe", seed=7, user={"operator": "ana"}))
    for t, name, v in _interleaved(streams):
        rec.append(name, t, v)
    ep = rec.commit(success=True)

    assert ep.name == "episode_000000" and not list_in_progress(tmp_path / "ds")
    meta = read_meta(ep)
    assert (meta["task"], meta["seed"], meta["success"], meta["salvaged"]) == ("wipe", 7, True, False)
    assert meta["user"] == {"operator": "ana"} and meta["schema_version"] == 1
    for name, (t, v) in streams.items():
        t2, v2 = load_stream(ep, name)
        np.testing.assert_array_equal(t2, t)  # bit-exact
        assert v2.dtype == v.dtype and v2.shape == v.shape
        np.testing.assert_array_equal(v2, v)
        assert len(meta["streams"][name]["chunks"]) > 1, "1 s at 0.1 s flushes must give several chunks"
    assert meta["streams"]["wrench"]["rate_hz"] == pytest.approx(200, rel=0.05)
    assert meta["streams"]["scene_rgb"]["rate_hz"] == pytest.approx(10, rel=0.05)
    assert verify_dataset(tmp_path / "ds") == ([], [])


def test_bad_sample_is_rejected_and_recording_continues(tmp_path: Path) -> None:
    rec = EpisodeRecorder(tmp_path)
    rec.begin({"task": "peel", "seed": 1})
    rec.append("wrench", 0.0, np.zeros(6))
    with pytest.raises(ValueError, match=r"'wrench'.*expected dtype <f8 shape \(6,\).*got dtype <f8 shape \(7,\)"):
        rec.append("wrench", 0.01, np.zeros(7))
    with pytest.raises(ValueError, match=r"'wrench'.*expected dtype <f8.*got dtype <f4"):
        rec.append("wrench", 0.01, np.zeros(6, np.float32))
    with pytest.raises(ValueError, match=r"'wrench'.*timestamp > 0.0, got 0.0"):
        rec.append("wrench", 0.0, np.ones(6))
    with pytest.raises(ValueError, match="'bad name'"):
        rec.append("bad name", 0.0, np.ones(6))
    with pytest.raises(ValueError, match="'obj'.*not storable"):
        rec.append("obj", 0.0, np.array([None], dtype=object))
    rec.append("wrench", 0.01, np.ones(6))
    ep = rec.commit(success=False)
    t, v = load_stream(ep, "wrench")
    np.testing.assert_array_equal(t, [0.0, 0.01])
    np.testing.assert_array_equal(v, [np.zeros(6), np.ones(6)])
    assert sorted(read_meta(ep)["streams"]) == ["wrench"]


def test_flushes_periodically_by_wall_time_and_by_recorded_time(tmp_path: Path) -> None:
    clock = FakeClock()
    rec = EpisodeRecorder(tmp_path, flush_interval_s=0.5, clock=clock)
    work = rec.begin({"task": "wipe"})
    rec.append("wrench", 0.0, np.zeros(6))
    assert not list(work.glob("wrench.*"))  # still buffered
    clock.now = 0.6  # wall deadline passes
    rec.append("wrench", 0.01, np.zeros(6))
    assert [p.name for p in work.glob("wrench.*")] == ["wrench.000000.npz"]
    rec.append("wrench", 0.02, np.zeros(6))
    rec.append("wrench", 0.6, np.zeros(6))  # recorded-time deadline passes (lockstep sims run faster than wall)
    assert sorted(p.name for p in work.glob("wrench.*")) == ["wrench.000000.npz", "wrench.000001.npz"]
    assert not list(work.glob("*.tmp"))
    rec.abort()
    assert not work.exists() and list_episodes(tmp_path) == []


def test_commit_indices_increase_and_abort_leaves_nothing(tmp_path: Path) -> None:
    rec = EpisodeRecorder(tmp_path)
    names = []
    for i in range(3):
        rec.begin({"task": "lift", "seed": i})
        rec.append("tcp_pose", 0.0, np.zeros(7))
        if i == 1:
            rec.abort()
            continue
        names.append(rec.commit(success=True).name)
    assert names == ["episode_000000", "episode_000001"]
    assert [read_meta(p)["seed"] for p in list_episodes(tmp_path)] == [0, 2]
    assert not list_in_progress(tmp_path)


CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from dataset.recorder import EpisodeRecorder

    rec = EpisodeRecorder(sys.argv[1], flush_interval_s=0.02)
    for ep in range(2):
        rec.begin({"task": "wipe", "seed": ep})
        for i in range(100):
            rec.append("wrench", i / 200, np.full(6, i, dtype=np.float64))
            if i % 4 == 0:
                rec.append("tcp_pose", i / 200, np.full(7, i, dtype=np.float64))
        rec.commit(success=True)
    rec.begin({"task": "wipe", "seed": 2})
    i = 0
    while True:  # the third episode streams until the process is killed
        rec.append("wrench", i / 200, np.full(6, i, dtype=np.float64))
        if i % 4 == 0:
            rec.append("tcp_pose", i / 200, np.full(7, i, dtype=np.float64))
        i += 1
        time.sleep(0.0005)
    """
)


def _flushed_samples(work: Path, stream: str) -> int:
    total = 0
    for p in sorted(work.glob(f"{stream}.*.npz")):
        with np.load(p, allow_pickle=False) as z:
            total += z["t"].shape[0]
    return total


def test_kill_9_mid_episode_loses_only_the_unflushed_tail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "ds"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(root)], cwd=REPO)
    try:
        deadline = time.monotonic() + 20
        work = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, "recorder child died on its own"
            works = list(root.glob(f"{INPROGRESS_PREFIX}*")) if root.exists() else []
            if works and len(list_episodes(root)) == 2 and len(list(works[0].glob("wrench.*.npz"))) >= 3:
                work = works[0]
                break
            time.sleep(0.02)
        assert work is not None, "child never flushed chunks of its third episode"
        before = {p: sha256_file(p) for ep in list_episodes(root) for p in ep.iterdir()}
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    # finished episodes untouched
    assert {p: sha256_file(p) for p in before} == before
    assert verify_dataset(root)[0] == []
    # info reads the dataset with the crashed directory present, in a fresh process
    out = subprocess.run([sys.executable, "-m", "dataset", "info", str(root)], cwd=REPO,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert (info["episodes"], info["in_progress"]) == (2, 1)
    assert info["streams"]["wrench"]["rate_hz"] == pytest.approx(200)

    n_wrench, n_pose = _flushed_samples(work, "wrench"), _flushed_samples(work, "tcp_pose")
    assert n_wrench >= 3
    assert main(["recover", str(root)]) == 0
    printed = capsys.readouterr().out
    assert "episode_000002 (salvaged)" in printed and f"wrench {n_wrench}" in printed
    eps = list_episodes(root)
    assert len(eps) == 3 and not list_in_progress(root)
    meta = read_meta(eps[2])
    assert meta["salvaged"] is True and meta["success"] is None and meta["seed"] == 2
    t, v = load_stream(eps[2], "wrench")
    assert t.size == n_wrench
    np.testing.assert_array_equal(v[:, 0], np.arange(n_wrench))  # every flushed sample, in order, no gap
    np.testing.assert_array_equal(t, np.arange(n_wrench) / 200)
    assert load_stream(eps[2], "tcp_pose")[0].size == n_pose
    assert verify_dataset(root)[0] == []
    assert {p: sha256_file(p) for p in before} == before


def test_recover_drops_torn_last_chunk_and_skips_live_episodes(tmp_path: Path) -> None:
    rec = EpisodeRecorder(tmp_path)
    rec.begin({"task": "wipe", "seed": 5})
    for k in range(2):
        for i in range(10):
            t = k * 10 + i
            rec.append("wrench", t / 200, np.full(6, t, dtype=np.float64))
            rec.append("tcp_pose", t / 200, np.full(7, t, dtype=np.float64))
        rec.flush()
    work = rec.work_dir
    assert work is not None
    assert [r.outcome for r in recover_dataset(tmp_path)] == ["live-skipped"]  # still locked by rec
    rec.close()  # like a crash: flushed, undecided, lock released

    torn = work / "wrench.000001.npz"
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    (work / "wrench.000002.npz.tmp").write_bytes(b"half a write")
    (report,) = recover_dataset(tmp_path)
    assert report.outcome == "salvaged" and report.kept == {"tcp_pose": 20, "wrench": 10}
    assert any(d.startswith("wrench.000001.npz: torn") for d in report.dropped)
    assert any(d.startswith("wrench.000002.npz.tmp") for d in report.dropped)
    ep = list_episodes(tmp_path)[0]
    np.testing.assert_array_equal(load_stream(ep, "wrench")[1][:, 0], np.arange(10))
    assert read_meta(ep)["salvaged"] is True
    assert verify_dataset(tmp_path) == ([], [])


def test_recover_removes_an_episode_with_nothing_flushed(tmp_path: Path) -> None:
    rec = EpisodeRecorder(tmp_path)
    rec.begin({"task": "wipe"})
    rec._reset()  # simulated crash before the first flush
    (report,) = recover_dataset(tmp_path)
    assert report.outcome == "empty-removed" and not list_in_progress(tmp_path)


@pytest.fixture
def disk_full(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Make ``os.write`` fail with ENOSPC for files under ``tmp_path`` while ``state['full']`` is set."""
    real_write = os.write
    state = {"full": False}

    def write(fd: int, data: bytes) -> int:
        if state["full"]:
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            if target.startswith(str(tmp_path)):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    return state


def test_disk_full_raises_recorder_error_and_keeps_everything(tmp_path: Path, disk_full: dict) -> None:
    clock = FakeClock()
    rec = EpisodeRecorder(tmp_path, clock=clock, flush_interval_s=10.0)
    rec.begin({"task": "wipe", "seed": 0})
    rec.append("wrench", 0.0, np.zeros(6))
    first = rec.commit(success=True)
    before = {p: sha256_file(p) for p in first.iterdir()}

    rec.begin({"task": "wipe", "seed": 1})
    for i in range(5):
        rec.append("wrench", i / 200, np.full(6, i, dtype=np.float64))
    disk_full["full"] = True
    with pytest.raises(RecorderError) as exc:
        rec.flush()
    assert exc.value.errno == errno.ENOSPC
    assert "ENOSPC" in str(exc.value) and "wrench.000000.npz" in exc.value.path and "disk full" in str(exc.value)
    assert rec.work_dir is not None and not list(rec.work_dir.glob("*.tmp"))  # no half-written file left
    rec.append("wrench", 5 / 200, np.full(6, 5, dtype=np.float64))  # recording goes on
    with pytest.raises(RecorderError, match="ENOSPC"):
        rec.commit(success=True)
    assert {p: sha256_file(p) for p in first.iterdir()} == before and len(list_episodes(tmp_path)) == 1

    disk_full["full"] = False  # space freed: the buffered samples were kept
    second = rec.commit(success=True)
    np.testing.assert_array_equal(load_stream(second, "wrench")[1][:, 0], np.arange(6))
    assert verify_dataset(tmp_path) == ([], [])


def test_permission_error_on_root_is_reported_with_path_and_errno(tmp_path: Path, monkeypatch) -> None:
    rec = EpisodeRecorder(tmp_path)
    rec.begin({"task": "wipe"})
    rec.append("wrench", 0.0, np.zeros(6))
    rec.commit(success=True)

    def denied(path, mode=0o777):  # root ignores chmod, so simulate what a read-only directory does
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(os, "mkdir", denied)
    with pytest.raises(RecorderError) as exc:
        rec.begin({"task": "wipe"})
    assert exc.value.errno == errno.EACCES and exc.value.path.startswith(str(tmp_path))
    assert "EACCES" in str(exc.value) and "permission" in str(exc.value)
    assert not rec.recording and verify_dataset(tmp_path) == ([], [])


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_root_directory(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    root.chmod(0o500)
    try:
        with pytest.raises(RecorderError) as exc:
            EpisodeRecorder(root).begin({"task": "wipe"})
        assert exc.value.errno == errno.EACCES and str(root) in str(exc.value)
    finally:
        root.chmod(0o700)


def test_crash_between_metadata_and_rename_is_completed_by_recover(tmp_path: Path, monkeypatch) -> None:
    rec = EpisodeRecorder(tmp_path)
    rec.begin({"task": "wipe", "seed": 4})
    rec.append("wrench", 0.0, np.zeros(6))
    rec.append("wrench", 0.005, np.ones(6))

    def io_error(src, dst):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(src))

    monkeypatch.setattr(os, "rename", io_error)
    with pytest.raises(RecorderError, match="EIO"):
        rec.commit(success=True)
    monkeypatch.undo()
    rec.close()
    assert list_episodes(tmp_path) == [] and len(list_in_progress(tmp_path)) == 1
    (report,) = recover_dataset(tmp_path)
    meta = read_meta(list_episodes(tmp_path)[0])
    assert report.kept == {"wrench": 2} and meta["success"] is True and meta["salvaged"] is True
    assert verify_dataset(tmp_path) == ([], [])
