"""The slow-fast learning loop: train the world model's base weights to use its TEMP-LoRA episodic memory.

    python -m world_model.slowfast data=DIR out=RUN [init=RUN0] [outer.steps=2000] [resume=true]

One outer step is one whole training episode, chunk by chunk, as the model meets it at inference: a fresh memory,
then for every chunk (the inner loop) the masked diffusion loss of the chunk given the frames before it, computed
with the memory as it stands (the memory holds every earlier chunk), its gradient accumulated into the base
weights; then the memory's local update writes the chunk in, as generation does. After the last chunk the base
weights take one optimiser step (the outer loop). The memory is treated as given when differentiating (first
order): the base learns to read what the adapters store, so frames that left the context window long ago -- the
revisit frames at an episode's end -- are predicted from the memory rather than invented.

``inner=false`` skips the memory's updates: the same episodes, chunks and optimiser steps as plain fine-tuning,
the control that separates what the loop adds from what more training adds. ``init``: the trained run to start
from (its autoencoder and diffusion model; default the shipped one). Writes a run like ``world_model.train``
(``run.json``, ``autoencoder/``, ``diffusion/`` without the adapters, ``log.jsonl``, resumable
``checkpoints/slowfast/``), so ``world_model.generate`` and ``world_model.plan`` read it as any other.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bus.cli import UsageError, command
from bus.config import compose
from rdp.checkpoint import save_checkpoint
from rdp.train import JsonlLog
from world_model.data import VideoSet
from world_model.temp_lora import LoRALinear, TempLoRAConfig, TempLoRAMemory
from world_model.train import Stage, StageConfig, frames_tensor, load_world_model, shipped_run


@dataclass
class SlowFastConfig:
    """``configs/world_model/slowfast.yaml``."""

    data: str = ""
    out: str = ""
    init: str = ""  # the trained run to continue; empty: the shipped world model
    seed: int = 0
    resume: bool = False
    progress: bool = True
    threads: int = 1
    log_every: int = 50
    checkpoint_every: int = 250
    lora_rank: int = 8
    lora_lr: float = 1e-3
    lora_steps: int = 1
    inner: bool = True  # false: no memory updates (the same episodes and chunks, plain fine-tuning: the control)
    outer: StageConfig = field(default_factory=lambda: StageConfig(steps=2000, batch=1, lr=1e-4, warmup=50))


def detach_adapters(model: nn.Module) -> None:
    """Put every TEMP-LoRA-wrapped projection's base layer back in its place (the adapters are dropped)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.base)


def episode_loss(model: nn.Module, memory: TempLoRAMemory, latents: torch.Tensor, actions: torch.Tensor,
                 g: torch.Generator, inner: bool = True) -> float:
    """One episode through the inner loop: the chunk losses' gradients accumulate in the base weights (each
    divided by the number of chunks); the memory writes every chunk in after its loss. Returns the mean loss."""
    cfg = model.cfg
    tc, tg = cfg.context_frames, cfg.chunk_frames
    starts = list(range(tc, len(latents) - tg + 1, tg))
    memory.reset()
    total = 0.0
    for c in starts:
        window, acts = latents[c - tc:c + tg][None], actions[c - tc:c + tg][None]
        loss = model.masked_loss(window, acts, tc, g)
        (loss / len(starts)).backward()
        total += float(loss.detach())
        if inner:
            memory.update(window, acts, n_context=tc)
    return total / max(len(starts), 1)


def train_slowfast(cfg: SlowFastConfig) -> dict:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    init = Path(cfg.init) if cfg.init else shipped_run()
    ae, model, info = load_world_model(init)
    videos = VideoSet.load(Path(cfg.data))
    if videos.image_size != info["image_size"] or videos.action_dim != info["action_dim"]:
        raise UsageError(f"{cfg.data}: {videos.image_size}px, {videos.action_dim}-d actions; {init} was trained "
                         f"on {info['image_size']}px, {info['action_dim']}-d")
    mc = model.cfg
    lengths = np.diff(videos.starts)
    if lengths.min() < mc.context_frames + mc.chunk_frames:
        raise UsageError(f"{cfg.data}: an episode of {lengths.min()} frames is shorter than one window")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    run = {**info, "data": str(cfg.data), "data_meta": videos.meta, "slowfast": asdict(cfg), "init": str(init)}
    (out / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    shutil.copytree(init / "autoencoder", out / "autoencoder", dirs_exist_ok=True)
    with torch.no_grad():
        latents = torch.cat([ae.encode(frames_tensor(videos.frames[i:i + 512]))
                             for i in range(0, len(videos.frames), 512)])
    actions = torch.from_numpy(videos.actions)
    base = list(model.parameters())  # before the adapters exist: the outer loop trains these alone
    memory = TempLoRAMemory(model, TempLoRAConfig(rank=cfg.lora_rank, lr=cfg.lora_lr, steps=cfg.lora_steps),
                            seed=cfg.seed)
    log = JsonlLog(out / "log.jsonl")
    stage = Stage("slowfast", cfg, cfg.outer, model, model.cfg, log, params=base, config_key="outer")

    def outer_step(g: torch.Generator) -> float:
        e = int(torch.randint(0, videos.episodes, (1,), generator=g))
        a, b = int(videos.starts[e]), int(videos.starts[e + 1])
        return episode_loss(model, memory, latents[a:b], actions[a:b], g, cfg.inner)

    stage.run(outer_step)
    detach_adapters(model)
    save_checkpoint(out / "diffusion", model, model.cfg)
    shutil.rmtree(stage.dir, ignore_errors=True)
    log.write(event="done", stage="slowfast", step=stage.step, seconds=round(stage.seconds, 2))
    log.close()
    return {"out": str(out), "init": str(init), "episodes_seen": stage.step, "seconds": round(stage.seconds, 1)}


@command("world_model.slowfast")
def main(argv: Sequence[str] | None = None) -> int:
    cfg = compose(SlowFastConfig, "world_model/slowfast", list(sys.argv[1:] if argv is None else argv),
                  "slow-fast learning loop", "data=DIR out=RUN")
    if not cfg.data or not cfg.out:
        raise UsageError("data=DIR (python -m world_model.data ...) and out=RUN are required")
    print(json.dumps(train_slowfast(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
