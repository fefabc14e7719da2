"""Train the grounding model in stages, so that the CPU time goes to the language model and not to the images.

    python -m grounding.train stage=backbone data=TRAIN_DIR out=BACKBONE [frames=16] [steps=N] [batch=16]
    python -m grounding.train stage=cache backbone=BACKBONE data=DIR out=CACHE.npz
    python -m grounding.train stage=lm cache=CACHE.npz backbone=BACKBONE mode=slowfast|fast_only|full
        frames=16|32|64|128 out=RUN [steps=N] [batch=16] [model.width=128] [resume=true]

1. ``backbone``: the frame encoder (``encoder.kind``, the Terminator by default) learns end to end with a
   ``mode=full`` grounding model at T=``frames`` on the train-split instructions, images at their recorded size. The
   full model sees every frame token, so the backbone learns what detail matters without favouring the slow-fast
   design. The stage also trains the instruction tokenizer, on the train-split texts of the training episodes only;
   every later model shares it.
2. ``cache``: the frozen encoder runs once over every recorded frame of every episode (native rate, in chunks). The
   token maps (float16) and the episodes' metas go to one ``.npz``: the language-model stage and evaluation never
   decode an image, and they draw their instructions from the metas (``grounding.data.episode_instructions``).
3. ``lm``: a fresh model of the given mode and T learns from the cached tokens, each episode resampled to T frames
   by ``grounding.data.resample``'s nearest-frame rule.

Training: AdamW (weight decay on matrices only, so the hybrid gates are not pulled shut), linear warm-up then
cosine lr, gradient clipping, batches drawn from ``(seed, step)`` so that a resumed run sees the same batches and
ends with the same weights. Run directory::

    RUN/run.json          what the weights mean: stage, mode, T, model sizes, data, backbone (its sha256), steps,
                          wall seconds (filled in at the end)
    RUN/log.jsonl         {"stage", "step", "loss", <loss per head asked>, "lr", "seconds"}, means over the last
                          log_every steps (a head's over the batches that asked it); seconds summed over resumes
    RUN/checkpoints/      state.json + step_XXXXXXX/ (weights and optimizer): what resume=true continues
    RUN/model/            the grounding model (grounding.model.save: config.json, model.safetensors, tokenizer.json)
    RUN/backbone/         stage=backbone only: the frame encoder (config.json + model.safetensors)
    RUN/tokenizer.json    stage=backbone only: the shared instruction tokenizer

A backbone run's ``model/`` is a full-mode model at T=``frames`` and can be evaluated like any lm run.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bus.cli import UsageError, choose, command
from bus.config import compose
from dataset.durable import fsync_dir, write_file_durably
from grounding.data import INDEX, GroundingSet, episode_instructions, read_episode, resample
from grounding.instructions import FIELDS, KEYFRAME_BINS, KINDS, TASKS, Instruction
from grounding.model import (
    IGNORE_INDEX,
    MODES,
    TOKENIZER_FILE,
    FrameEncoder,
    GroundingConfig,
    GroundingModel,
    save,
)
from grounding.text import InstructionTokenizer
from rdp.checkpoint import (
    WEIGHTS_FILE,
    CheckpointError,
    load_checkpoint,
    load_config,
    load_optimizer,
    read_json,
    save_checkpoint,
    save_optimizer,
)
from rdp.train import JsonlLog, lr_at

STAGES = ("backbone", "cache", "lm")
ENCODERS = ("terminator", "resnet")
RUN_FORMAT = "slowfast-grounding-run/1"
CACHE_FORMAT = "grounding-token-cache/1"
CACHE_FILE = "tokens.npz"  # inside out= when out= is a folder
RUN_FILE = "run.json"
LOG_FILE = "log.jsonl"
MODEL_DIR = "model"
BACKBONE_DIR = "backbone"
CHECKPOINTS = "checkpoints"
# The model's head -> the data's target key (grounding.instructions.TARGET_KEYS); the rest share their name.
HEAD_TARGETS = {"keyframe": "keyframe_bin"}
# Fields of run.json that give a run its meaning: resume=true must find them unchanged.
RESUME_FIELDS = ("stage", "mode", "frames", "model", "encoder", "train", "data", "backbone_used")
# Settings that do not change what a run computes (left out of run.json's "train").
_RUNTIME = ("stage", "out", "resume", "threads", "progress", "log_every", "checkpoint_every", "chunk")

BACKBONE_HOW = "python -m grounding.train stage=backbone data=TRAIN_DIR out={}"
CACHE_HOW = "python -m grounding.train stage=cache backbone=BACKBONE data=DIR out={}"


# ----------------------------------------------------------------------------------------------------- config
@dataclass
class ModelSizes:
    """The language model's sizes (``grounding.model.GroundingConfig`` less what the data and backbone fix)."""

    width: int = 128
    layers: int = 4
    heads: int = 4
    hybrid_layers: list[int] = field(default_factory=lambda: [1, 3])
    grid: int = 4
    fast_frames: int = 16
    fast_grid: int = 2
    max_text_len: int = 64
    dropout: float = 0.0


