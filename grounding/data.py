"""Expert episodes filmed by the scene camera, with the moments that happened in them, for grounding instructions.

    python -m grounding.data out=data/ground tasks=[wipe,peel,lift] episodes=300 seed=500000 [image_size=64]
        [frame_hz=8] [looks=train] [jobs=2]

Episode ``k`` runs the force-aware expert (``sim.experts``) on ``tasks[k % len(tasks)]`` with seed ``seed + k``: the
seed fixes the physics, the goal (the task's ``random`` goal setting) and the look, so an episode is the same
whichever process records it and whatever was recorded before. Each becomes ``episode_XXXXXX.npz`` (numpy arrays
only, read with ``allow_pickle=False``): ``frames`` (T, S, S, 3) uint8 from the scene camera at ``frame_hz`` plus the
last state, ``times`` (T,) float64 seconds of simulation time, and ``meta``, a JSON string: task, goal, seed, looks,
outcome, what the video shows of the goal (``shown``) and the ``events`` read off the simulation as it ran (see
:data:`EVENT_KINDS`). ``dataset.json`` indexes them. Every file is written under a temporary name and renamed, so a
killed run leaves whole episodes only, and running the same command again records just the missing ones.

:class:`GroundingSet` turns a folder of episodes into (video, instruction, targets) samples through
:mod:`grounding.instructions`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bus.cli import UsageError, choose, command
from bus.config import compose

if TYPE_CHECKING:
    from grounding.instructions import Instruction
    from sim.env import ContactRichEnv

FORMAT = "grounding-episode/1"
INDEX = "dataset.json"
TMP_SUFFIX = ".tmp"
TIME_DECIMALS = 6  # times rounded to 1 us: MuJoCo's accumulated clock drifts by ~1e-15 s
CONTACT_FORCE = 1.0  # N of true contact force (the task's own reading) that counts as touching
CONTACT_HOLD = 0.1  # s a touch, or its absence, must last to count: a one-step bounce is not an onset
LIFTED = 0.01  # m the box must rise to have left the table
TOP_FRACTION = 0.95  # the box reached its top when it first came this close to the highest it got
TOP_STAY = 0.5  # s the box must stay up after reaching its top for the top to count
SLIP = 0.01  # m the box sank relative to the paddles (paddle rise minus box rise) before it counts as slipping
SHOWN_FRACTION = 2 / 3  # of a half's marks / strips done for the video to show that half done

# What an event means, and whether the scene camera can see it happen (only visible ones are asked about).
EVENT_KINDS: dict[str, tuple[str, bool]] = {
    "contact_onset": ("the tool (any paddle, for lift) starts touching the object: true force over CONTACT_FORCE "
                      "for CONTACT_HOLD", True),
    "contact_offset": ("the touch ends, for CONTACT_HOLD at least", True),
    "surface_moved": ("the surface starts rising, sinking or tilting (detail: raise | lower | tilt)", True),
    "mass_added": ("the box starts getting heavier: nothing to see", False),
    "friction_dropped": ("the box starts getting slippery: nothing to see", False),
    "mark_wiped": ("a mark is wiped off (detail: its index, 0 nearest the robot)", True),
    "strip_peeled": ("a strip is peeled (detail: its index, 0 nearest the robot)", True),
    "box_lifted": ("the box leaves the table: LIFTED above its start", True),
    "box_top": ("the box first comes within TOP_FRACTION of the highest it got, TOP_STAY before the end", True),
    "box_slipped": ("the box has sunk SLIP between the paddles while they hold it up", True),
    "failure": ("the task failed and ended (detail: why)", False),
}
PERTURBATION_EVENTS = {"raise": "surface_moved", "lower": "surface_moved", "tilt": "surface_moved",
                       "mass": "mass_added", "friction": "friction_dropped"}
PIECE_EVENTS = {"wipe": ("mark_wiped", "removed"), "peel": ("strip_peeled", "peeled")}  # event, task's done mask


class GroundingDataError(UsageError):
    """An episode file or index that is missing a part, corrupt, or recorded with other settings."""


@dataclass
class GroundingDataConfig:
    """``configs/grounding/data.yaml``."""

    out: str = ""
    tasks: list[str] = field(default_factory=lambda: ["wipe", "peel", "lift"])
    episodes: int = 30
    seed: int = 500000
    # 64 px: the smallest square in which the scene camera still shows the wipe marks as a row of dark pixels and
    # the peeled strips as a paler band, so the half that was done can be seen; at 32 px they merge into the surface.
    image_size: int = 64
    frame_hz: float = 8.0
    looks: str = "train"
    max_seconds: float | None = None
    jobs: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        from sim.looks import LOOKS
        from sim.registry import TASKS

        if not self.out:
            raise UsageError("out=DIR is required: the folder to record the episodes into")
        if not self.tasks:
            raise UsageError(f"tasks= is empty; choose from {', '.join(sorted(TASKS))}")
        for task in self.tasks:
            choose("tasks", task, TASKS, "task")
        choose("looks", self.looks, LOOKS, "looks split")
        if self.episodes < 1:
            raise UsageError(f"episodes={self.episodes}: expected at least 1")
        if self.image_size < 16:
            raise UsageError(f"image_size={self.image_size}: expected at least 16 pixels (64 shows a wiped mark)")
        if not 0 < self.frame_hz <= 50:
            raise UsageError(f"frame_hz={self.frame_hz:g}: expected a rate in (0, 50], the control rate at most")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise UsageError(f"max_seconds={self.max_seconds:g}: expected a positive number of seconds or null")
        if self.jobs < 1:
            raise UsageError(f"jobs={self.jobs}: expected at least 1 worker process")

    def recording(self) -> dict[str, Any]:
        """The settings every episode of one folder shares (a resumed run must use the same)."""
        return {"tasks": list(self.tasks), "seed": self.seed, "image_size": self.image_size,
                "frame_hz": self.frame_hz, "looks": self.looks, "max_seconds": self.max_seconds}


@dataclass(frozen=True)
class EpisodeJob:
    """One episode to record: all a worker process needs."""

    index: int
    task: str
    seed: int
    image_size: int
    frame_hz: float
    looks: str
    max_seconds: float | None
    path: str


# ------------------------------------------------------------------------------------------------------ events
class Debounced:
    """A boolean reading that flips only after the new value held for ``hold`` seconds; the flip is dated to the
    first reading of the new value."""

    def __init__(self, hold: float):
        self.hold = hold
        self.state = False
        self.since: float | None = None  # when the reading first disagreed with the state

    def update(self, t: float, value: bool) -> float | None:
        """The time the state flipped, if this reading completes a flip; else None."""
        if value == self.state:
            self.since = None
            return None
        if self.since is None:
            self.since = t
        if t - self.since >= self.hold - 1e-9:
            self.state, flipped, self.since = value, self.since, None
            return flipped
        return None


class EventWatcher:
    """Reads what happens in an episode off the task's own state after every control step: true contact forces,
    which marks or strips are done, the box's height and its sinking between the paddles, the perturbation."""

    def __init__(self, env: ContactRichEnv):
        self.env = env
        self.task = env.task
        self.events: list[dict[str, Any]] = []
        self.contact = Debounced(CONTACT_HOLD)
        name = self.task.name
        self.piece_event, self.piece_attr = PIECE_EVENTS.get(name, (None, None))
        self.done_before: np.ndarray | None = None
        self.lift = name == "lift"
        self.heights: list[tuple[float, float]] = []
        self.slipped = False

    def add(self, kind: str, t: float, detail: Any = None) -> None:
        event: dict[str, Any] = {"kind": kind, "t": round(float(t), TIME_DECIMALS), "visible": EVENT_KINDS[kind][1]}
        if detail is not None:
            event["detail"] = detail
        self.events.append(event)

    def step(self) -> None:
        """Call after every ``env.step``."""
        t, task = self.env.time, self.task
        force = float(np.max(task.forces)) if self.lift else float(task.force)
        flipped = self.contact.update(t, force > CONTACT_FORCE)
        if flipped is not None:
            self.add("contact_onset" if self.contact.state else "contact_offset", flipped)
        if self.piece_attr is not None:
            done = np.asarray(getattr(task, self.piece_attr), dtype=bool).copy()
            if self.done_before is not None:
                for k in np.flatnonzero(done & ~self.done_before):
                    self.add(self.piece_event, t, int(k))
            self.done_before = done
        if self.lift:
            self._watch_box(t)

    def _watch_box(self, t: float) -> None:
        task, d = self.task, self.env.data
        height = float(task.height)
        if height > LIFTED and not any(e["kind"] == "box_lifted" for e in self.events):
            self.add("box_lifted", t)
        self.heights.append((t, height))
        paddles = float(np.mean([d.site_xpos[a.tcp_site][2] for a in self.env.arms])) - task.z0
        if not self.slipped and paddles > 2 * LIFTED and paddles - height > SLIP:
            self.slipped = True
            self.add("box_slipped", t)

    def finish(self, info: dict[str, Any]) -> list[dict[str, Any]]:
        """The episode's events in time order, completed with what is known only at its end."""
        end = self.env.time
        p = self.task.perturbation
        if p is not None and p.time <= end:
            self.add(PERTURBATION_EVENTS[p.kind], p.time, p.kind)
        if self.heights:
            times, heights = np.array(self.heights).T
            top = float(heights.max())
            t_top = float(times[np.argmax(heights >= TOP_FRACTION * top)])
            if top > 2 * LIFTED and t_top <= end - TOP_STAY:  # a box still rising when the clip ends has no top
                self.add("box_top", t_top)
        if info.get("failure"):
            self.add("failure", end, str(info["failure"]))
        return sorted(self.events, key=lambda e: e["t"])


