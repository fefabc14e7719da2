"""Perception head: the scene's one-shot localisation read off the scene camera, for policies that see.

The ``scene`` observation (``sim.tasks``: the start and end points of the tool path on the vase or the cucumber,
the box's centre and half-size) is what a one-shot localisation reports at the start of an episode. The simulator
knows it exactly; a real robot does not. ``SceneEstimator`` reads it off the episode's first scene-camera frame
(RGB through a ResNet-style or a Terminator encoder, or the depth as a point cloud through a DP3-style PointNet),
trained here from scratch with the simulator's value as the label, on frames under a new random look each.

A policy trained with ``perception=RUN`` (``rdp.train``) observes ``scene_seen`` and ``proprio_scene_seen``
(``dataset.features``) instead of ``scene`` / ``proprio_scene``: the estimate, computed by this module from the
episode's first ``scene_rgb`` frame when its data is loaded (``rdp.data``) and when it runs (``rdp.api.Planner``).
The policy run keeps a copy of the estimator in ``RUN/perception/``.

    python -m rdp.perception stage=data task=lift episodes=3000 seed=500000 looks=train out=data/percept-lift.npz
    python -m rdp.perception stage=train data=data/percept-lift.npz val=data/percept-lift-val.npz \\
        out=runs/percept-lift-pointnet          # model.encoder=terminator | resnet: from RGB alone
    python -m rdp.perception stage=evaluate run=runs/percept-lift-pointnet data=data/percept-lift-heldout.npz

Glossary: ``S`` image side, ``P`` points per cloud, ``D`` the scene vector's size (6 for every task).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from bus.cli import UsageError, choose, command
from bus.config import compose
from rdp.checkpoint import CheckpointError, config_from_dict, load_checkpoint, load_config, save_checkpoint
from rdp.encoders.pointnet import PointNetEncoder
from rdp.encoders.resnet import ResNetEncoder, training_layout
from rdp.encoders.terminator import Terminator

CAMERA = "scene_rgb"  # the frame the estimate is read from: the episode's first
POINTS = "scene_points"
ENCODERS = ("resnet", "terminator", "pointnet")
# encoder -> (width, stem_stride) when the config leaves them out: ~78 k encoder parameters for either RGB encoder
# (the equal-parameter comparison in docs/results.md), 28 k for the PointNet; 96x96 frames -> 24x24 / 12x12 maps.
ENCODER_SIZES: dict[str, tuple[int, int]] = {"resnet": (16, 4), "terminator": (40, 8), "pointnet": (32, 4)}
STAGES = ("data", "train", "evaluate")
# What each task's scene vector holds (sim.tasks ``scene_features``), for the error report.
SURFACE_PARTS = ("path start", "path end")
SCENE_PARTS = {"wipe": SURFACE_PARTS, "peel": SURFACE_PARTS, "lift": ("box centre", "box half-size")}


@dataclass(frozen=True)
class EstimatorConfig:
    """The estimator's sizes; saved with its weights."""

    task: str = "lift"
    encoder: str = "pointnet"  # pointnet (the depth's point cloud) | resnet | terminator (RGB)
    # resnet: stages width / 2 width / 4 width; terminator: block width; pointnet: first layer. None: the
    # encoder's size in ENCODER_SIZES (the heads measured in docs/results.md).
    width: int | None = None
    stem_stride: int | None = None  # resnet patchify stem / Terminator patch size (None: ENCODER_SIZES)
    depth: int = 2  # terminator blocks
    image_size: int = 96
    points: int = 512
    hidden: int = 128  # the regression head's hidden width
    out_dim: int = 6
    # Points are centred and scaled by the task's scene_points_box (sim.tasks) before the encoder.
    box: tuple[float, ...] = (0.0, 0.0, 0.0, 1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        choose("encoder", self.encoder, ENCODERS, "perception encoder")
        width, stem_stride = ENCODER_SIZES[self.encoder]
        if self.width is None:
            object.__setattr__(self, "width", width)
        if self.stem_stride is None:
            object.__setattr__(self, "stem_stride", stem_stride)
        if min(self.width, self.stem_stride, self.depth, self.image_size, self.points, self.hidden, self.out_dim) < 1:
            raise UsageError(f"perception sizes must be >= 1, got {asdict(self)}")
        if len(self.box) != 6:
            raise UsageError(f"box: expected (min xyz, max xyz), got {self.box}")

    @property
    def reads(self) -> str:
        return POINTS if self.encoder == "pointnet" else CAMERA


class SpatialSoftmax(nn.Module):
    """(B, C, h, w) feature map -> (B, 2 C) expected image coordinates in [-1, 1] per channel (keypoints): where a
    thing is survives, where a mean over positions would lose it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.log_temperature = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, h, w = x.shape
        attn = F.softmax(x.flatten(2) * self.log_temperature.exp()[None, :, None], dim=-1)  # (B, C, h w)
        ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        return torch.cat([attn @ grid_x.reshape(-1, 1), attn @ grid_y.reshape(-1, 1)], dim=-1).flatten(1)


class SceneEstimator(nn.Module):
    """The episode's first scene frame (uint8 (B, S, S, 3)) or cloud ((B, P, 3) m) -> the scene vector (B, D);
    ``estimate`` does one numpy frame. Targets are standardised by buffers set from the training labels."""

    def __init__(self, cfg: EstimatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.encoder == "pointnet":
            w = cfg.width
            self.encoder: nn.Module = PointNetEncoder(3, None, hidden=(w, 2 * w, 4 * w), feature_dim=4 * w)
            features = 4 * w
        else:
            if cfg.encoder == "resnet":
                self.encoder = ResNetEncoder(3, None, width=cfg.width, stem_stride=cfg.stem_stride)
            else:
                self.encoder = Terminator(3, None, width=cfg.width, depth=cfg.depth, patch_size=cfg.stem_stride)
            channels = self.encoder.feature_dim
            self.keypoints = SpatialSoftmax(channels)
            features = 3 * channels  # keypoints (2 C) + mean over positions (C)
        self.head = nn.Sequential(nn.Linear(features, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.out_dim))
        self.register_buffer("target_mean", torch.zeros(cfg.out_dim))
        self.register_buffer("target_std", torch.ones(cfg.out_dim))
        lo, hi = np.asarray(cfg.box[:3]), np.asarray(cfg.box[3:])
        self.register_buffer("box_centre", torch.as_tensor((lo + hi) / 2, dtype=torch.float32))
        self.register_buffer("box_half", torch.as_tensor(np.maximum((hi - lo) / 2, 1e-3), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """-> the standardised scene vector (B, D)."""
        if self.cfg.encoder == "pointnet":
            if x.ndim != 3 or x.shape[-1] != 3:
                raise ValueError(f"SceneEstimator(pointnet) expects points (B, P, 3), got {tuple(x.shape)}")
            return self.head(self.encoder((x - self.box_centre) / self.box_half))
        S = self.cfg.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (S, S, 3):
            raise ValueError(f"SceneEstimator({self.cfg.encoder}) expects frames (B, {S}, {S}, 3), "
                             f"got {tuple(x.shape)}")
        images = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.permute(0, 3, 1, 2)
        fmap = self.encoder.feature_map(training_layout(images))
        return self.head(torch.cat([self.keypoints(fmap), fmap.mean(dim=(2, 3))], dim=-1))

    def unstandardize(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.target_std + self.target_mean

    @torch.inference_mode()
    def estimate(self, frame: np.ndarray) -> np.ndarray:
        """One frame (S, S, 3) uint8 (or a cloud (P, 3)) -> the scene vector (D,) float32."""
        x = torch.as_tensor(np.ascontiguousarray(frame))[None]
        if self.cfg.encoder == "pointnet":
            x = x.float()
        elif x.dtype != torch.uint8:
            raise ValueError(f"SceneEstimator expects a uint8 camera frame, got {frame.dtype}")
        return self.unstandardize(self.eval()(x))[0].numpy().astype(np.float32)

    @torch.inference_mode()
    def estimate_batch(self, x: np.ndarray, batch: int = 64) -> np.ndarray:
        """(N, ...) frames or clouds -> (N, D) float32."""
        self.eval()
        out = []
        for i in range(0, len(x), batch):
            xb = torch.as_tensor(np.ascontiguousarray(x[i:i + batch]))
            out.append(self.unstandardize(self(xb.float() if self.cfg.encoder == "pointnet" else xb)))
        return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, self.cfg.out_dim), np.float32)

    # -- files
    def save(self, directory: str | os.PathLike[str]) -> Path:
        return save_checkpoint(directory, self, self.cfg)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> SceneEstimator:
        name, config = load_config(directory)
        if name != cls.__name__:
            raise CheckpointError(f"{directory}: holds a {name}, not a {cls.__name__}")
        try:
            cfg = config_from_dict(EstimatorConfig, config)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{directory}/config.json: {e}") from e
        model = cls(cfg)
        load_checkpoint(directory, model)
        return model.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------ data


def record_frames(task: str, episodes: int, seed: int, looks: str, image_size: int = 96, points: int = 512,
                  progress: bool = True) -> dict[str, np.ndarray]:
    """The first scene frame and cloud of episodes ``seed .. seed + episodes - 1`` (perturbations on, as in every
    evaluation) with their scene vectors: {scene_rgb (N, S, S, 3) uint8, scene_points (N, P, 3), scene (N, D),
    seed (N,)}. The physics of a reset does not depend on the look, so ``scene`` of a seed is the same under any."""
    from sim.registry import make_env

    env = make_env(task, perturb=True, cameras=True, image_size=image_size, looks=looks, point_cloud=True,
                   point_cloud_points=points)
    out: dict[str, list[np.ndarray]] = {CAMERA: [], POINTS: [], "scene": [], "seed": []}
    try:
        for k in tqdm(range(episodes), desc=f"frames {task} ({looks})", unit="ep", file=sys.stderr,
                      disable=not progress):
            obs, _ = env.reset(seed=seed + k)
            out[CAMERA].append(obs[CAMERA])
            out[POINTS].append(obs[POINTS])
            out["scene"].append(obs["scene"])
            out["seed"].append(np.int64(seed + k))
    finally:
        env.close()
    return {k: np.stack(v) for k, v in out.items()}


def load_frames(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """A ``stage=data`` file -> its arrays, checked; a missing or foreign file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file; make one with python -m rdp.perception stage=data out={path} ...")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise UsageError(f"{path}: not a perception frame file ({e})") from e
    need = (CAMERA, POINTS, "scene", "seed", "task")
    missing = [k for k in need if k not in arrays]
    if missing:
        raise UsageError(f"{path}: lacks {missing}; expected a python -m rdp.perception stage=data file")
    return arrays


# ------------------------------------------------------------------------------------------------ errors


def scene_errors(task: str, pred: np.ndarray, true: np.ndarray) -> dict[str, Any]:
    """Errors of predicted scene vectors (N, 6) against the truth, in mm (each 3-vector's Euclidean error) and, for
    the surface tasks, the direction of the path in degrees."""
    parts = SCENE_PARTS.get(task, ("first 3", "last 3"))
    out: dict[str, Any] = {"episodes": int(len(true))}
    for name, sl in zip(parts, (slice(0, 3), slice(3, 6)), strict=True):
        e = np.linalg.norm(pred[:, sl] - true[:, sl], axis=1) * 1e3
        out[f"{name} mm"] = _summary(e)
    if task in ("wipe", "peel"):
        a, b = pred[:, 3:6] - pred[:, 0:3], true[:, 3:6] - true[:, 0:3]
        cos = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-9)
        out["path direction deg"] = _summary(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    return out


def _summary(e: np.ndarray) -> dict[str, float]:
    return {"mean": round(float(np.mean(e)), 2), "median": round(float(np.median(e)), 2),
            "p90": round(float(np.percentile(e, 90)), 2), "max": round(float(np.max(e)), 2)}


# ------------------------------------------------------------------------------------------------ training


@dataclass(frozen=True)
class PerceptionCommand:
    """Command-line settings: ``configs/perception.yaml``."""

    stage: str = ""
    task: dict[str, Any] = field(default_factory=lambda: {"name": "lift"})  # configs/task/<name>.yaml
    out: str = ""
    # data
    episodes: int = 2000
    seed: int = 500000
    looks: str = "train"
    # train / evaluate
    data: str = ""
    val: str = ""
    run: str = ""
    steps: int = 3000
    batch: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    augment: bool = True  # colour jitter (brightness, per-channel gain, offset) on training frames
    train_seed: int = 0
    threads: int = 1
    log_every: int = 50
    progress: bool = True
    model: dict[str, Any] = field(default_factory=dict)  # EstimatorConfig fields

    def __post_init__(self) -> None:
        choose("stage", self.stage, STAGES, "perception stage")
        if self.stage in ("data", "train") and not self.out:
            raise UsageError(f"stage={self.stage} needs out=...")
        if self.stage == "train" and not self.data:
            raise UsageError("stage=train needs data=FRAMES.npz (python -m rdp.perception stage=data ...)")
        if self.stage == "evaluate" and not (self.run and self.data):
            raise UsageError("stage=evaluate needs run=RUN and data=FRAMES.npz")
        if self.steps < 1 or self.batch < 1 or self.episodes < 1:
            raise UsageError(f"steps, batch and episodes must be >= 1, got {self.steps}, {self.batch}, {self.episodes}")


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Colour jitter of uint8 frames (B, S, S, 3) -> float frames in [-1, 1]: brightness, per-channel gain and
    offset, so the head keys on shapes and places rather than on this episode's paint and light."""
    B = x.shape[0]
    f = x.float() / 255.0
    bright = torch.empty(B, 1, 1, 1).uniform_(0.6, 1.4, generator=gen)
    gain = torch.empty(B, 1, 1, 3).uniform_(0.8, 1.2, generator=gen)
    offset = torch.empty(B, 1, 1, 3).uniform_(-0.08, 0.08, generator=gen)
    return ((f * bright * gain + offset).clamp(0.0, 1.0) * 2.0 - 1.0)


def train_step(model: SceneEstimator, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimiser step on a batch: smooth-L1 on the standardised scene (plus a Terminator's slow-net loss),
    gradients clipped to norm 1. Returns the (detached) loss."""
    loss = F.smooth_l1_loss(model(x), y, beta=0.1)
    slow = getattr(model.encoder, "slow_loss", None)
    if callable(slow) and slow() is not None:
        loss = loss + slow()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.detach()


def train_estimator(cfg: PerceptionCommand) -> dict[str, Any]:
    """Train a ``SceneEstimator`` on ``cfg.data``; write ``cfg.out`` (config.json, model.safetensors, log.jsonl,
    summary.json) and return the summary (validation errors when ``cfg.val`` is given)."""
    from sim.registry import TASKS

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.train_seed)
    data = load_frames(cfg.data)
    task = str(data["task"])
    box = tuple(float(v) for corner in TASKS[task].scene_points_box for v in corner)
    est_cfg = config_from_dict(EstimatorConfig, {"task": task, "box": box,
                                                 "image_size": int(data[CAMERA].shape[1]),
                                                 "points": int(data[POINTS].shape[1]), **cfg.model})
    model = SceneEstimator(est_cfg)
    y = torch.as_tensor(data["scene"], dtype=torch.float32)
    model.target_mean.copy_(y.mean(0))
    model.target_std.copy_(y.std(0).clamp_min(1e-4))
    x = torch.as_tensor(data[est_cfg.reads])
    yn = (y - model.target_mean) / model.target_std
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.train_seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "log.jsonl").open("w")
    t0 = time.perf_counter()
    running = 0.0
    bar = tqdm(range(cfg.steps), desc=f"perception {task} {est_cfg.encoder}", unit="step", file=sys.stderr,
               disable=not cfg.progress)
    model.train()
    for step in bar:
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, len(x), (cfg.batch,), generator=gen)
        xb = x[idx]
        if est_cfg.encoder == "pointnet":
            xb = xb.float()
        elif cfg.augment:
            xb = _augment(xb, gen)  # float frames (B, S, S, 3) in [-1, 1]
        running += float(train_step(model, opt, xb, yn[idx]))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            n = cfg.log_every if (step + 1) % cfg.log_every == 0 else (step + 1) % cfg.log_every
            log.write(json.dumps({"step": step + 1, "loss": running / n, "lr": lr,
                                  "seconds": round(time.perf_counter() - t0, 2)}) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{running / n:.4f}")
            running = 0.0
    bar.close()
    log.close()
    seconds = time.perf_counter() - t0
    model.eval()
    model.save(out)
    summary: dict[str, Any] = {"task": task, "encoder": est_cfg.encoder, "parameters": count_parameters(model),
                               "encoder_parameters": count_parameters(model.encoder), "steps": cfg.steps,
                               "train_seconds": round(seconds, 1), "train_episodes": int(len(x)),
                               "data": cfg.data, "model": asdict(est_cfg)}
    if cfg.val:
        summary["val"] = evaluate(model, load_frames(cfg.val))
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def evaluate(model: SceneEstimator, data: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Errors on a frame file and the ms one estimate takes (batch of 1, this process's threads)."""
    x = data[model.cfg.reads]
    pred = model.estimate_batch(x)
    out = scene_errors(model.cfg.task, pred, data["scene"])
    n = min(len(x), 20)
    model.estimate(x[0])
    t0 = time.perf_counter()
    for i in range(n):
        model.estimate(x[i])
    out["estimate ms"] = round((time.perf_counter() - t0) / n * 1e3, 2)
    return out


# ------------------------------------------------------------------------------------------------ CLI


def _data(cfg: PerceptionCommand) -> dict[str, Any]:
    size = int(cfg.model.get("image_size", 96))
    points = int(cfg.model.get("points", 512))
    arrays = record_frames(cfg.task["name"], cfg.episodes, cfg.seed, cfg.looks, size, points, cfg.progress)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    np.savez(tmp, task=np.array(cfg.task["name"]), looks=np.array(cfg.looks), **arrays)
    os.replace(tmp, out)
    return {"out": str(out), "task": cfg.task["name"], "episodes": cfg.episodes, "seed": cfg.seed, "looks": cfg.looks}


def _evaluate(cfg: PerceptionCommand) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    model = SceneEstimator.load(cfg.run)
    data = load_frames(cfg.data)
    if str(data["task"]) != model.cfg.task:
        raise UsageError(f"{cfg.data}: frames of task {str(data['task'])!r}, the estimator is for {model.cfg.task!r}")
    result = {"run": cfg.run, "data": cfg.data, "looks": str(data["looks"]), **evaluate(model, data)}
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


def parse_args(argv: Sequence[str]) -> PerceptionCommand:
    return compose(PerceptionCommand, "perception", argv, "perception head",
                   "python -m rdp.perception stage=train data=data/percept-lift.npz out=runs/percept-lift")


@command("rdp.perception")
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(list(sys.argv[1:] if argv is None else argv))
    stage = {"data": _data, "train": train_estimator, "evaluate": _evaluate}[cfg.stage]
    print(json.dumps(stage(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