@dataclass
class EncoderSizes:
    """The frame encoder trained by stage=backbone (``grounding.model.FrameEncoder``)."""

    kind: str = "terminator"  # terminator | resnet
    width: int = 32
    depth: int = 3  # Terminator blocks (unused by resnet)
    patch_size: int = 4  # Terminator patchify stem; resnet's stem stride


@dataclass
class GroundingTrainConfig:
    """``configs/grounding/train.yaml``."""

    stage: str = ""
    data: str = ""
    out: str = ""
    backbone: str = ""
    cache: str = ""
    mode: str | None = None
    frames: int = 16
    steps: int = 2000
    batch: int = 16
    lr: float = 5e-4
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    rounds: int = 8
    instructions: list[str] = field(default_factory=lambda: list(KINDS))
    vocab_size: int = 1000
    chunk: int = 64
    resume: bool = False
    threads: int = 1
    progress: bool = True
    log_every: int = 25
    checkpoint_every: int = 250
    model: ModelSizes = field(default_factory=ModelSizes)
    encoder: EncoderSizes = field(default_factory=EncoderSizes)

    def __post_init__(self) -> None:
        if not self.stage:
            raise UsageError(f"stage= is required: one of {', '.join(STAGES)} (e.g. stage=backbone data=DIR out=RUN)")
        choose("stage", self.stage, STAGES, "stage")
        needed = {"backbone": ("data", "out"), "cache": ("backbone", "data", "out"),
                  "lm": ("cache", "backbone", "out", "mode")}[self.stage]
        missing = [k for k in needed if not getattr(self, k)]
        if missing:
            raise UsageError(f"stage={self.stage} needs {', '.join(f'{k}=' for k in missing)} (e.g. "
                             f"{EXAMPLES[self.stage]})")
        if self.mode is not None:
            choose("mode", self.mode, MODES, "grounding model mode")
        if self.stage == "backbone" and self.mode not in (None, "full"):
            raise UsageError(f"mode={self.mode}: stage=backbone always trains a mode=full model (it sees every frame "
                             "token, so the backbone favours no design); leave mode= out")
        for name in ("steps", "batch", "rounds", "chunk", "threads", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name}={getattr(self, name)}: expected an integer >= 1")
        if self.frames < 2:
            raise UsageError(f"frames={self.frames}: expected at least 2 (the first and the last state)")
        if not self.lr > 0 or self.warmup < 0 or self.weight_decay < 0 or not self.grad_clip > 0:
            raise UsageError(f"lr={self.lr} and grad_clip={self.grad_clip} must be > 0, warmup={self.warmup} and "
                             f"weight_decay={self.weight_decay} >= 0")
        if not self.instructions:
            raise UsageError(f"instructions= is empty; choose kinds from {', '.join(KINDS)}")
        for kind in self.instructions:
            choose("instructions", kind, KINDS, "instruction kind")
        choose("encoder.kind", self.encoder.kind, ENCODERS, "frame encoder")