def shown_goal(task: str, outcome: dict[str, Any]) -> dict[str, str | None]:
    """The goal fields the video shows the robot carried out (None: it shows none of the values clearly): the half
    whose marks / strips were done, the height the box ended at. Forces and grips cannot be seen."""
    if "done" in outcome:
        from sim.tasks.surface import region_mask

        done = np.asarray(outcome["done"], dtype=bool)
        left = float(done[region_mask("left", len(done))].mean())
        right = float(done[region_mask("right", len(done))].mean())
        region = None
        if left >= SHOWN_FRACTION and right >= SHOWN_FRACTION:
            region = "all"
        elif left >= SHOWN_FRACTION and right == 0:
            region = "left"
        elif right >= SHOWN_FRACTION and left == 0:
            region = "right"
        return {"region": region}
    if "height" in outcome:
        from sim.tasks.lift import HEIGHTS

        h = float(outcome["height"])
        height = None
        if not outcome.get("dropped"):
            if h >= HEIGHTS["high"][0]:
                height = "high"
            elif h >= HEIGHTS["normal"][0]:
                height = "normal"
            elif HEIGHTS["low"][0] <= h <= HEIGHTS["low"][1]:
                height = "low"
        return {"height": height}
    raise ValueError(f"{task} outcome {sorted(outcome)}: expected 'done' (wipe, peel) or 'height' (lift)")


