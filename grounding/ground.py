"""Ground one instruction in one video with a trained grounding run: which task, which of its goals, and when.

    grounder = Grounder("runs/g-slowfast-64")           # the run's model, its backbone and tokenizer, loaded once
    g = grounder.ground(frames, "do that again, but gentler.", times=times)
    g.task, g.goal.name, g.keyframe_s, g.confidence     # "wipe", "left-gentle", 3.1, 0.71

The video goes the way the run was trained: resampled to the run's T frames (``grounding.data.resample``, nearest
recorded frame), resized to the backbone's image size if it differs, then through the backbone's ``FrameEncoder``;
no token cache. The model answers every head; :func:`goal_from_classes` turns the answers that belong to the
predicted task into that task's ``Goal`` (``sim.tasks``), so any answer is a goal the task can run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bus.cli import UsageError, choose
from grounding.data import resample
from grounding.evaluate import load_run
from grounding.model import GroundingConfig, GroundingModel
from grounding.text import InstructionTokenizer
from grounding.train import BACKBONE_DIR, Backbone, load_backbone
from rdp.checkpoint import WEIGHTS_FILE
from rdp.data import resize_images
from sim.registry import TASKS
from sim.tasks.base import GOAL_JOIN, Goal


def goal_type(task: str) -> type[Goal]:
    """The ``Goal`` class of ``task``; an unknown task is a ``UsageError`` listing the tasks."""
    choose("task", task, TASKS, "task")
    return TASKS[task].goal_type


def goal_from_classes(task: str, classes: Mapping[str, str]) -> Goal:
    """The goal of ``task`` that the answered classes ``{field: class}`` name: each of the task's goal fields takes
    its answered class when that is one of the field's values, else the field's default (a field the model has no
    head for, or a class the task's Goal does not know). Answers for other tasks' fields are ignored. Total: every
    combination of answers gives a valid goal."""
    gtype = goal_type(task)
    chosen = {}
    for name, values in gtype.choices().items():
        value = classes.get(name)
        chosen[name] = value if value in values else values[0]
    return gtype(**chosen)


def goal_option(goal: Goal) -> str:
    """How to ask an env or ``rdp.run`` for ``goal`` so that the observation carries it: its name, or, for the
    default goal, its fields' default values (``all-normal``): the option ``default`` would give an env without a
    ``goal`` observation, which a goal-conditioned policy refuses (``Goal.parse`` reads both as the same goal)."""
    if goal.name != "default":
        return goal.name
    return GOAL_JOIN.join(dict.fromkeys(values[0] for values in goal.choices().values()))


@dataclass(frozen=True)
class Grounding:
    """What a grounding model read in (video, instruction).

    ``task`` and ``goal`` (the task's ``Goal``): see :func:`goal_from_classes`. ``classes``: every head's argmax
    class name (keyframe: the bin), what ``grounding.evaluate`` scores. ``probs``: every head's softmax, {class:
    p} (keyframe: a list over the bins). ``keyframe_s``: the centre of the argmax keyframe bin in seconds from the
    video's start, the answer to a "when" question (the head answers for every instruction; it means something only
    when the instruction asks when). ``confidence``: the model's probability of the grounded task and goal, its
    heads taken as independent: the task's probability times, per goal field of the task, the probability of every
    class that maps onto the field's value."""

    instruction: str
    task: str
    goal: Goal
    classes: dict[str, str | int]
    probs: dict[str, Any]
    keyframe_bin: int
    keyframe_s: float
    duration_s: float
    confidence: float

    @property
    def fields(self) -> dict[str, str]:
        """The goal's fields, {field: value}."""
        return {k: getattr(self.goal, k) for k in self.goal.choices()}

    def to_json(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "task": self.task, "goal": self.goal.name, "fields": self.fields,
                "keyframe_s": round(self.keyframe_s, 3), "keyframe_bin": self.keyframe_bin,
                "duration_s": round(self.duration_s, 3), "confidence": round(self.confidence, 4),
                "classes": self.classes, "probs": self.probs}

    def line(self) -> str:
        """One human line."""
        fields = ", ".join(f"{k} {v}" for k, v in self.fields.items())
        return (f"grounded: task {self.task}, goal {self.goal.name} ({fields}), "
                f"keyframe {self.keyframe_s:.2f} s of {self.duration_s:.2f} s, confidence {self.confidence:.2f}")