EXAMPLES = {
    "backbone": "stage=backbone data=data/ground-train out=runs/ground-backbone frames=16 steps=2000",
    "cache": "stage=cache backbone=runs/ground-backbone data=data/ground-train out=runs/ground-train-tokens.npz",
    "lm": "stage=lm cache=runs/ground-train-tokens.npz backbone=runs/ground-backbone mode=slowfast frames=64 "
          "out=runs/ground-slowfast-64",
}


def grounding_config(sizes: ModelSizes, mode: str, vocab_size: int, visual_dim: int) -> GroundingConfig:
    """The model's config; its classes are the instructions' (grounding.instructions), so targets index them."""
    try:
        return GroundingConfig(
            vocab_size=vocab_size, max_text_len=sizes.max_text_len, visual_dim=visual_dim, width=sizes.width,
            layers=sizes.layers, heads=sizes.heads, hybrid_layers=tuple(sizes.hybrid_layers), mode=mode,
            grid=sizes.grid, fast_frames=sizes.fast_frames, fast_grid=sizes.fast_grid, num_time_bins=KEYFRAME_BINS,
            dropout=sizes.dropout, tasks=TASKS, goal_fields=dict(FIELDS))
    except ValueError as e:
        raise UsageError(f"bad model.* sizes: {e}") from e


# ----------------------------------------------------------------------------------------------- frame encoder
@dataclass(frozen=True)
class Backbone:
    """A trained frame encoder and what identifies it: the sha256 of its weights file. ``run``: the stage=backbone
    run it belongs to (what ``backbone=`` names)."""

    encoder: FrameEncoder
    run: Path
    sha256: str
    config: dict[str, Any]

    def identity(self) -> dict[str, str]:
        return {"dir": str(self.run), "sha256": self.sha256}


def build_encoder(sizes: EncoderSizes, grid: int) -> FrameEncoder:
    if sizes.kind == "terminator":
        return FrameEncoder.terminator(grid=grid, width=sizes.width, depth=sizes.depth, patch_size=sizes.patch_size)
    return FrameEncoder.resnet(grid=grid, width=sizes.width, stem_stride=sizes.patch_size)


def save_backbone(encoder: FrameEncoder, sizes: EncoderSizes, image_size: int, directory: Path) -> str:
    """``directory``: config.json + model.safetensors; returns the weights' sha256 (the backbone's identity)."""
    save_checkpoint(directory, encoder, {**asdict(sizes), "grid": encoder.grid, "image_size": image_size})
    return file_sha256(directory / WEIGHTS_FILE)


