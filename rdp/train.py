"""Train the Reactive Diffusion Policy (or the Diffusion Policy baseline) on recorded demonstrations.

    python -m rdp.train task=wipe policy=rdp data=DIR out=RUN [resume=true]

``policy=rdp`` trains in two stages: (a) the asymmetric tokenizer (``rdp.tokenizer``) reconstructs normalised action
chunks (B, T, Da) while its GRU decoder reads the normalised tactile embedding of every step (B, T, Dc); (b) every
chunk is encoded to its latent (the encoder's mean, (B, L, C)) and the latent diffusion policy learns obs -> latent.
``policy=dp`` skips (a) and learns obs -> action chunk. AdamW, cosine learning rate with linear warm-up, an EMA of
the diffusion model's weights (the EMA is what gets exported), one JSONL line per ``log_every`` steps.

Run directory::

    RUN/run.json         what the adapter needs: task, method, rates, keys, sizes (written first)
    RUN/log.jsonl        {"stage", "step", "loss", "lr", "seconds", ...}; "seconds" = wall clock in that stage,
                         summed over resumed runs
    RUN/state.json       per stage: last step, its checkpoint, seconds, done (replaced atomically)
    RUN/checkpoints/<stage>_<step>/   weights + optimizer (+ EMA), complete before state.json names it
    RUN/tokenizer/       final tokenizer (config.json + model.safetensors with the action/cond normaliser), rdp only
    RUN/policy/          final EMA diffusion policy (``DiffusionPolicy.from_checkpoint``)

``rdp.inference.make_policy`` runs a trained RUN in ``sim`` (``sim.eval policy=rdp policy.checkpoint=RUN``).
A bad override, dataset or run directory ends in one line and exit code 2 (``bus.cli``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bus.cli import UsageError, command, run_hydra
from bus.resources import config_dir
from dataset.durable import fsync_dir, write_file_durably
from rdp.api import get_method, method_names
from rdp.checkpoint import (
    RUN_FORMAT,
    load_checkpoint,
    load_optimizer,
    read_json,
    save_checkpoint,
    save_optimizer,
)
from rdp.data import (
    ACTION_DIM,
    ACTION_FRAMES,
    DataError,
    Episodes,
    Windows,
    cond_inputs,
    cond_parts,
    gather,
    load_episodes,
    make_windows,
)
from rdp.normalizer import Normalizer, NormMode
from rdp.policy import DiffusionPolicy, DiffusionPolicyConfig
from rdp.tokenizer import AsymmetricTokenizer, TokenizerConfig
from sensors.embedding import TactileEmbedding

STAGES = ("tokenizer", "policy")
# Fields of run.json that give the weights their meaning: a resume must agree on all of them.
_RESUME_FIELDS = ("task", "method", "rate_hz", "obs_steps", "horizon", "obs_keys", "cond_key", "tokenizer",
                  "diffusion", "tactile_embedding", "action_frame", "image_keys", "image_size", "encoder")


# ----------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class TokenizerSizes:
    latent_steps: int = 8
    latent_channels: int = 16
    encoder_hidden: int = 32
    decoder_hidden: int = 64
    kl_weight: float = 1e-6


@dataclass(frozen=True)
class DiffusionSizes:
    down_dims: tuple[int, ...] = (32, 64, 128)
    kernel_size: int = 5
    n_groups: int = 8
    diffusion_step_embed_dim: int = 32
    num_train_timesteps: int = 100
    num_inference_steps: int = 8


@dataclass(frozen=True)
class MethodConfig:
    """The ``train`` section of configs/policy/<name>.yaml; ``name`` is rdp (latent target) or dp (action)."""

    name: str
    obs_keys: tuple[str, ...] = ("proprio", "tactile")
    cond_key: str | None = "tactile"
    tokenizer: TokenizerSizes | None = field(default_factory=TokenizerSizes)
    diffusion: DiffusionSizes = field(default_factory=DiffusionSizes)
    tokenizer_steps: int = 1500
    policy_steps: int = 3000
    lr: float = 1e-3
    weight_decay: float = 1e-6
    warmup_steps: int = 100
    ema_decay: float = 0.995
    action_frame: str = "relative"  # positions relative to the TCP the chunk is planned from, or "absolute"
    scene_noise: float = 0.0  # std (m) of Gaussian noise added to the "scene" observation per training window
    obs_min_range: float = 0.0  # observation / decoder-conditioning dims scaled as if they spanned >= this
    # Std of one random offset per training window added to the proprio observations: (position m, 6-D rotation
    # features). Demonstrations hold the tool at one orientation except when contact twists it, so without it a
    # policy reads its own 0.1-degree tracking error as "in contact" (measured on peel).
    proprio_noise: tuple[float, float] = (0.0, 0.0)
    # Std of Gaussian noise on the tokenizer decoder's normalised conditioning in training (0: off). A probe for a
    # decoder that copies the demonstrations' force/squeeze correlation instead of reacting to touch (README, lift).
    cond_noise: float = 0.0
    # How the decoder's conditioning is normalised: "minmax" (DP's choice for low-dim inputs) or "meanstd" (unit
    # standard deviation: heavy-tailed tactile components keep their typical variation visible instead of being
    # squeezed into a narrow band by rare spikes).
    cond_norm: NormMode = "minmax"
    image_keys: tuple[str, ...] = ()  # camera streams the slow policy sees (e.g. wrist_rgb), held at the train rate
    image_size: int | None = None  # square side the frames are area-resized to; None = as recorded
    encoder: str = "resnet"  # image encoder: resnet or terminator (rdp.policy._image_encoder)
    encoder_width: int = 32
    encoder_stem_stride: int = 4  # patchify stem / Terminator patch size

    def __post_init__(self) -> None:
        if self.cond_key is not None:
            cond_parts(self.cond_key)
        if self.action_frame not in ACTION_FRAMES:
            raise ValueError(f"action_frame must be one of {ACTION_FRAMES}, got {self.action_frame!r}")
        if not self.cond_noise >= 0.0:
            raise ValueError(f"cond_noise must be >= 0, got {self.cond_noise}")
        if self.cond_norm not in get_args(NormMode):
            raise ValueError(f"cond_norm must be one of {get_args(NormMode)}, got {self.cond_norm!r}")
        if self.name not in method_names():
            raise ValueError(f"policy method must be one of {', '.join(method_names())}, got {self.name!r}")
        get_method(self.name).check_config(self)
        if self.image_keys and self.encoder not in ("resnet", "terminator"):
            raise ValueError(f"image_keys {self.image_keys} need encoder resnet or terminator, got {self.encoder!r}")
        if self.policy_steps < 1 or not self.obs_keys:
            raise ValueError(f"need policy_steps >= 1 and obs_keys, got {self.policy_steps}, {self.obs_keys}")
        if len(self.proprio_noise) != 2 or min(self.proprio_noise) < 0:
            raise ValueError(f"proprio_noise must be [position std, rotation std] >= 0, got {self.proprio_noise}")


@dataclass(frozen=True)
class TrainConfig:
    """configs/train.yaml, typed."""

    task: str
    method: MethodConfig
    data: str
    out: str
    resume: bool = False
    seed: int = 0
    rate_hz: float = 25.0
    obs_steps: int = 2
    horizon: int = 32
    batch_size: int = 64
    num_threads: int = 1
    device: str = "cpu"
    tactile_embedding: str = "default"
    progress: bool = True
    log_every: int = 25
    checkpoint_every: int = 500
    keep_checkpoints: bool = True  # false: delete RUN/checkpoints/ (weights + optimizer) once training finished
    # A scene estimator (python -m rdp.perception stage=train out=DIR): the policy observes its estimate from each
    # episode's first scene-camera frame (scene_seen, proprio_scene_seen), never the simulator's scene; RUN keeps
    # a copy.
    perception: str | None = None

    @classmethod
    def from_hydra(cls, cfg: Mapping[str, Any]) -> TrainConfig:
        """The resolved hydra config (a plain dict) -> TrainConfig; an unknown key or a value the checks refuse
        raises a ``UsageError`` (a ValueError) naming it."""
        try:
            return cls._from_hydra(cfg)
        except UsageError:
            raise
        except (ValueError, TypeError) as exc:
            raise UsageError(f"bad training config: {exc}") from exc

    @classmethod
    def _from_hydra(cls, cfg: Mapping[str, Any]) -> TrainConfig:
        d = dict(cfg)
        task = d.pop("task")["name"]
        policy = dict(d.pop("policy"))
        train = dict(policy.get("train") or {})
        tok = train.pop("tokenizer", None)
        diffusion = dict(train.pop("diffusion", {}) or {})
        if "down_dims" in diffusion:
            diffusion["down_dims"] = tuple(diffusion["down_dims"])
        method = MethodConfig(
            name=policy.get("method", policy["name"]), obs_keys=tuple(train.pop("obs_keys", ("proprio",))),
            image_keys=tuple(train.pop("image_keys", None) or ()),
            proprio_noise=tuple(train.pop("proprio_noise", None) or (0.0, 0.0)),
            tokenizer=TokenizerSizes(**tok) if tok is not None else None, diffusion=DiffusionSizes(**diffusion),
            **train,
        )
        return cls(task=task, method=method, **d)


# ----------------------------------------------------------------------------------------------- training


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a model's parameters (buffers copied), with Diffusion Policy's warm-up:
    decay = min(max_decay, (1 + step) / (10 + step)), so early averages are not dominated by the random init."""

    def __init__(self, model: nn.Module, max_decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.max_decay = max_decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.max_decay, (1 + step) / (10 + step))
        for p_ema, p in zip(self.model.parameters(), model.parameters(), strict=True):
            p_ema.lerp_(p.detach(), 1.0 - decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)