def read_answer(cfg: GroundingConfig, logits: Mapping[str, torch.Tensor], instruction: str,
                duration: float) -> Grounding:
    """One sample's head logits {head: (classes,)} -> :class:`Grounding`; ``cfg`` names the heads' classes."""
    probs = {k: torch.softmax(v.float(), dim=-1) for k, v in logits.items()}
    names: dict[str, Sequence[str]] = {"task": cfg.tasks, **cfg.goal_fields}
    classes: dict[str, str | int] = {k: names[k][int(probs[k].argmax())] for k in names}
    task = str(classes["task"])
    goal = goal_from_classes(task, {k: str(v) for k, v in classes.items() if k != "task"})
    confidence = float(probs["task"].max())
    for name, values in goal.choices().items():
        if name in cfg.goal_fields:  # the probability of every class that maps onto the goal's value
            value = getattr(goal, name)
            confidence *= sum(float(p) for c, p in zip(names[name], probs[name], strict=True)
                              if c == value or (value == values[0] and c not in values))
    bins = probs["keyframe"]
    kbin = int(bins.argmax())
    classes["keyframe"] = kbin
    table: dict[str, Any] = {k: {c: round(float(p), 4) for c, p in zip(names[k], probs[k], strict=True)}
                             for k in names}
    table["keyframe"] = [round(float(p), 4) for p in bins]
    return Grounding(instruction, task, goal, classes, table, kbin, (kbin + 0.5) / len(bins) * duration, duration,
                     confidence)


SHIPPED_RUN = "grounding/slowfast"  # under checkpoints/: the shipped grounding run (checkpoints/README.md)


def shipped_run() -> Path:
    """The shipped grounding run, ``checkpoints/grounding/slowfast``."""
    from bus.resources import checkpoint_dir

    return checkpoint_dir() / SHIPPED_RUN


class Grounder:
    """A grounding run ready to answer: its model, the backbone its tokens came from, its tokenizer.

    ``run``: a ``grounding.train`` run (stage=lm or stage=backbone). The backbone is the run's own ``backbone/``
    (a backbone run) or the one its run.json names, checked by the sha256 of its weights."""

    def __init__(self, run: str | Path) -> None:
        self.run = Path(run)
        model, tokenizer, info = load_run(run)
        self.model: GroundingModel = model
        self.tokenizer: InstructionTokenizer = tokenizer
        self.info = info
        self.backbone = _find_backbone(self.run, info)
        self.frames = int(info["frames"])
        self.image_size = int(self.backbone.config["image_size"])
        if self.backbone.encoder.feature_dim != model.cfg.visual_dim or self.backbone.encoder.grid != model.cfg.grid:
            raise UsageError(f"run={run}: its backbone {self.backbone.run} makes {self.backbone.encoder.grid}x"
                             f"{self.backbone.encoder.grid} maps of {self.backbone.encoder.feature_dim} features, the "
                             f"model reads {model.cfg.grid}x{model.cfg.grid} of {model.cfg.visual_dim}")

    def frame_tokens(self, frames: np.ndarray, times: np.ndarray, duration: float) -> torch.Tensor:
        """(N, H, W, 3) uint8 frames at ``times`` (s from the start) -> frame tokens (1, T, grid**2, C)."""
        picked, _ = resample(frames, times, duration, self.frames)
        picked = resize_images(picked, self.image_size)  # the same pixels if already the backbone's size
        images = torch.from_numpy(np.ascontiguousarray(picked)).permute(0, 3, 1, 2)[None]  # (1, T, 3, S, S)
        with torch.inference_mode():
            return self.backbone.encoder(images)

    def ground(self, frames: np.ndarray, instruction: str, times: np.ndarray | None = None,
               duration: float | None = None) -> Grounding:
        """Ground ``instruction`` in the video ``frames`` (N, H, W, 3) uint8, N >= 2. Give the frames' ``times``
        (N,) s, rising (the video's start is its first frame, its end ``duration`` or the last frame), or only the
        episode's ``duration`` (frames then spread evenly over it)."""
        text = instruction.strip() if isinstance(instruction, str) else ""
        if not text:
            raise UsageError(f"instruction={instruction!r} is empty: say what to do, e.g. instruction='wipe the "
                             "vase, only the left half'")
        frames, times, duration = check_video(frames, times, duration)
        try:
            ids, mask = self.tokenizer.encode_batch([text], self.model.cfg.max_text_len)
        except ValueError as e:
            raise UsageError(f"instruction: {e}; say it in fewer words") from e
        tokens = self.frame_tokens(frames, times, duration)
        with torch.inference_mode():
            logits = self.model(tokens, ids, mask)
        return read_answer(self.model.cfg, {k: v[0] for k, v in logits.items()}, text, duration)