def load_backbone(run: str | Path) -> Backbone:
    """The frame encoder of a stage=backbone run (eval mode); a missing one names the command that makes it."""
    directory = Path(run) / BACKBONE_DIR
    if not (directory / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"backbone={run}: no trained frame encoder in {directory} (train one: "
                                f"{BACKBONE_HOW.format(run)})")
    name, config = load_config(directory)
    if name != FrameEncoder.__name__:
        raise CheckpointError(f"{directory}: holds a {name}, not a {FrameEncoder.__name__}")
    try:
        sizes = EncoderSizes(**{k: config[k] for k in ("kind", "width", "depth", "patch_size")})
        encoder = build_encoder(sizes, int(config["grid"]))
        int(config["image_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{directory / 'config.json'}: not a frame encoder config ({e})") from e
    load_checkpoint(directory, encoder)
    return Backbone(encoder.eval(), Path(run), file_sha256(directory / WEIGHTS_FILE), config)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -------------------------------------------------------------------------------------------------- token cache
@dataclass
class TokenCache:
    """Frame tokens of every recorded frame of a folder of episodes, made by one backbone.

    ``tokens`` (F, N, C) float16 for all frames end to end, ``times`` (F,) s, ``offsets`` (E + 1,): episode ``e``
    is rows ``offsets[e]:offsets[e + 1]``; ``meta``: format, backbone (dir, sha256, config), data (root,
    recording), grid, visual_dim, and every episode's meta (what its instructions are made from).
    """

    tokens: np.ndarray
    times: np.ndarray
    offsets: np.ndarray
    meta: dict[str, Any]
    path: Path

    @property
    def episodes(self) -> list[dict[str, Any]]:
        return self.meta["episodes"]

    @property
    def grid(self) -> int:
        return int(self.meta["grid"])

    @property
    def visual_dim(self) -> int:
        return int(self.meta["visual_dim"])

    @classmethod
    def load(cls, path: str | Path) -> TokenCache:
        file = Path(path)
        if file.is_dir():
            file = file / CACHE_FILE
        if not file.is_file():
            raise FileNotFoundError(f"cache={path}: no token cache there (make it: {CACHE_HOW.format(path)})")
        try:
            with np.load(file, allow_pickle=False) as z:
                tokens, times, offsets = z["tokens"], z["times"], z["offsets"]
                meta = json.loads(str(z["meta"]))
        except (OSError, ValueError, KeyError) as e:
            raise UsageError(f"cache={path}: not a readable token cache ({type(e).__name__}: {e}); make it again: "
                             f"{CACHE_HOW.format(path)}") from e
        if meta.get("format") != CACHE_FORMAT:
            raise UsageError(f"cache={path}: format {meta.get('format')!r}, expected {CACHE_FORMAT!r}")
        if len(offsets) != len(meta["episodes"]) + 1 or offsets[-1] != len(tokens) or len(times) != len(tokens):
            raise UsageError(f"cache={path}: {len(offsets) - 1} episodes / {len(tokens)} frames do not add up; "
                             f"make it again: {CACHE_HOW.format(path)}")
        return cls(tokens, times, offsets, meta, file)

    def save(self, path: Path) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, tokens=self.tokens, times=self.times, offsets=self.offsets,
                 meta=np.array(json.dumps(self.meta)))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_durably(path, buffer.getbuffer())
        fsync_dir(path.parent)

    def check_backbone(self, sha256: str, whose: str, remake: str) -> None:
        """Refuse tokens from another backbone than the one ``whose`` weights were trained with."""
        made_by = self.meta["backbone"]
        if made_by["sha256"] != sha256:
            raise UsageError(f"cache={self.path} was made by the backbone in {made_by['dir']} (sha256 "
                             f"{made_by['sha256'][:12]}), but {whose} uses sha256 {sha256[:12]}: tokens of another "
                             f"backbone mean something else; make the cache with it: {remake}")

    def video(self, episode: int, frames: int) -> np.ndarray:
        """Episode ``episode``'s tokens at ``frames`` times evenly spread over it: (T, N, C) float32."""
        a, b = int(self.offsets[episode]), int(self.offsets[episode + 1])
        pick, _ = resample(np.arange(b - a), self.times[a:b], float(self.episodes[episode]["duration"]), frames)
        return self.tokens[a + pick].astype(np.float32)

    def videos(self, frames: int) -> torch.Tensor:
        """Every episode at T = ``frames``: (E, T, N, C) float32."""
        return torch.from_numpy(np.stack([self.video(e, frames) for e in range(len(self.episodes))]))

    def samples(self, split: str, seed: int, rounds: int, kinds: Sequence[str]) -> list[tuple[int, Instruction]]:
        """(episode position, instruction) of every instruction ``GroundingSet`` would make of these episodes."""
        return [(e, s) for e, meta in enumerate(self.episodes)
                for s in episode_instructions(meta, split, seed, rounds, kinds)]


