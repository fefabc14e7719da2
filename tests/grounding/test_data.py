"""Recording grounding episodes: files, events, atomic writes, resuming, the loader and its errors.

Episodes are cut at ``MAX_SECONDS`` (the lift's box is off the table by then, the wipe's sponge not yet down) and
filmed at 32 px, so the whole module records a few seconds of simulation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bus.cli import UsageError
from grounding import data
from grounding.data import (
    EVENT_KINDS,
    INDEX,
    EpisodeJob,
    GroundingDataError,
    GroundingSet,
    episode_path,
    read_episode,
    read_meta,
    record_episode,
    record_episodes,
    resample,
    shown_goal,
)
from grounding.instructions import IGNORE, KEYFRAME_BINS, TARGET_KEYS

TASKS = ["lift", "wipe", "peel"]
SEED = 500000
MAX_SECONDS = 2.4
SIZE = 32
HZ = 8.0


def _record(out: Path, episodes: int = 3, **kw) -> list[dict]:
    settings = {"image_size": SIZE, "frame_hz": HZ, "max_seconds": MAX_SECONDS, "progress": False, **kw}
    return record_episodes(TASKS, episodes, SEED, out, **settings)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("ground")
    return root, _record(root)


def test_files_and_index(recorded):
    root, metas = recorded
    assert sorted(p.name for p in root.iterdir()) == [INDEX, *(f"episode_{k:06d}.npz" for k in range(3))]
    index = json.loads((root / INDEX).read_text())
    assert [r["task"] for r in index["episodes"]] == TASKS
    assert index["recording"]["image_size"] == SIZE
    for k, meta in enumerate(metas):
        frames, times, stored = read_episode(episode_path(root, k))
        assert stored == meta
        assert meta["task"] == TASKS[k] and meta["seed"] == SEED + k and meta["looks"] == "train"
        assert frames.dtype == np.uint8 and frames.shape == (len(times), SIZE, SIZE, 3) == (meta["frames"], SIZE,
                                                                                             SIZE, 3)
        assert times[0] == 0.0 and times[-1] == pytest.approx(meta["duration"]) == pytest.approx(MAX_SECONDS)
        assert np.all(np.diff(times) > 0) and np.all(np.diff(times) <= 1 / HZ + 0.02 + 1e-9)
        assert meta["cut"] and meta["success"] is None  # cut short: no outcome
        assert set(meta["goal"]["fields"]) == set(meta["shown"]) | ({"force"} if meta["task"] == "wipe" else
                                                                    {"grip"} if meta["task"] == "lift" else set())
        assert frames.std() > 5  # a rendered scene, not a blank image


def test_events_lie_inside_the_episode(recorded):
    _, metas = recorded
    for meta in metas:
        for e in meta["events"]:
            assert e["kind"] in EVENT_KINDS
            assert 0.0 <= e["t"] <= meta["duration"]
            assert e["visible"] == EVENT_KINDS[e["kind"]][1]
        assert [e["t"] for e in meta["events"]] == sorted(e["t"] for e in meta["events"])
    lift = {e["kind"]: e["t"] for e in metas[0]["events"]}
    assert lift["contact_onset"] < lift["box_lifted"] < MAX_SECONDS  # the paddles close, then the box rises
    assert "box_top" not in lift  # still rising when the clip was cut
    p = metas[1]["perturbation"]
    moved = [e for e in metas[1]["events"] if e["kind"] == "surface_moved"]
    assert (p["time"] <= MAX_SECONDS) == bool(moved)
    if moved:
        assert moved[0]["t"] == pytest.approx(p["time"], abs=1e-6) and moved[0]["detail"] == p["kind"]


def test_same_seed_same_episode(recorded):
    root, metas = recorded
    job = EpisodeJob(0, "lift", SEED, SIZE, HZ, "train", MAX_SECONDS, "unused")
    frames, times, meta = record_episode(job)
    stored_frames, stored_times, stored = read_episode(episode_path(root, 0))
    assert np.array_equal(frames, stored_frames) and np.array_equal(times, stored_times) and meta == stored


def test_worker_processes_record_the_same_episodes(tmp_path):
    short = {"max_seconds": 0.5}
    here = _record(tmp_path / "one", episodes=2, **short)
    spawned = _record(tmp_path / "two", episodes=2, jobs=2, **short)
    assert here == spawned
    for k in range(2):
        a, _, _ = read_episode(episode_path(tmp_path / "one", k))
        b, _, _ = read_episode(episode_path(tmp_path / "two", k))
        assert np.array_equal(a, b)


def test_resume_records_only_the_missing_episodes(recorded, tmp_path, monkeypatch):
    root, metas = recorded
    copy = tmp_path / "copy"
    copy.mkdir()
    for k in (0, 2):
        (copy / episode_path(root, k).name).write_bytes(episode_path(root, k).read_bytes())
    (copy / "episode_000003.npz.tmp").write_bytes(b"half an episode")  # what a killed run leaves
    asked = []
    real = data.record_episode

    def spy(job):
        asked.append(job.index)
        return real(job)

    monkeypatch.setattr(data, "record_episode", spy)
    again = _record(copy)
    assert asked == [1]
    assert again == metas
    assert not list(copy.glob("*.tmp"))
    assert len(json.loads((copy / INDEX).read_text())["episodes"]) == 3


def test_resume_with_other_settings_is_refused(recorded):
    root, _ = recorded
    with pytest.raises(GroundingDataError, match="image_size=32, not image_size=48"):
        _record(root, image_size=48)


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def broken(file, **arrays):
        file.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", broken)
    with pytest.raises(OSError, match="disk full"):
        data.write_episode(tmp_path / "episode_000000.npz", np.zeros((1, 4, 4, 3), np.uint8), np.zeros(1), {})
    assert list(tmp_path.iterdir()) == []


def test_loader_shapes_and_targets(recorded):
    root, metas = recorded
    ds = GroundingSet(root, "train", num_frames=6)
    assert len(ds) > 0
    kinds = set()
    for sample in ds:
        kinds.add(sample["kind"])
        assert sample["frames"].shape == (6, SIZE, SIZE, 3) and sample["frames"].dtype == np.uint8
        assert sample["times"][0] == 0.0 and sample["times"][-1] == 1.0
        assert isinstance(sample["text"], str) and sample["text"]
        assert set(sample["targets"]) == set(TARGET_KEYS)
        bin_ = sample["targets"]["keyframe_bin"]
        assert (bin_ != IGNORE) == (sample["kind"] == "when")
        assert bin_ == IGNORE or 0 <= bin_ < KEYFRAME_BINS
    assert {"explicit", "repeat", "modified", "when"} <= kinds
    assert len(GroundingSet(root, "train", ["when"], num_frames=6)) == sum(s["kind"] == "when" for s in ds)
    again = GroundingSet(root, "train", num_frames=6)
    assert [s["text"] for s in again] == [s["text"] for s in ds]  # the same samples every time


def test_resample_picks_the_nearest_frame_in_time():
    frames = np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1).repeat(3, axis=3)
    times = np.array([0.0, 0.1, 0.5, 0.9, 1.0])
    picked, t = resample(frames, times, 1.0, 3)
    assert picked[:, 0, 0, 0].tolist() == [0, 2, 4]
    assert t.tolist() == [0.0, 0.5, 1.0]


def test_loader_errors(recorded, tmp_path):
    root, _ = recorded
    with pytest.raises(FileNotFoundError, match="no grounding dataset"):
        GroundingSet(tmp_path / "nothing", "train")
    with pytest.raises(UsageError, match="split=test"):
        GroundingSet(root, "test")
    with pytest.raises(UsageError, match="instructions=why"):
        GroundingSet(root, "train", ["why"])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / INDEX).write_bytes((root / INDEX).read_bytes())
    (broken / "episode_000000.npz").write_bytes(b"not a zip file")
    (broken / "episode_000001.npz").write_bytes(episode_path(root, 1).read_bytes())
    with pytest.raises(GroundingDataError, match="episode_000000.npz: not a readable episode file"):
        GroundingSet(broken, "train")
    with pytest.raises(FileNotFoundError, match="episode_000002.npz: no such episode file"):
        GroundingSet(broken, "train", episodes=[2])
    with pytest.raises(GroundingDataError, match=r"episodes \[7\] are not in"):
        GroundingSet(root, "train", episodes=[7])
    np.savez(broken / "episode_000001.npz", frames=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(GroundingDataError, match="corrupt episode meta"):
        read_meta(broken / "episode_000001.npz")


def test_shown_goal_reads_what_was_done():
    def wipe(*done: int) -> str | None:
        return shown_goal("wipe", {"done": [k in done for k in range(6)]})["region"]

    assert wipe(0, 1, 2) == "left" and wipe(3, 4, 5) == "right" and wipe(0, 1, 2, 3, 4) == "all"
    assert wipe(0, 1, 3) is None and wipe() is None and wipe(0) is None
    assert shown_goal("peel", {"done": [True] * 3 + [False] * 5})["region"] == "left"  # 3 of the 4 left strips

    def lift(h: float, dropped: bool = False) -> str | None:
        return shown_goal("lift", {"height": h, "dropped": dropped})["height"]

    assert (lift(0.05), lift(0.14), lift(0.23), lift(0.085), lift(0.14, True)) == ("low", "normal", "high", None,
                                                                                  None)


def test_cli(recorded, capsys):
    root, metas = recorded
    argv = [f"out={root}", "tasks=[lift,wipe,peel]", "episodes=3", f"seed={SEED}", f"image_size={SIZE}",
            f"max_seconds={MAX_SECONDS}", "progress=false"]
    assert data.main(argv) == 0  # all three are there already: nothing is recorded
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["episodes"] == 3 and set(summary["tasks"]) == set(TASKS)
    assert summary["episodes_with_event"]["contact_onset"] >= 1
    assert data.main([f"out={root}", "tasks=[wipe,cook]"]) == 2
    assert "tasks=cook: no such task" in capsys.readouterr().err
    assert data.main(["episodes=3"]) == 2
    assert "out=DIR is required" in capsys.readouterr().err