def _outcome(env: ContactRichEnv, info: dict[str, Any]) -> dict[str, Any]:
    task = env.task
    if task.name in PIECE_EVENTS:
        return {"done": np.asarray(getattr(task, PIECE_EVENTS[task.name][1]), dtype=bool).tolist()}
    failure = str(info.get("failure") or "")
    return {"height": round(float(task.height), 4), "dropped": "slipped out" in failure}


# --------------------------------------------------------------------------------------------------- recording
_ENVS: dict[tuple[str, int, str], tuple[Any, Any]] = {}  # (task, image size, looks) -> (env, expert), per process


def _env_and_expert(task: str, image_size: int, looks: str) -> tuple[ContactRichEnv, Any]:
    key = (task, image_size, looks)
    if key not in _ENVS:
        from sim.experts import make_expert
        from sim.registry import make_env

        _ENVS[key] = (make_env(task, goal="random", cameras=False, image_size=image_size, looks=looks),
                      make_expert(task, force_feedback=True))
    return _ENVS[key]


def record_episode(job: EpisodeJob) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Run one expert episode and film it: frames (T, S, S, 3) uint8, times (T,) s, meta."""
    from sim.env import SCENE_CAMERA

    env, expert = _env_and_expert(job.task, job.image_size, job.looks)
    obs, info = env.reset(seed=job.seed)
    expert.reset(env)
    watcher = EventWatcher(env)
    frames: list[np.ndarray] = []
    times: list[float] = []
    due = 0  # index of the next frame: frame k is the first state at or after k / frame_hz
    while True:
        if env.time >= due / job.frame_hz - 1e-9:
            frames.append(env.render_camera(SCENE_CAMERA, job.image_size).copy())
            times.append(round(env.time, TIME_DECIMALS))
            while due / job.frame_hz <= env.time + 1e-9:
                due += 1
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        watcher.step()
        cut = job.max_seconds is not None and env.time >= job.max_seconds - 1e-9
        if terminated or truncated or cut:
            break
    end = round(env.time, TIME_DECIMALS)
    if times[-1] < end:  # the last state: a wiped region or a held box is complete only here
        frames.append(env.render_camera(SCENE_CAMERA, job.image_size).copy())
        times.append(end)
    goal = env.task.goal
    outcome = _outcome(env, info)
    ended = bool(terminated or truncated)
    p = env.task.perturbation
    meta = {
        "format": FORMAT, "index": job.index, "task": job.task, "seed": job.seed, "looks": job.looks,
        "image_size": job.image_size, "frame_hz": job.frame_hz, "max_seconds": job.max_seconds,
        "goal": {"name": goal.name, "fields": {k: getattr(goal, k) for k in goal.choices()}},
        "success": bool(info["success"]) if ended or info["success"] else None,  # None: cut before the end
        "cut": not ended, "score": float(info["score"]), "failure": info["failure"], "goal_miss": info["goal_miss"],
        "duration": end, "frames": len(frames),
        "perturbation": None if p is None else {"kind": p.kind, "time": p.time, "duration": p.duration},
        "events": watcher.finish(info), "outcome": outcome, "shown": shown_goal(job.task, outcome),
    }
    return np.stack(frames), np.asarray(times, dtype=np.float64), meta


def write_episode(path: Path, frames: np.ndarray, times: np.ndarray, meta: dict[str, Any]) -> None:
    """``path`` appears whole or not at all: written to a temporary name, synced, renamed."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, frames=frames, times=times, meta=np.array(json.dumps(meta)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + TMP_SUFFIX)
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(tmp, path)