def build_cache(cfg: GroundingTrainConfig) -> dict[str, Any]:
    """stage=cache: run the frozen encoder over every recorded frame of ``cfg.data``; write ``cfg.out``."""
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    if out.suffix != ".npz":
        out = out / CACHE_FILE
    if out.exists():
        raise FileExistsError(f"out={cfg.out}: {out} exists already; delete it or choose another out=")
    backbone = load_backbone(cfg.backbone)
    data = GroundingSet(cfg.data, "train", num_frames=2, instructions=["explicit"])  # checks the folder and metas
    size = int(backbone.config["image_size"])
    other = sorted({int(m["image_size"]) for m in data.metas.values()} - {size})
    if other:
        raise UsageError(f"data={cfg.data} holds {other[0]} px frames, but the backbone of {backbone.run} was "
                         f"trained on {size} px")
    encoder = backbone.encoder
    encoder.chunk = cfg.chunk
    tokens, times, offsets, metas = [], [], [0], []
    bar = tqdm(data.files.items(), desc="cache", unit="ep", file=sys.stderr, disable=not cfg.progress)
    with torch.no_grad():
        for _, path in bar:
            frames, t, meta = read_episode(path)
            images = torch.from_numpy(frames).permute(0, 3, 1, 2)[None]  # (1, n, 3, S, S) uint8
            tokens.append(encoder(images)[0].to(torch.float16).numpy())  # (n, N, C)
            times.append(t)
            offsets.append(offsets[-1] + len(t))
            metas.append(meta)
            bar.set_postfix(frames=offsets[-1])
    recording = json.loads((Path(cfg.data) / INDEX).read_text())["recording"]
    meta = {"format": CACHE_FORMAT, "backbone": {**backbone.identity(), "config": backbone.config},
            "data": {"root": str(cfg.data), "recording": recording}, "grid": encoder.grid,
            "visual_dim": encoder.feature_dim, "episodes": metas}
    cache = TokenCache(np.concatenate(tokens), np.concatenate(times), np.asarray(offsets, dtype=np.int64), meta, out)
    cache.save(out)
    return {"out": str(out), "episodes": len(metas), "frames": int(offsets[-1]), "tokens": list(cache.tokens.shape),
            "backbone": backbone.sha256}


# ------------------------------------------------------------------------------------------------------ samples
@dataclass
class EncodedSamples:
    """Every sample's instruction tokenised once, so that a training step only gathers rows: ``episode`` (S,) the
    row of its video, ``ids`` / ``mask`` (S, L) right-padded, ``targets`` head -> (S,) long (-100: not asked)."""

    episode: torch.Tensor
    ids: torch.Tensor
    mask: torch.Tensor
    targets: dict[str, torch.Tensor]
    kinds: list[str]

    def __len__(self) -> int:
        return len(self.kinds)

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Rows ``idx`` -> episode rows (B,), ids and mask (B, L) cut to the batch's longest, targets (B,)."""
        rows = torch.as_tensor(idx, dtype=torch.long)
        mask = self.mask[rows]
        length = int(mask.sum(dim=1).max())
        return self.episode[rows], self.ids[rows, :length], mask[:, :length], {
            k: v[rows] for k, v in self.targets.items()}


def encode_samples(samples: Sequence[tuple[int, Instruction]], tokenizer: InstructionTokenizer,
                   model_cfg: GroundingConfig, too_long: str) -> EncodedSamples:
    """(episode row, instruction) pairs -> tensors; ``too_long`` says what to do about an instruction over
    ``max_text_len`` tokens."""
    if not samples:
        raise UsageError("no instructions to learn from or score: the episodes answer none of the chosen kinds")
    try:
        ids, mask = tokenizer.encode_batch([s.text for _, s in samples], model_cfg.max_text_len)
    except ValueError as e:
        raise UsageError(f"{e}; {too_long}") from e
    targets = {head: torch.tensor([s.targets[HEAD_TARGETS.get(head, head)] for _, s in samples], dtype=torch.long)
               for head in model_cfg.head_sizes}
    return EncodedSamples(torch.tensor([e for e, _ in samples], dtype=torch.long), ids, mask, targets,
                          [s.kind for _, s in samples])


def batch_rows(seed: int, step: int, n: int, batch: int) -> np.ndarray:
    """The sample rows of training step ``step``: drawn from ``(seed, step)`` alone, so a resumed run sees the same."""
    return np.random.default_rng([seed, step]).integers(0, n, size=batch)


# ------------------------------------------------------------------------------------------------------ trainer
LossFn = Callable[[int], tuple[torch.Tensor, Mapping[str, torch.Tensor]]]