class JsonlLog:
    """Append-only JSON lines, flushed per line so a killed run keeps its log; ``None`` writes nothing (the
    non-zero ranks of a distributed run)."""

    def __init__(self, path: Path | None) -> None:
        self.file = open(path, "a", buffering=1) if path is not None else None

    def write(self, **row: Any) -> None:
        if self.file is not None:
            self.file.write(json.dumps(row) + "\n")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


@dataclass(frozen=True)
class Dist:
    """Data-parallel training under ``torchrun`` (WORLD_SIZE > 1): every rank draws its own batches, gradients are
    averaged with an all-reduce after each backward (the DDP update, done by hand because the loss is computed by
    model methods other than ``forward``), and rank 0 alone writes the run directory. gloo on the CPU, nccl on
    CUDA. A single process is ``Dist()``: rank 0 of 1, nothing distributed."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        return cls(dist.get_rank(), dist.get_world_size())

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        """Tear the process group down once every rank is done. Left to interpreter exit, gloo's threads were
        destroyed still joinable now and then ("terminate called without an active exception", SIGABRT on rank 0
        after a finished run, seen once under the full test suite's load)."""
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def broadcast(self, model: nn.Module) -> None:
        """Rank 0's weights to every rank (models are built with independent random inits)."""
        if self.world > 1:
            for t in [*model.parameters(), *model.buffers()]:
                torch.distributed.broadcast(t.data, 0)

    def average_gradients(self, model: nn.Module) -> None:
        if self.world <= 1:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def in_sync(self, model: nn.Module) -> bool:
        """True when every rank holds the same weights (checked at the end of a distributed run)."""
        if self.world <= 1:
            return True
        total = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
        gathered = [torch.zeros_like(total) for _ in range(self.world)]
        torch.distributed.all_gather(gathered, total)
        return all(torch.equal(g, gathered[0]) for g in gathered)


_DIST = Dist()
_LAST_MODEL: list[nn.Module] = []  # the model trained last, for the end-of-run sync check


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) every stage of ``cfg.method``; return a summary (steps/s, seconds, final losses)."""
    global _DIST
    torch.set_num_threads(cfg.num_threads)
    _DIST = Dist.from_env(cfg.device)
    out = Path(cfg.out)
    perception = _load_perception(cfg)
    episodes = load_episodes(cfg.data, cfg.rate_hz, cfg.method.image_keys, cfg.method.image_size,
                             embedding=TactileEmbedding.load(cfg.tactile_embedding), perception=perception)
    if episodes.task != cfg.task:
        raise DataError(f"{cfg.data}: episodes of task {episodes.task!r}, but training was asked for {cfg.task!r}")
    cond = cond_inputs(cfg.method.cond_key) if cfg.method.cond_key else []
    missing = [k for k in dict.fromkeys([*cfg.method.obs_keys, *cond]) if k not in episodes.features]
    if missing:
        raise DataError(f"{cfg.data}: the policy observes {list(cfg.method.obs_keys)} and its decoder reads "
                        f"{cfg.method.cond_key!r}, but the dataset has no {missing} "
                        f"(have {sorted(episodes.features)}); re-record it or drop them from obs_keys / cond_key"
                        + ("; a goal comes from recordings made with goals (teleop.record_expert goal=random)"
                           if "goal" in missing else ""))
    windows = make_windows(episodes, cfg.obs_steps, cfg.horizon)
    run = _run_info(cfg, episodes)
    if perception is not None:
        run["perception"] = {"camera": perception.cfg.reads, "encoder": perception.cfg.encoder,
                             "image_size": perception.cfg.image_size, "source": str(cfg.perception)}
    state = _open_run(out, cfg, run) if _DIST.main else {}
    if perception is not None and _DIST.main:
        perception.save(out / "perception")
    _DIST.barrier()
    if not _DIST.main:
        state = json.loads((out / "state.json").read_text())
    log = JsonlLog(out / "log.jsonl" if _DIST.main else None)
    log.write(event="start", resume=cfg.resume, windows=len(windows), episodes=len(episodes.lengths),
              data=episodes.source, method=cfg.method.name, unix=time.time())
    summary: dict[str, Any] = {"windows": len(windows), "episodes": int(len(episodes.lengths)),
                               "world_size": _DIST.world}
    try:
        target, stages = get_method(cfg.method.name).training_target(cfg, episodes, windows, state, log)
        summary.update(stages)
        summary["policy"] = _train_policy(cfg, episodes, windows, target, state, log)
    finally:
        log.close()
    _DIST.barrier()
    if _DIST.world > 1:
        summary["ranks_in_sync"] = _DIST.in_sync(_LAST_MODEL[0])
        _DIST.close()
    if _DIST.main and not cfg.keep_checkpoints:  # what a shipped run keeps: run.json, log.jsonl, tokenizer/, policy/
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        (out / "state.json").unlink(missing_ok=True)
    return summary


def _load_perception(cfg: TrainConfig) -> Any:
    """The scene estimator of ``cfg.perception`` (None without one), checked against the task."""
    if not cfg.perception:
        return None
    from rdp.perception import SceneEstimator

    estimator = SceneEstimator.load(cfg.perception)
    if estimator.cfg.task != cfg.task:
        raise UsageError(f"perception={cfg.perception} estimates the {estimator.cfg.task!r} scene, not {cfg.task!r}")
    return estimator


def _run_info(cfg: TrainConfig, episodes: Episodes) -> dict[str, Any]:
    m = cfg.method
    dims = {k: int(v.shape[-1]) for k, v in episodes.features.items()}
    return {
        "format": RUN_FORMAT, "task": cfg.task, "method": m.name, "rate_hz": cfg.rate_hz, "obs_steps": cfg.obs_steps,
        "horizon": cfg.horizon, "obs_keys": list(m.obs_keys), "obs_dims": [dims[k] for k in m.obs_keys],
        "cond_key": m.cond_key, "action_dim": int(episodes.action.shape[-1]), "num_arms": episodes.num_arms,
        "num_pads": episodes.num_pads, "tactile_embedding": cfg.tactile_embedding,
        "tokenizer": dataclasses.asdict(m.tokenizer) if m.tokenizer else None,
        "diffusion": {**dataclasses.asdict(m.diffusion), "down_dims": list(m.diffusion.down_dims)},
        "data": episodes.source, "action_representation": "per arm [x, y, z, r6 (rotation matrix columns 1-2), grip]",
        "action_frame": m.action_frame, **_image_info(m, episodes),
        "training": {"tokenizer_steps": m.tokenizer_steps, "policy_steps": m.policy_steps, "lr": m.lr,
                     "batch_size": cfg.batch_size, "seed": cfg.seed, "scene_noise": m.scene_noise,
                     "obs_min_range": m.obs_min_range, "proprio_noise": list(m.proprio_noise),
                     "cond_noise": m.cond_noise, "cond_norm": m.cond_norm},
    }


def _image_info(m: MethodConfig, episodes: Episodes) -> dict[str, Any]:
    """run.json's image fields, only for image policies (low-dim runs keep their run.json unchanged): what the
    adapter needs to feed live frames as in training (hold at the camera rate, recorded size, resize)."""
    if not m.image_keys:
        return {}
    (h, w), = {episodes.images[k].shape[1:3] for k in m.image_keys}
    return {"image_keys": list(m.image_keys), "image_size": m.image_size, "image_shape": [int(h), int(w)],
            "camera_size": {k: list(episodes.camera_size[k]) for k in m.image_keys},
            "image_hz": {k: episodes.image_hz[k] for k in m.image_keys}, "encoder": m.encoder}


def _open_run(out: Path, cfg: TrainConfig, run: dict[str, Any]) -> dict[str, Any]:
    """Create RUN (refusing to overwrite) or, with resume, check it matches and return its state."""
    state_file = out / "state.json"
    if cfg.resume:
        if not state_file.is_file():
            raise UsageError(f"resume=true, but {state_file} does not exist (no run to resume there); start "
                             "without resume=true")
        old = read_json(out / "run.json", "the run being resumed")
        diff = [f"{k}: run {old.get(k)!r}, now {run.get(k)!r}" for k in _RESUME_FIELDS if old.get(k) != run.get(k)]
        if diff:
            raise UsageError(f"cannot resume {out}: the configuration changed ({'; '.join(diff)})")
        return read_json(state_file, "the run's training state")
    if (out / "run.json").exists() or state_file.exists():
        raise FileExistsError(f"out={out} already holds a training run; pass resume=true or choose a new out")
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    _write_json(out / "run.json", run)
    state = {stage: {"step": 0, "checkpoint": None, "seconds": 0.0, "done": False} for stage in STAGES}
    _write_json(state_file, state)
    return state


def train_tokenizer(
    cfg: TrainConfig, episodes: Episodes, windows: Windows, state: dict, log: JsonlLog
) -> tuple[AsymmetricTokenizer, Normalizer, dict[str, Any]]:
    """Stage (a): fit the action/cond normaliser, train the tokenizer; return it (eval mode) and the normaliser."""
    m, sizes = cfg.method, cfg.method.tokenizer
    assert sizes is not None and m.cond_key is not None
    everything = gather(episodes, windows, slice(None), (), m.cond_key, m.action_frame)
    cond = everything["cond"].reshape(-1, everything["cond"].shape[-1])
    tok_cfg = TokenizerConfig(action_dim=episodes.action.shape[-1], cond_dim=cond.shape[-1], horizon=cfg.horizon,
                              **dataclasses.asdict(sizes))
    tokenizer = AsymmetricTokenizer(tok_cfg).to(cfg.device)
    norm = Normalizer({"action": tok_cfg.action_dim, "cond": tok_cfg.cond_dim}).to(cfg.device)
    norm.fit("action", _all_actions(episodes, windows, m.action_frame), "minmax")
    norm.fit("cond", cond, m.cond_norm, m.obs_min_range)
    optimizer = torch.optim.AdamW(tokenizer.parameters(), lr=m.lr, weight_decay=m.weight_decay)
    st = state["tokenizer"]
    if st["checkpoint"]:
        ckpt_dir = Path(cfg.out) / st["checkpoint"]
        stored = load_checkpoint(ckpt_dir / "model", tokenizer)
        norm.load_arrays(stored.normalizer)
        load_optimizer(optimizer, ckpt_dir)

    def save(directory: Path) -> None:
        save_checkpoint(directory / "model", tokenizer, tok_cfg, norm.arrays())
        save_optimizer(optimizer, directory)

    def loss_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        batch = _batch(cfg, episodes, windows, step, stage=0, obs_keys=(), cond_key=m.cond_key)
        cond = norm.normalize("cond", batch["cond"])
        if m.cond_noise > 0:
            cond = cond + m.cond_noise * torch.randn_like(cond)
        losses = tokenizer.loss(norm.normalize("action", batch["action"]), cond)
        return losses["loss"], {"recon": float(losses["recon"].detach()), "kl": float(losses["kl"].detach())}

    result = _loop(cfg, "tokenizer", m.tokenizer_steps, tokenizer, optimizer, None, loss_fn, save, state, log)
    tokenizer.eval()
    if _DIST.main:
        save_checkpoint(Path(cfg.out) / "tokenizer", tokenizer, tok_cfg, norm.arrays())
    return tokenizer, norm, result


@torch.no_grad()
def encode_latents(
    tokenizer: AsymmetricTokenizer, norm: Normalizer, episodes: Episodes, windows: Windows, action_frame: str
) -> np.ndarray:
    """Every window's action chunk -> the tokenizer encoder's mean latent (N, L, C): the slow policy's target."""
    tokenizer.eval()
    device = next(tokenizer.parameters()).device
    latents = []
    for start in range(0, len(windows), 1024):
        chunk = gather(episodes, windows, slice(start, start + 1024), (), None, action_frame)["action"]
        actions = norm.normalize("action", torch.from_numpy(chunk).to(device))
        latents.append(tokenizer.encode(actions)[1].cpu().numpy())
    return np.concatenate(latents)