def _record_job(job: EpisodeJob) -> dict[str, Any]:
    """Record and write one episode (in a worker process or here); its meta."""
    frames, times, meta = record_episode(job)
    write_episode(Path(job.path), frames, times, meta)
    return meta


def episode_path(root: Path, index: int) -> Path:
    return Path(root) / f"episode_{index:06d}.npz"


def read_meta(path: Path) -> dict[str, Any]:
    """The meta of the episode file ``path`` (its frames are not read)."""
    with _open(path) as z:
        return _meta_of(path, z)


def read_episode(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Frames (T, S, S, 3) uint8, times (T,) s and meta of the episode file ``path``, checked."""
    with _open(path) as z:
        meta = _meta_of(path, z)
        try:
            frames, times = z["frames"], z["times"]
        except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
            raise GroundingDataError(f"{path}: corrupt episode ({type(e).__name__}: {e}); record it again") from e
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise GroundingDataError(f"{path}: frames are {frames.shape} {frames.dtype}, expected (T, S, S, 3) uint8")
    if times.shape != (len(frames),) or np.any(np.diff(times) <= 0):
        raise GroundingDataError(f"{path}: times are {times.shape}, expected ({len(frames)},) rising")
    return frames, times, meta


def _open(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such episode file (record it: python -m grounding.data out={path.parent})")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise GroundingDataError(f"{path}: not a readable episode file ({type(e).__name__}: {e}); delete it and "
                                 f"record it again (python -m grounding.data out={path.parent} ...)") from e


def _meta_of(path: Path, z: Any) -> dict[str, Any]:
    try:
        meta = json.loads(str(z["meta"]))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise GroundingDataError(f"{path}: corrupt episode meta ({type(e).__name__}: {e}); record it again") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise GroundingDataError(f"{path}: meta format {found!r}, expected {FORMAT!r}")
    return meta


def record_episodes(
    task_list: Sequence[str],
    episodes: int,
    seed: int,
    out: str | Path,
    image_size: int = 64,
    frame_hz: float = 8.0,
    looks: str = "train",
    jobs: int = 1,
    *,
    max_seconds: float | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Record episodes ``0 .. episodes - 1`` into ``out`` (those already there are kept) and index them; the meta of
    each, in order. ``jobs > 1`` records in that many spawned processes, to the same files."""
    cfg = GroundingDataConfig(out=str(out), tasks=list(task_list), episodes=episodes, seed=seed,
                              image_size=image_size, frame_hz=frame_hz, looks=looks, max_seconds=max_seconds,
                              jobs=jobs, progress=progress)
    return run(cfg)


def run(cfg: GroundingDataConfig) -> list[dict[str, Any]]:
    """:func:`record_episodes` from a checked config."""
    from tqdm import tqdm

    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"*{TMP_SUFFIX}"):  # what a killed run was writing: never a finished file
        stale.unlink()
    _check_index(root, cfg)
    jobs = [EpisodeJob(k, cfg.tasks[k % len(cfg.tasks)], cfg.seed + k, cfg.image_size, cfg.frame_hz, cfg.looks,
                       cfg.max_seconds, str(episode_path(root, k))) for k in range(cfg.episodes)]
    metas: dict[int, dict[str, Any]] = {}
    for job in jobs:
        if Path(job.path).exists():
            metas[job.index] = _check_existing(job, cfg)
    todo = [j for j in jobs if j.index not in metas]
    bar = tqdm(total=len(jobs), initial=len(metas), desc="grounding episodes", unit="ep", file=sys.stderr,
               disable=not cfg.progress)

    def done(meta: dict[str, Any]) -> None:
        metas[meta["index"]] = meta
        _write_index(root, cfg, metas)
        bar.update(1)
        bar.set_postfix(ok=f"{sum(bool(m['success']) for m in metas.values())}/{len(metas)}")

    try:
        if cfg.jobs == 1 or len(todo) <= 1:
            for job in todo:
                done(_record_job(job))
        else:
            context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited GL context
            with ProcessPoolExecutor(max_workers=min(cfg.jobs, len(todo)), mp_context=context) as pool:
                futures = [pool.submit(_record_job, job) for job in todo]
                try:
                    for future in as_completed(futures):
                        done(future.result())
                except BaseException:
                    for future in futures:  # what has not started stays to record on the next run
                        future.cancel()
                    raise
    finally:
        bar.close()
    _write_index(root, cfg, metas)
    return [metas[k] for k in range(cfg.episodes)]