def asked_parts(parts: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The per-head losses of the heads the batch asks about: a head's logged mean is over batches that had it."""
    return {k: v for k, v in parts.items() if bool((targets[k] != IGNORE_INDEX).any())}


class Trainer:
    """AdamW, warm-up + cosine lr, gradient clipping and resumable checkpoints over named ``parts`` (module,
    config) trained together. Checkpoints go to RUN/checkpoints/step_XXXXXXX/ (written under a temporary name,
    renamed, then named by state.json), so a killed run resumes from the last complete one."""

    def __init__(self, cfg: GroundingTrainConfig, parts: Mapping[str, tuple[nn.Module, Any]], log: JsonlLog) -> None:
        self.cfg, self.parts, self.log = cfg, dict(parts), log
        self.params = [p for module, _ in self.parts.values() for p in module.parameters()]
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for p in self.params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
             {"params": [p for p in self.params if p.ndim < 2], "weight_decay": 0.0}], lr=cfg.lr)
        self.root = Path(cfg.out) / CHECKPOINTS
        self.step, self.seconds = 0, 0.0
        if cfg.resume:
            self._restore()

    def _restore(self) -> None:
        state_file = self.root / "state.json"
        if not state_file.is_file():
            return  # killed before its first checkpoint: start from step 0
        state = read_json(state_file, "the training state of the run being resumed")
        directory = self.root / state["checkpoint"]
        for name, (module, _) in self.parts.items():
            load_checkpoint(directory / name, module)
        load_optimizer(self.optimizer, directory / "optimizer")
        self.step, self.seconds = int(state["step"]), float(state["seconds"])

    def run(self, loss_fn: LossFn) -> dict[str, Any]:
        """Train from the current step to ``cfg.steps``; returns the last logged losses and the step count."""
        cfg = self.cfg
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        last: dict[str, float] = {}
        for module, _ in self.parts.values():
            module.train()
        bar = tqdm(range(self.step, cfg.steps), initial=self.step, total=cfg.steps, desc=cfg.stage, unit="step",
                   file=sys.stderr, disable=not cfg.progress)
        for step in bar:
            lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(cfg.seed * 7_919 + step)  # dropout, if any: the same on a resumed run
            loss, parts = loss_fn(step)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{cfg.stage} loss is {float(loss)} at step {step}; lower lr={cfg.lr}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
            self.optimizer.step()
            for k, v in {"loss": loss, **parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
                counts[k] = counts.get(k, 0) + 1
            self.step = step + 1
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                last = {k: round(v / counts[k], 5) for k, v in sums.items()}
                self.log.write(stage=cfg.stage, step=self.step, **last, lr=lr,
                               seconds=round(self.seconds + time.perf_counter() - t0, 2))
                bar.set_postfix(loss=f"{last['loss']:.4f}")
                sums, counts = {}, {}
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self._checkpoint(self.seconds + time.perf_counter() - t0)
        bar.close()
        self.seconds += time.perf_counter() - t0
        for module, _ in self.parts.values():
            module.eval()
        return {"steps": self.step, "seconds": round(self.seconds, 2), "last": last}

    def _checkpoint(self, seconds: float) -> None:
        name = f"step_{self.step:07d}"
        tmp = self.root / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
        for part, (module, config) in self.parts.items():
            save_checkpoint(tmp / part, module, config)
        save_optimizer(self.optimizer, tmp / "optimizer")
        final = self.root / name
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        fsync_dir(self.root)
        _write_json(self.root / "state.json", {"step": self.step, "seconds": round(seconds, 3), "checkpoint": name})
        for old in self.root.glob("step_*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)


def _truncate_log(path: Path, stage: str, step: int) -> None:
    """Drop the log rows of steps after the checkpoint a resumed run restarts from: they will be run again."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = [json.loads(line) for line in lines]
    keep = [line for line, row in zip(lines, rows, strict=True)
            if not (row.get("stage") == stage and "loss" in row and row["step"] > step)]
    if len(keep) != len(lines):
        write_file_durably(path, ("\n".join(keep) + "\n").encode())


def _write_json(path: Path, obj: Any) -> None:
    write_file_durably(path, (json.dumps(obj, indent=1) + "\n").encode())
    fsync_dir(path.parent)


def open_run(cfg: GroundingTrainConfig, run: dict[str, Any]) -> JsonlLog:
    """Create RUN with its run.json, or (resume=true) check that the run there is this one; the log to append to."""
    out = Path(cfg.out)
    path = out / RUN_FILE
    if cfg.resume:
        old = read_json(path, "resume=true needs the run to resume (start without resume=true)")
        changed = [k for k in RESUME_FIELDS if old.get(k) != json.loads(json.dumps(run.get(k)))]
        if changed:
            raise UsageError(f"cannot resume {out}: {', '.join(changed)} changed since it started (run.json); "
                             "use the same settings or a new out=")
        state = out / CHECKPOINTS / "state.json"
        step = int(read_json(state, "the training state")["step"]) if state.is_file() else 0
        _truncate_log(out / LOG_FILE, cfg.stage, step)
    else:
        if path.exists():
            raise FileExistsError(f"out={out} already holds a training run; pass resume=true or choose a new out=")
        out.mkdir(parents=True, exist_ok=True)
        _write_json(path, run)
    log = JsonlLog(out / LOG_FILE)
    log.write(event="start", stage=cfg.stage, resume=cfg.resume, unix=round(time.time(), 3))
    return log


def _train_settings(cfg: GroundingTrainConfig) -> dict[str, Any]:
    return {k: v for k, v in asdict(cfg).items() if k not in _RUNTIME and k not in ("model", "encoder")}


def finish_run(cfg: GroundingTrainConfig, log: JsonlLog, result: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """run.json completed with the steps and wall time (and ``extra``), the log closed; returns run.json."""
    path = Path(cfg.out) / RUN_FILE
    run = {**read_json(path, "the run's description"), **extra, "steps": result["steps"],
           "wall_s": result["seconds"], "last_losses": result["last"]}
    _write_json(path, run)
    log.write(event="done", stage=cfg.stage, step=result["steps"], seconds=result["seconds"])
    log.close()
    return run


# ------------------------------------------------------------------------------------------------------- stages
def train_backbone(cfg: GroundingTrainConfig) -> dict[str, Any]:
    """stage=backbone: frame encoder + full-mode model at T=frames, end to end; also trains the tokenizer."""
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    data = GroundingSet(cfg.data, "train", instructions=cfg.instructions, num_frames=cfg.frames, seed=cfg.seed,
                        rounds=cfg.rounds)
    sizes = {int(m["image_size"]) for m in data.metas.values()}
    if len(sizes) != 1:
        raise UsageError(f"data={cfg.data} mixes image sizes {sorted(sizes)}; record one size per folder")
    image_size = sizes.pop()
    texts = [s.text for _, s in data.samples]
    tokenizer_path = out / TOKENIZER_FILE
    if cfg.resume and tokenizer_path.is_file():
        tokenizer = InstructionTokenizer.load(tokenizer_path)
    else:
        tokenizer = InstructionTokenizer.train(texts, cfg.vocab_size)
    torch.manual_seed(cfg.seed)
    encoder = build_encoder(cfg.encoder, cfg.model.grid)
    model_cfg = grounding_config(cfg.model, "full", tokenizer.vocab_size, encoder.feature_dim)
    model = GroundingModel(model_cfg)
    rows = {k: i for i, k in enumerate(data.files)}
    samples = encode_samples([(rows[k], s) for k, s in data.samples], tokenizer, model_cfg,
                             "raise model.max_text_len")
    run = {"format": RUN_FORMAT, "stage": "backbone", "mode": "full", "frames": cfg.frames,
           "image_size": image_size, "model": asdict(model_cfg), "encoder": asdict(cfg.encoder),
           "train": _train_settings(cfg), "backbone_used": None,
           "data": {"root": str(cfg.data), "split": "train", "episodes": len(data.files), "samples": len(samples)},
           "tokenizer": {"vocab_size": tokenizer.vocab_size, "texts": len(texts)}}
    log = open_run(cfg, run)
    tokenizer.save(tokenizer_path)
    bar = tqdm(data.files, desc="load episodes", unit="ep", file=sys.stderr, disable=not cfg.progress)
    images = torch.from_numpy(np.stack([data.video(k)[0] for k in bar])).permute(0, 1, 4, 2, 3)  # (E, T, 3, S, S)
    encoder.chunk = cfg.batch * cfg.frames  # one pass, so the Terminator's slow loss covers every frame
    slow_loss = getattr(encoder.backbone, "slow_loss", None)
    encoder_config = {**asdict(cfg.encoder), "grid": cfg.model.grid, "image_size": image_size}

    def loss_fn(step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        episode, ids, mask, targets = samples.batch(batch_rows(cfg.seed, step, len(samples), cfg.batch))
        loss, parts = model.loss(model(encoder(images[episode]), ids, mask), targets)
        parts = asked_parts(parts, targets)
        if slow_loss is not None:
            parts["slow"] = slow_loss()
            loss = loss + parts["slow"]
        return loss, parts

    trainer = Trainer(cfg, {BACKBONE_DIR: (encoder, encoder_config), MODEL_DIR: (model, model_cfg)}, log)
    result = trainer.run(loss_fn)
    sha = save_backbone(encoder, cfg.encoder, image_size, out / BACKBONE_DIR)
    save(model, tokenizer, out / MODEL_DIR)
    run = finish_run(cfg, log, result, backbone={"dir": str(out), "sha256": sha},
                     params={"encoder": _count(encoder), "model": _count(model)})
    return {"out": str(out), "steps": run["steps"], "wall_s": run["wall_s"], "last": run["last_losses"],
            "backbone": sha}


def train_lm(cfg: GroundingTrainConfig) -> dict[str, Any]:
    """stage=lm: a fresh model of ``cfg.mode`` at T=``cfg.frames`` on the cached tokens of ``cfg.backbone``."""
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    backbone = load_backbone(cfg.backbone)
    tokenizer = InstructionTokenizer.load(Path(cfg.backbone) / TOKENIZER_FILE)
    cache = TokenCache.load(cfg.cache)
    cache.check_backbone(backbone.sha256, f"backbone={cfg.backbone}",
                         CACHE_HOW.replace("BACKBONE", cfg.backbone).format(cfg.cache))
    if cfg.model.grid != cache.grid:
        raise UsageError(f"model.grid={cfg.model.grid}, but cache={cfg.cache} holds {cache.grid}x{cache.grid} token "
                         f"maps per frame; set model.grid={cache.grid}")
    assert cfg.mode is not None  # __post_init__: stage=lm needs mode=
    model_cfg = grounding_config(cfg.model, cfg.mode, tokenizer.vocab_size, cache.visual_dim)
    samples = encode_samples(cache.samples("train", cfg.seed, cfg.rounds, cfg.instructions), tokenizer, model_cfg,
                             "raise model.max_text_len")
    run = {"format": RUN_FORMAT, "stage": "lm", "mode": cfg.mode, "frames": cfg.frames, "model": asdict(model_cfg),
           "encoder": backbone.config, "train": _train_settings(cfg), "backbone_used": backbone.identity(),
           "backbone": backbone.identity(),
           "data": {"cache": str(cfg.cache), "root": cache.meta["data"]["root"], "split": "train",
                    "episodes": len(cache.episodes), "samples": len(samples)}}
    log = open_run(cfg, run)
    videos = cache.videos(cfg.frames)  # (E, T, N, C)
    torch.manual_seed(cfg.seed)
    model = GroundingModel(model_cfg)

    def loss_fn(step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        episode, ids, mask, targets = samples.batch(batch_rows(cfg.seed, step, len(samples), cfg.batch))
        loss, parts = model.loss(model(videos[episode], ids, mask), targets)
        return loss, asked_parts(parts, targets)

    result = Trainer(cfg, {MODEL_DIR: (model, model_cfg)}, log).run(loss_fn)
    save(model, tokenizer, out / MODEL_DIR)
    run = finish_run(cfg, log, result, params={"model": _count(model)})
    return {"out": str(out), "mode": cfg.mode, "frames": cfg.frames, "steps": run["steps"], "wall_s": run["wall_s"],
            "last": run["last_losses"]}


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str]) -> GroundingTrainConfig:
    return compose(GroundingTrainConfig, "grounding/train", argv, "grounding training", EXAMPLES["lm"])


@command("grounding.train")
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(list(sys.argv[1:] if argv is None else argv))
    stage = {"backbone": train_backbone, "cache": build_cache, "lm": train_lm}[cfg.stage]
    print(json.dumps(stage(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

