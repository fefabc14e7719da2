"""Train the world model (slow learning): the frame autoencoder, then the action-conditioned video diffusion model on
its latents.

    python -m world_model.train data=DIR out=RUN [ae.steps=N] [diffusion.steps=N] [resume=true]
    python -m world_model.train data=DIR out=RUN2 autoencoder=RUN model.motion=warp   # RUN's autoencoder, a new model

Writes (every file complete before it is named; weights as safetensors + readable config, no pickle)::

    RUN/autoencoder/         config.json + model.safetensors (with the latent scale)
    RUN/diffusion/           config.json + model.safetensors
    RUN/run.json             what the weights mean: sizes, data, the command
    RUN/log.jsonl            loss, lr and seconds per logged step
    RUN/checkpoints/<stage>/ weights + optimizer + step of the stage in progress (resume=true continues it)

The diffusion stage draws windows of ``context_frames + chunk_frames`` frames and a context length in
``1 .. context_frames`` per batch, so one model serves the full context and the single-frame-context ablation.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bus.cli import UsageError, command
from bus.config import compose
from rdp.checkpoint import load_checkpoint, load_optimizer, save_checkpoint, save_optimizer
from rdp.schedulers import SchedulerConfig
from rdp.train import JsonlLog, lr_at
from world_model.autoencoder import AutoencoderConfig, FrameAutoencoder
from world_model.data import VideoSet
from world_model.video_diffusion import VideoDiffusion, VideoDiffusionConfig


@dataclass
class StageConfig:
    steps: int = 2000
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1 or not self.lr > 0 or self.warmup < 0:
            raise ValueError(f"stage needs steps, batch >= 1, lr > 0, warmup >= 0, got {self}")


@dataclass
class ModelSizes:
    """The world model's sizes (``world_model.video_diffusion.VideoDiffusionConfig`` without the data's)."""

    latent_channels: int = 4
    ae_width: int = 32
    context_frames: int = 4
    chunk_frames: int = 4
    width: int = 96
    depth: int = 3
    heads: int = 4
    attention: str = "time"  # time | spacetime
    motion: str = "none"  # none | warp (world_model.motion)
    prediction: str = "epsilon"  # epsilon | sample
    train_timesteps: int = 100
    inference_steps: int = 10


@dataclass
class WorldModelTrainConfig:
    """``configs/world_model/train.yaml``."""

    data: str = ""
    out: str = ""
    seed: int = 0
    resume: bool = False
    progress: bool = True
    threads: int = 1
    autoencoder: str = ""  # a trained run whose autoencoder to reuse (its sizes must match); empty: train one
    init: str = ""  # a trained run (same sizes) both stages start from and fine-tune; the camera motion is re-estimated
    log_every: int = 50
    checkpoint_every: int = 500
    model: ModelSizes = field(default_factory=ModelSizes)
    ae: StageConfig = field(default_factory=lambda: StageConfig(steps=2000, batch=64, lr=1e-3))
    diffusion: StageConfig = field(default_factory=lambda: StageConfig(steps=10000, batch=32, lr=5e-4))


def model_configs(sizes: ModelSizes, image_size: int, action_dim: int) -> tuple[AutoencoderConfig,
                                                                                 VideoDiffusionConfig]:
    ae = AutoencoderConfig(image_size=image_size, latent_channels=sizes.latent_channels, width=sizes.ae_width)
    vd = VideoDiffusionConfig(latent_channels=sizes.latent_channels, latent_size=ae.latent_size,
                              action_dim=action_dim, context_frames=sizes.context_frames,
                              chunk_frames=sizes.chunk_frames, width=sizes.width, depth=sizes.depth,
                              heads=sizes.heads, attention=sizes.attention, motion=sizes.motion,
                              prediction=sizes.prediction,
                              scheduler=SchedulerConfig(num_train_timesteps=sizes.train_timesteps,
                                                        num_inference_steps=sizes.inference_steps))
    return ae, vd


def frames_tensor(frames: np.ndarray) -> torch.Tensor:
    """(..., S, S, 3) uint8 -> (..., 3, S, S) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).movedim(-1, -3).float() / 255.0