def _check_index(root: Path, cfg: GroundingDataConfig) -> None:
    index = root / INDEX
    if not index.exists():
        return
    try:
        old = json.loads(index.read_text())["recording"]
    except (ValueError, KeyError, TypeError) as e:
        raise GroundingDataError(f"{index}: not a grounding dataset index ({type(e).__name__}: {e})") from e
    for key, value in cfg.recording().items():
        if old.get(key) != value:
            raise GroundingDataError(f"out={root} was recorded with {key}={old.get(key)}, not {key}={value}: resume "
                                     f"it with the same settings, or choose a new out=")


def _check_existing(job: EpisodeJob, cfg: GroundingDataConfig) -> dict[str, Any]:
    meta = read_meta(Path(job.path))
    mine = {"task": job.task, "seed": job.seed, "image_size": job.image_size, "frame_hz": job.frame_hz,
            "looks": job.looks, "max_seconds": job.max_seconds}
    for key, value in mine.items():
        if meta.get(key) != value:
            raise GroundingDataError(f"{job.path}: recorded with {key}={meta.get(key)}, but this run's episode "
                                     f"{job.index} has {key}={value}; choose a new out= or the same settings")
    return meta


def _write_index(root: Path, cfg: GroundingDataConfig, metas: dict[int, dict[str, Any]]) -> None:
    rows = [{"file": episode_path(root, k).name, "index": k, "task": m["task"], "seed": m["seed"],
             "goal": m["goal"]["name"], "success": m["success"], "duration": m["duration"], "frames": m["frames"],
             "events": [e["kind"] for e in m["events"]]} for k, m in sorted(metas.items())]
    _write_json(root / INDEX, {"format": FORMAT, "recording": cfg.recording(), "episodes": rows})