def _train_policy(
    cfg: TrainConfig, episodes: Episodes, windows: Windows, latents: np.ndarray | None, state: dict, log: JsonlLog
) -> dict[str, Any]:
    """Stage (b): the diffusion policy on (obs history, latent chunk) or (obs history, action chunk)."""
    m, d = cfg.method, cfg.method.diffusion
    sizes = m.tokenizer or TokenizerSizes()
    dp_cfg = DiffusionPolicyConfig(
        target="latent" if latents is not None else "action", horizon=cfg.horizon,
        action_dim=int(episodes.action.shape[-1]), latent_steps=sizes.latent_steps,
        latent_channels=sizes.latent_channels, obs_steps=cfg.obs_steps, lowdim_keys=tuple(m.obs_keys),
        lowdim_dims=tuple(int(episodes.features[k].shape[-1]) for k in m.obs_keys), **_image_config(m, episodes),
        lowdim_min_range=m.obs_min_range,
        **{**dataclasses.asdict(d), "down_dims": tuple(d.down_dims)},
    )
    policy = DiffusionPolicy(dp_cfg).to(cfg.device)
    target_key = dp_cfg.target
    target_all = latents if latents is not None else _all_actions(episodes, windows, m.action_frame)
    policy.fit_normalizer({k: episodes.features[k] for k in m.obs_keys}, target_all)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=m.lr, weight_decay=m.weight_decay)
    ema = EMA(policy, m.ema_decay)
    st = state["policy"]
    if st["checkpoint"]:
        ckpt_dir = Path(cfg.out) / st["checkpoint"]
        policy.load(ckpt_dir / "model")
        ema.model.load(ckpt_dir / "ema")
        load_optimizer(optimizer, ckpt_dir)

    def save(directory: Path) -> None:
        policy.save(directory / "model")
        ema.model.save(directory / "ema")
        save_optimizer(optimizer, directory)

    generator = torch.Generator()

    def loss_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        batch = _batch(cfg, episodes, windows, step, stage=1, obs_keys=m.obs_keys, cond_key=None, latents=latents,
                       image_keys=m.image_keys)
        generator.manual_seed(cfg.seed * 1_000_003 + step)
        loss = policy.compute_loss({"obs": batch["obs"], target_key: batch["target"]}, generator=generator)
        return loss, {}

    result = _loop(cfg, "policy", m.policy_steps, policy, optimizer, ema, loss_fn, save, state, log)
    if _DIST.main:
        ema.model.save(Path(cfg.out) / "policy")
    return result