class Stage:
    """One optimisation stage with resumable checkpoints under RUN/checkpoints/<name>/."""

    def __init__(self, name: str, cfg: Any, stage: StageConfig, model: nn.Module, model_cfg: object, log: JsonlLog,
                 params: list[nn.Parameter] | None = None, config_key: str | None = None) -> None:
        """``cfg``: a config with out, seed, resume, progress, log_every and checkpoint_every; ``params``: what
        the optimiser trains (default: all of ``model``'s parameters); ``config_key``: the stage's section in
        the config, named in errors (default ``name``)."""
        self.name, self.cfg, self.stage, self.model, self.model_cfg, self.log = name, cfg, stage, model, model_cfg, log
        self.config_key = config_key or name
        self.params = list(model.parameters()) if params is None else params
        self.optimizer = torch.optim.AdamW(self.params, lr=stage.lr, weight_decay=1e-4)
        self.dir = Path(cfg.out) / "checkpoints" / name
        self.step, self.seconds = 0, 0.0
        state = self.dir / "state.json"
        if cfg.resume and state.exists():
            meta = json.loads(state.read_text())
            load_checkpoint(self.dir / "model", model)
            load_optimizer(self.optimizer, self.dir / "optimizer")
            self.step, self.seconds = int(meta["step"]), float(meta["seconds"])

    def run(self, loss_fn: Callable[[torch.Generator], torch.Tensor | float]) -> float:
        """Train to ``stage.steps``; returns the last logged mean loss. ``loss_fn`` returns the step's loss as a
        tensor (the stage takes its gradient), or as a float when it has accumulated the gradients itself (the
        stage has zeroed them before calling it)."""
        generator = torch.Generator().manual_seed(self.cfg.seed * 7919 + self.step)
        t0, losses, last = time.perf_counter(), [], float("nan")
        bar = tqdm(range(self.step, self.stage.steps), initial=self.step, total=self.stage.steps, desc=self.name,
                   unit="step", file=sys.stderr, disable=not self.cfg.progress)
        self.model.train()
        for step in bar:
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(step, self.stage.steps, self.stage.lr, self.stage.warmup)
            self.optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(generator)
            value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
            if not np.isfinite(value):
                raise FloatingPointError(f"{self.name} loss is {value} at step {step}; lower {self.config_key}.lr")
            if isinstance(loss, torch.Tensor):
                loss.backward()
            nn.utils.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
            losses.append(value)
            self.step = step + 1
            if self.step % self.cfg.log_every == 0 or self.step == self.stage.steps:
                last = float(np.mean(losses))
                losses.clear()
                self.log.write(stage=self.name, step=self.step, loss=last,
                               seconds=round(self.seconds + time.perf_counter() - t0, 2))
                bar.set_postfix(loss=f"{last:.4f}")
            if self.step % self.cfg.checkpoint_every == 0:
                self.checkpoint(self.seconds + time.perf_counter() - t0)
        bar.close()
        self.seconds += time.perf_counter() - t0
        self.model.eval()
        return last

    def checkpoint(self, seconds: float) -> None:
        tmp = self.dir.with_name(f".{self.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_checkpoint(tmp / "model", self.model, self.model_cfg)
        save_optimizer(self.optimizer, tmp / "optimizer")
        (tmp / "state.json").write_text(json.dumps({"step": self.step, "seconds": round(seconds, 2)}))
        shutil.rmtree(self.dir, ignore_errors=True)
        tmp.rename(self.dir)

    def finish(self) -> None:
        save_checkpoint(Path(self.cfg.out) / self.name, self.model, self.model_cfg)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.log.write(event="done", stage=self.name, step=self.step, seconds=round(self.seconds, 2))


def train(cfg: WorldModelTrainConfig) -> dict:
    """Both stages; returns a summary."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    videos = VideoSet.load(Path(cfg.data))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ae_cfg, vd_cfg = model_configs(cfg.model, videos.image_size, videos.action_dim)
    run = {"format": "slowfast-world-model/1", "data": str(cfg.data), "data_meta": videos.meta,
           "image_size": videos.image_size, "action_dim": videos.action_dim,
           "autoencoder": asdict(ae_cfg), "diffusion": asdict(vd_cfg), "train": asdict(cfg)}
    previous = out / "run.json"
    if cfg.resume and previous.exists():
        old = json.loads(previous.read_text())
        for key in ("image_size", "action_dim", "autoencoder", "diffusion"):
            if old.get(key) != json.loads(json.dumps(run[key])):
                raise UsageError(f"resume: {out} was trained with another {key} ({old.get(key)}); use a new out=")
    (out / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    log = JsonlLog(out / "log.jsonl")
    summary: dict = {"out": str(out), "frames": len(videos.frames), "episodes": videos.episodes}

    ae = FrameAutoencoder(ae_cfg)
    if cfg.autoencoder and not (cfg.resume and (out / "autoencoder" / "model.safetensors").exists()):
        source = Path(cfg.autoencoder) / "autoencoder"
        if not (source / "model.safetensors").exists():
            raise UsageError(f"autoencoder={cfg.autoencoder}: no trained autoencoder in it ({source})")
        theirs = json.loads((Path(cfg.autoencoder) / "run.json").read_text())["autoencoder"]
        if theirs != json.loads(json.dumps(asdict(ae_cfg))):
            raise UsageError(f"autoencoder={cfg.autoencoder} has other sizes ({theirs}) than this run's "
                             f"({asdict(ae_cfg)}): match model.latent_channels / model.ae_width")
        shutil.copytree(source, out / "autoencoder", dirs_exist_ok=True)
        summary["autoencoder_from"] = cfg.autoencoder
    init = _init_run(cfg, run) if cfg.init else None
    if (out / "autoencoder" / "model.safetensors").exists() and (cfg.resume or cfg.autoencoder):
        load_checkpoint(out / "autoencoder", ae)
    else:
        stage = Stage("autoencoder", cfg, cfg.ae, ae, ae_cfg, log)
        if init is not None and stage.step == 0:
            load_checkpoint(init / "autoencoder", ae)
            summary["init"] = str(init)
        n = len(videos.frames)

        def ae_loss(g: torch.Generator) -> torch.Tensor:
            idx = torch.randint(0, n, (cfg.ae.batch,), generator=g).numpy()
            return ae.reconstruction_loss(frames_tensor(videos.frames[idx]))

        summary["ae_loss"] = stage.run(ae_loss)
        sample = np.random.default_rng(cfg.seed).choice(n, size=min(n, 2048), replace=False)
        summary["latent_scale"] = ae.fit_scale(frames_tensor(videos.frames[np.sort(sample)]))
        stage.finish()
    ae.eval().requires_grad_(False)

    with torch.no_grad():  # every frame's latent once; the diffusion stage never runs the encoder
        latents = torch.cat([ae.encode(frames_tensor(videos.frames[i:i + 512]))
                             for i in range(0, len(videos.frames), 512)])
    actions = torch.from_numpy(videos.actions)
    model = VideoDiffusion(vd_cfg)
    stage = Stage("diffusion", cfg, cfg.diffusion, model, vd_cfg, log)
    if init is not None and stage.step == 0:
        load_checkpoint(init / "diffusion", model)
    # The camera's image motion per action, estimated from the videos; a resumed stage has learned it further.
    if model.denoiser.motion is not None and stage.step == 0:
        from world_model.motion import estimate_motion

        motion = estimate_motion(videos.frames, videos.actions, videos.windows(2) + 1, seed=cfg.seed)
        model.denoiser.motion.weight.data.copy_(torch.from_numpy(motion))
        summary["motion_estimate"] = np.round(motion, 4).tolist()
    window = vd_cfg.window
    starts = torch.from_numpy(videos.windows(window))
    offsets = torch.arange(window)

    def diffusion_loss(g: torch.Generator) -> torch.Tensor:
        idx = starts[torch.randint(0, len(starts), (cfg.diffusion.batch,), generator=g)][:, None] + offsets
        n_context = int(torch.randint(1, vd_cfg.context_frames + 1, (1,), generator=g))
        return model.masked_loss(latents[idx], actions[idx], n_context, g)

    summary["diffusion_loss"] = stage.run(diffusion_loss)
    summary["diffusion_params"] = sum(p.numel() for p in model.parameters())
    summary["ae_params"] = sum(p.numel() for p in ae.parameters())
    stage.finish()
    log.close()
    return summary


def _init_run(cfg: WorldModelTrainConfig, run: dict) -> Path:
    """The run ``init=`` names, checked to have this run's sizes (frames, actions, both models)."""
    init = Path(cfg.init)
    if not (init / "run.json").exists() or not (init / "diffusion" / "model.safetensors").exists():
        raise UsageError(f"init={cfg.init}: not a trained world model run (no run.json or diffusion/ in it)")
    theirs = json.loads((init / "run.json").read_text())
    for key in ("image_size", "action_dim", "autoencoder", "diffusion"):
        if theirs.get(key) != json.loads(json.dumps(run[key])):
            raise UsageError(f"init={cfg.init} has another {key} ({theirs.get(key)}) than this run "
                             f"({run[key]}); match the data and model.* sizes")
    return init


SHIPPED_RUN = "world_model/revisit"


def shipped_run() -> Path:
    """The shipped world model, ``checkpoints/world_model/revisit``."""
    from bus.resources import checkpoint_dir

    return checkpoint_dir() / SHIPPED_RUN


def load_world_model(run_dir: Path) -> tuple[FrameAutoencoder, VideoDiffusion, dict]:
    """A trained run's autoencoder and video diffusion model (eval mode) and its run.json."""
    run_dir = Path(run_dir)
    info_file = run_dir / "run.json"
    if not info_file.exists():
        raise FileNotFoundError(f"{run_dir}: no run.json (train one: python -m world_model.train data=DIR out=RUN)")
    info = json.loads(info_file.read_text())
    d = dict(info["diffusion"])
    d["scheduler"] = SchedulerConfig(**d["scheduler"])
    ae = FrameAutoencoder(AutoencoderConfig(**info["autoencoder"]))
    model = VideoDiffusion(VideoDiffusionConfig(**d))
    load_checkpoint(run_dir / "autoencoder", ae)
    load_checkpoint(run_dir / "diffusion", model)
    return ae.eval(), model.eval(), info


@command("world_model.train")
def main(argv: Sequence[str] | None = None) -> int:
    cfg = compose(WorldModelTrainConfig, "world_model/train", list(sys.argv[1:] if argv is None else argv),
                  "world-model training", "data=DIR out=RUN")
    if not cfg.data or not cfg.out:
        raise UsageError("data=DIR (python -m world_model.data ...) and out=RUN are required")
    print(json.dumps(train(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