def summarize(metas: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Episodes and success rate per task, and how many episodes had each kind of event."""
    tasks = Counter(m["task"] for m in metas)
    ok = Counter(m["task"] for m in metas if m["success"])
    events: Counter[str] = Counter()
    for m in metas:
        events.update({e["kind"] for e in m["events"]})
    return {"episodes": len(metas),
            "tasks": {t: {"episodes": n, "success_rate": round(ok[t] / n, 3)} for t, n in sorted(tasks.items())},
            "success_rate": round(sum(ok.values()) / max(len(metas), 1), 3),
            "episodes_with_event": dict(sorted(events.items())),
            "shown": dict(Counter(f"{m['task']}:{v}" for m in metas for v in m["shown"].values()))}


# ------------------------------------------------------------------------------------------------------ loading
def resample(frames: np.ndarray, times: np.ndarray, duration: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` frames evenly spaced in time from the start to the end of the episode (frame j at j / (n - 1) of it),
    each the recorded frame nearest that time: (n, S, S, 3) and their normalised times (n,) float32."""
    want = np.linspace(0.0, duration, n)
    right = np.clip(np.searchsorted(times, want), 1, len(times) - 1)
    nearer_left = (want - times[right - 1]) <= (times[right] - want)
    pick = np.where(nearer_left, right - 1, right) if len(times) > 1 else np.zeros(n, dtype=int)
    return frames[pick], (times[pick] / max(duration, 1e-9)).astype(np.float32)


def episode_instructions(meta: dict[str, Any], split: str, seed: int = 0, rounds: int = 1,
                         kinds: Sequence[str] | None = None) -> list[Instruction]:
    """The instructions :class:`GroundingSet` asks about the episode ``meta``: round ``r`` is drawn from ``(seed, the
    episode's seed, r, split)``. A module function so that a cache of frame tokens that kept the metas gets the very
    same samples without opening the episode files."""
    from grounding.instructions import KINDS, SPLITS, generate

    out = []
    for r in range(rounds):
        rng = np.random.default_rng([seed, meta["seed"], r, SPLITS.index(split)])
        out += generate(meta, split, rng, tuple(KINDS if kinds is None else kinds))
    return out


class GroundingSet:
    """(video, instruction, targets) samples from a folder of recorded episodes.

    Every episode gives the instructions :func:`grounding.instructions.generate` makes from its meta with the
    ``split`` templates (``train`` or ``heldout``), drawn from ``(seed, episode seed, round)`` for each of
    ``rounds`` rounds: the same samples every time. ``instructions``: the instruction kinds to keep (None: all).
    A sample is ``{"frames": (T, S, S, 3) uint8, "times": (T,) float32 normalised, "text": str, "targets":
    {task, region, force, height, grip, keyframe_bin: int, -100 where unasked}, "kind": str, "episode": int}``
    with ``T = num_frames``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        instructions: Sequence[str] | None = None,
        num_frames: int = 16,
        seed: int = 0,
        rounds: int = 1,
        episodes: Sequence[int] | None = None,
    ):
        from grounding.instructions import KINDS, SPLITS

        self.root = Path(root)
        self.split = choose("split", split, SPLITS, "instruction split")
        kinds = tuple(KINDS if instructions is None else instructions)
        for kind in kinds:
            choose("instructions", kind, KINDS, "instruction kind")
        if num_frames < 2:
            raise UsageError(f"num_frames={num_frames}: expected at least 2 (the first and the last state)")
        index = self.root / INDEX
        if not index.is_file():
            raise FileNotFoundError(f"{index}: no grounding dataset here (record one: python -m grounding.data "
                                    f"out={self.root} episodes=N)")
        try:
            rows = json.loads(index.read_text())["episodes"]
            files = {int(r["index"]): self.root / r["file"] for r in rows}
        except (ValueError, KeyError, TypeError) as e:
            raise GroundingDataError(f"{index}: not a grounding dataset index ({type(e).__name__}: {e})") from e
        chosen = sorted(files) if episodes is None else list(episodes)
        missing = [k for k in chosen if k not in files]
        if missing:
            raise GroundingDataError(f"episodes {missing[:5]} are not in {index} (it has {len(files)} episodes)")
        self.num_frames = num_frames
        self.files = {k: files[k] for k in chosen}
        self.metas = {k: read_meta(files[k]) for k in chosen}
        self.samples: list[tuple[int, Any]] = []
        for k in chosen:
            self.samples += [(k, s) for s in episode_instructions(self.metas[k], split, seed, rounds, kinds)]
        self._videos: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def video(self, episode: int) -> tuple[np.ndarray, np.ndarray]:
        """Episode ``episode``'s frames resampled to ``num_frames``, and their normalised times (kept in memory)."""
        if episode not in self._videos:
            frames, times, meta = read_episode(self.files[episode])
            self._videos[episode] = resample(frames, times, float(meta["duration"]), self.num_frames)
        return self._videos[episode]

    def __getitem__(self, i: int) -> dict[str, Any]:
        episode, sample = self.samples[i]
        frames, times = self.video(episode)
        return {"frames": frames, "times": times, "text": sample.text, "targets": dict(sample.targets),
                "kind": sample.kind, "episode": episode}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(len(self)))


# ---------------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str]) -> GroundingDataConfig:
    return compose(GroundingDataConfig, "grounding/data", argv, "grounding data", "out=DIR episodes=30")


@command("grounding.data")
def main(argv: Sequence[str] | None = None) -> int:
    import time

    cfg = parse_args(list(sys.argv[1:] if argv is None else argv))
    start = time.perf_counter()
    metas = run(cfg)
    summary = summarize(metas)
    summary["out"] = cfg.out
    summary["seconds"] = round(time.perf_counter() - start, 1)
    lines = [f"{len(metas)} episodes -> {cfg.out} ({summary['seconds']} s, success {summary['success_rate']:.0%})"]
    lines += [f"  {t}: {v['episodes']} episodes, success {v['success_rate']:.0%}" for t, v in summary["tasks"].items()]
    lines += ["  episodes with event: " + ", ".join(f"{k} {n}" for k, n in summary["episodes_with_event"].items())]
    print("\n".join(lines), file=sys.stderr)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