def check_video(frames: np.ndarray, times: np.ndarray | None, duration: float | None
                ) -> tuple[np.ndarray, np.ndarray, float]:
    """Frames (N, H, W, 3) uint8 with N >= 2, times (N,) rising from 0 and the duration, or a one-line error."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise UsageError(f"video frames are {frames.dtype} {frames.shape}, expected (N, H, W, 3) uint8")
    if len(frames) < 2:
        raise UsageError(f"the video has {len(frames)} frame(s): grounding needs at least 2 (how the episode started "
                         "and how it ended)")
    if times is None:
        if duration is None or not duration > 0:
            raise UsageError(f"give the frames' times or the episode's duration (> 0 s), got duration={duration}")
        times = np.linspace(0.0, float(duration), len(frames))
    times = np.asarray(times, dtype=np.float64)
    if times.shape != (len(frames),) or np.any(np.diff(times) <= 0):
        raise UsageError(f"frame times are {times.shape}, expected ({len(frames)},) rising")
    times = times - times[0]
    duration = float(times[-1]) if duration is None else float(duration)
    if not duration >= times[-1] or not duration > 0:
        raise UsageError(f"duration={duration} s: expected > 0 and at least the last frame's time {times[-1]:.3f} s")
    return frames, times, duration


def _find_backbone(run: Path, info: Mapping[str, Any]) -> Backbone:
    """The backbone whose weights have the sha256 the run was trained with: the run's own, or the one it names."""
    named = info.get("backbone") or {}
    sha = named.get("sha256")
    places = [run] if (run / BACKBONE_DIR / WEIGHTS_FILE).is_file() else []
    if named.get("dir") and Path(named["dir"]) not in places:
        places.append(Path(named["dir"]))
    for place in places:
        if (place / BACKBONE_DIR / WEIGHTS_FILE).is_file():
            backbone = load_backbone(place)
            if sha is not None and backbone.sha256 != sha:
                raise UsageError(f"run={run}: the backbone in {place} (sha256 {backbone.sha256[:12]}) is not the one "
                                 f"the run was trained with (sha256 {sha[:12]}); point run.json's backbone.dir at it")
            return backbone
    raise FileNotFoundError(f"run={run}: no frame encoder for it: neither {run / BACKBONE_DIR} nor the backbone its "
                            f"run.json names ({named.get('dir')}/{BACKBONE_DIR}) holds one; grounding a video needs "
                            "the stage=backbone run the model's tokens came from")


@dataclass(frozen=True)
class Video:
    """A video to ground in: frames (N, H, W, 3) uint8, times (N,) s from its start, duration s, where it came from."""

    frames: np.ndarray
    times: np.ndarray
    duration: float
    source: str


def load_video(path: str | Path) -> Video:
    """The scene video of ``path``: a grounding episode file (``grounding.data``, ``episode_XXXXXX.npz``), a scene
    video file (``dataset.video``: ``rdp.run``'s ``episode0.npz``) or a recorded episode directory of a dataset
    (``dataset.format``) with a ``scene_rgb`` stream."""
    from dataset.video import is_scene_video, read_scene_video
    from grounding.data import read_episode

    p = Path(path)
    if p.is_file() and is_scene_video(p):  # rdp.run's episode0.npz
        frames, times, meta = read_scene_video(p)
        if len(frames) < 2:
            raise UsageError(f"video={path} holds {len(frames)} frame(s); grounding needs at least 2")
        return Video(frames, times - times[0], float(meta["duration"]) - float(times[0]), "scene video")
    if p.is_file():
        frames, times, meta = read_episode(p)
        return Video(frames, times, float(meta["duration"]), "grounding episode")
    if (p / "meta.json").is_file():
        from dataset.format import load_stream, read_meta

        meta = read_meta(p)
        if "scene_rgb" not in meta["streams"]:
            raise UsageError(f"video={path}: the episode has no scene_rgb stream (streams: "
                             f"{', '.join(sorted(meta['streams']))}); record it with the scene camera on "
                             "(cameras=true)")
        times, frames = load_stream(p, "scene_rgb", meta)
        times = np.asarray(times, dtype=np.float64)
        return Video(np.asarray(frames), times - times[0] if len(times) else times,
                     float(times[-1] - times[0]) if len(times) else 0.0, "dataset episode")
    if (p / "dataset.json").is_file():
        raise UsageError(f"video={path} is a dataset folder: give one of its episodes (a grounding episode_XXXXXX.npz "
                         "file, or a recorded episode_XXXXXX directory)")
    raise FileNotFoundError(f"video={path}: no such episode (expected a grounding episode_XXXXXX.npz file or a "
                            "recorded episode directory with a scene_rgb stream)")