def _image_config(m: MethodConfig, episodes: Episodes) -> dict[str, Any]:
    """The slow policy's image fields: none for low-dim policies, else keys, (H, W) and encoder sizes."""
    if not m.image_keys:
        return {"image_keys": (), "encoder": "none"}
    (h, w), = {episodes.images[k].shape[1:3] for k in m.image_keys}
    return {"image_keys": tuple(m.image_keys), "image_size": (int(h), int(w)), "encoder": m.encoder,
            "encoder_width": m.encoder_width, "encoder_stem_stride": m.encoder_stem_stride}


def _offset_proprio(x: np.ndarray, pos: np.ndarray | float, rot: np.ndarray | float = 0.0) -> np.ndarray:
    """Proprio features (B, To, 10 A) plus offsets broadcast against (B, To, A, 3) positions / (B, To, A, 6)
    rotation features; a new float32 array."""
    view = x.reshape(*x.shape[:-1], x.shape[-1] // ACTION_DIM, ACTION_DIM).copy()
    view[..., :3] += pos
    view[..., 3:9] += rot
    return view.reshape(x.shape).astype(np.float32)


def _batch(
    cfg: TrainConfig, episodes: Episodes, windows: Windows, step: int, stage: int, obs_keys: tuple[str, ...],
    cond_key: str | None, latents: np.ndarray | None = None, image_keys: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A random batch, drawn from a generator seeded by (seed, stage, step): a resumed run sees the same batches.
    Images go (B, To, H, W, 3) uint8 -> (B, To, 3, H, W) uint8 tensors; the policy scales them to floats."""
    rng = np.random.default_rng([cfg.seed, stage, step] + ([_DIST.rank] if _DIST.world > 1 else []))
    idx = rng.integers(0, len(windows), size=cfg.batch_size)
    b = gather(episodes, windows, idx, obs_keys, cond_key, cfg.method.action_frame, image_keys=image_keys)
    dev = cfg.device
    if cfg.method.scene_noise > 0 and {"scene", "proprio_scene"} & set(b["obs"]):
        # Localisation error: one offset per window (the same at every obs step), so the policy cannot key its
        # behaviour on the exact scene numbers of one demonstration. A moved anchor moves every arm's relative
        # position the other way.
        noise = rng.normal(0.0, cfg.method.scene_noise, (len(idx), 1, episodes.features["scene"].shape[-1]))
        if "scene" in b["obs"]:
            b["obs"]["scene"] = (b["obs"]["scene"] + noise).astype(np.float32)
        if "proprio_scene" in b["obs"]:
            b["obs"]["proprio_scene"] = _offset_proprio(b["obs"]["proprio_scene"], -noise[..., None, :3])
    pos_std, rot_std = cfg.method.proprio_noise
    for key in ("proprio", "proprio_scene"):
        if key in b["obs"] and (pos_std > 0 or rot_std > 0):
            arms = b["obs"][key].shape[-1] // ACTION_DIM
            pos = rng.normal(0.0, pos_std, (len(idx), 1, arms, 3)) if pos_std > 0 else 0.0
            rot = rng.normal(0.0, rot_std, (len(idx), 1, arms, 6)) if rot_std > 0 else 0.0
            b["obs"][key] = _offset_proprio(b["obs"][key], pos, rot)
    obs = {k: torch.from_numpy(v) for k, v in b["obs"].items()}
    obs.update({k: obs[k].permute(0, 1, 4, 2, 3) for k in image_keys})
    out: dict[str, Any] = {"obs": {k: v.to(dev) for k, v in obs.items()},
                           "action": torch.from_numpy(b["action"]).to(dev)}
    if cond_key is not None:
        out["cond"] = torch.from_numpy(b["cond"]).to(dev)
    out["target"] = torch.from_numpy(latents[idx]).to(dev) if latents is not None else out["action"]
    return out


def _all_actions(episodes: Episodes, windows: Windows, action_frame: str) -> np.ndarray:
    """Every window's action chunk flattened to (N T, Da): what the action normaliser is fitted on (in the
    relative frame the same recorded step has a different value in every window that holds it)."""
    if action_frame == "absolute":
        return episodes.action
    parts = [gather(episodes, windows, slice(i, i + 4096), (), None, action_frame)["action"]
             for i in range(0, len(windows), 4096)]
    return np.concatenate(parts).reshape(-1, episodes.action.shape[-1])


LossFn = Callable[[int], tuple[torch.Tensor, dict[str, float]]]
SaveFn = Callable[[Path], None]


def _loop(
    cfg: TrainConfig, stage: str, total: int, model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None,
    loss_fn: LossFn, save: SaveFn, state: dict, log: JsonlLog,
) -> dict[str, Any]:
    """The shared optimisation loop: lr schedule, step, EMA, log, checkpoint; returns stage statistics."""
    st = state[stage]
    start_step, prior_seconds = int(st["step"]), float(st["seconds"])
    m = cfg.method
    model.train()
    _DIST.broadcast(model)
    _LAST_MODEL[:] = [model]
    t0 = time.perf_counter()
    loss_sum, loss_n = 0.0, 0
    last: dict[str, float] = {}
    bar = tqdm(range(start_step, total), initial=start_step, total=total, desc=stage, unit="step",
               file=sys.stderr, disable=not cfg.progress or not _DIST.main)
    for step in bar:
        lr = lr_at(step, total, m.lr, m.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(cfg.seed * 7_919 + step + 104_729 * _DIST.rank)  # the tokenizer's posterior sample
        loss, extra = loss_fn(step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{stage} loss is {float(loss)} at step {step}; lower lr={m.lr}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _DIST.average_gradients(model)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if ema is not None:
            ema.update(model, step)
        loss_sum, loss_n = loss_sum + float(loss.detach()), loss_n + 1
        done_steps = step + 1
        if done_steps % cfg.log_every == 0 or done_steps == total:
            seconds = prior_seconds + time.perf_counter() - t0
            last = {"loss": loss_sum / loss_n, **extra}
            log.write(stage=stage, step=done_steps, loss=last["loss"], lr=lr, seconds=round(seconds, 3),
                      **{k: v for k, v in extra.items()})
            bar.set_postfix(loss=f"{last['loss']:.4f}")
            loss_sum, loss_n = 0.0, 0
        if done_steps % cfg.checkpoint_every == 0 or done_steps == total:
            _checkpoint(cfg, stage, done_steps, prior_seconds + time.perf_counter() - t0, done_steps == total,
                        save, state)
    bar.close()
    seconds = prior_seconds + time.perf_counter() - t0
    ran = total - start_step
    if not state[stage]["done"]:
        _checkpoint(cfg, stage, total, seconds, True, save, state)
    own = time.perf_counter() - t0
    log.write(event="done", stage=stage, step=total, seconds=round(seconds, 3),
              steps_per_s=round(ran / own, 3) if ran and own > 0 else None)
    model.eval()
    return {"steps": total, "steps_this_run": ran, "seconds": seconds, "steps_per_s": ran / own if ran else None,
            "last_loss": last.get("loss")}


def _checkpoint(cfg: TrainConfig, stage: str, step: int, seconds: float, done: bool, save: SaveFn, state: dict) -> None:
    """Write checkpoints/<stage>_<step>/ completely under a temporary name, rename it, then point state.json at it
    and delete the stage's older checkpoints: a crash at any point leaves a consistent state.json. Rank 0 only."""
    if not _DIST.main:
        return
    root = Path(cfg.out) / "checkpoints"
    name = f"{stage}_{step:07d}"
    tmp = root / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    save(tmp)
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_dir(root)
    state[stage] = {"step": step, "checkpoint": f"checkpoints/{name}", "seconds": round(seconds, 3), "done": done}
    _write_json(Path(cfg.out) / "state.json", state)
    for old in root.glob(f"{stage}_*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, obj: Any) -> None:
    write_file_durably(path, (json.dumps(obj, indent=1) + "\n").encode())
    fsync_dir(path.parent)


# ----------------------------------------------------------------------------------------------- CLI


CONFIG_DIR = config_dir()


@command("rdp.train")
def main(argv: list[str] | None = None) -> int:
    return run_hydra(CONFIG_DIR, "train", sys.argv[1:] if argv is None else argv, _run)


def _run(cfg: Any) -> None:
    """The hydra application: ``cfg`` is configs/train.yaml composed with the command line's overrides."""
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    summary = train(TrainConfig.from_hydra(container))
    if _DIST.main:  # one summary line for the run (ranks > 0 would interleave theirs with it)
        print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
