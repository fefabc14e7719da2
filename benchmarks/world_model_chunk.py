"""The world model's cost per chunk: generating one chunk, and the TEMP-LoRA local update after it.

    python -m benchmarks.world_model_chunk runs=[runs/wm-warp-x0,...] [batch=1] [repeats=10] [out=FILE]

For each ``world_model.train`` run: the median CPU time (one thread) of generating one chunk (``chunk_frames`` new
latent frames from ``context_frames`` given ones, at the run's DDIM steps), of decoding it to frames, and of one
TEMP-LoRA local update on [context ⊕ chunk] (rank 8, the default of ``world_model.generate``), on latents of the
first frames of a revisit episode rendered at ``seed`` (so no recorded data is needed). ``overhead_pct`` is the
update in percent of the generation; ``batch`` > 1 times ``batch`` imagined futures at once (what a planner scoring
candidate plans does).

Prints a table, writes JSON to benchmarks/results/world_model_chunk.json; the last stdout line is that JSON.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks.perception_plan import median_ms
from benchmarks.report import publish
from bus.cli import UsageError, command
from bus.config import compose


@dataclass
class WorldModelChunkConfig:
    """``configs/benchmarks/world_model_chunk.yaml``."""

    runs: list[str] = field(default_factory=list)
    batch: int = 1
    lora_rank: int = 8
    seed: int = 300000
    repeats: int = 10
    warmup: int = 2
    out: str = "benchmarks/results/world_model_chunk.json"

    def __post_init__(self) -> None:
        if not self.runs:
            raise UsageError("runs=[RUN,...] is required: world_model.train runs")
        if self.repeats < 1 or self.warmup < 0 or self.batch < 1 or self.lora_rank < 1:
            raise UsageError(f"repeats={self.repeats}, batch={self.batch} and lora_rank={self.lora_rank} must be >= 1, "
                             f"warmup={self.warmup} >= 0")


def measure(run: str, cfg: WorldModelChunkConfig) -> dict[str, object]:
    from world_model.revisit import RevisitConfig, render_episode
    from world_model.temp_lora import TempLoRAConfig, TempLoRAMemory
    from world_model.train import frames_tensor, load_world_model

    ae, model, info = load_world_model(Path(run))
    episode = render_episode(RevisitConfig(image_size=info["image_size"]), cfg.seed)  # needs no recorded data
    mc = model.cfg
    window = mc.context_frames + mc.chunk_frames
    with torch.no_grad():
        latents = ae.encode(frames_tensor(episode.frames[:window]))[None].expand(cfg.batch, -1, -1, -1,
                                                                                 -1).contiguous()
    actions = torch.from_numpy(episode.actions[:window])[None].expand(cfg.batch, -1, -1).contiguous()
    context = latents[:, :mc.context_frames]
    params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    generate_ms = median_ms(lambda: model.generate(context, actions, g), cfg.repeats, cfg.warmup)
    chunk = latents[:, mc.context_frames:].reshape(-1, *latents.shape[2:])
    with torch.no_grad():
        decode_ms = median_ms(lambda: ae.decode(chunk), cfg.repeats, cfg.warmup)
    memory = TempLoRAMemory(model, TempLoRAConfig(rank=cfg.lora_rank))
    generate_lora_ms = median_ms(lambda: model.generate(context, actions, g), cfg.repeats, cfg.warmup)
    update_ms = median_ms(lambda: memory.update(latents[:1], actions[:1], n_context=mc.context_frames), cfg.repeats,
                          cfg.warmup)
    steps = mc.scheduler.num_inference_steps
    return {"run": run, "params": params,
            "motion": mc.motion, "prediction": mc.prediction, "ddim_steps": steps, "batch": cfg.batch,
            "chunk_frames": mc.chunk_frames, "generate_ms": generate_ms, "generate_with_lora_ms": generate_lora_ms,
            "decode_ms": decode_ms, "lora_update_ms": update_ms,
            "overhead_pct": round(100.0 * update_ms / generate_lora_ms, 1),
            "frames_per_s": round(1e3 * mc.chunk_frames * cfg.batch / (generate_ms + decode_ms), 1)}


@command("benchmarks.world_model_chunk")
def main(argv: Sequence[str] | None = None) -> int:
    args = compose(WorldModelChunkConfig, "benchmarks/world_model_chunk", list(sys.argv[1:] if argv is None else argv),
                   "world_model_chunk", "runs=[runs/wm-warp-x0]")
    torch.set_num_threads(1)
    rows = [measure(run, args) for run in args.runs]
    print(f"{'run':28s} {'batch':>5s} {'DDIM':>4s} {'chunk ms':>8s} {'+LoRA ms':>8s} {'decode ms':>9s} "
          f"{'update ms':>9s} {'update %':>8s} {'frames/s':>8s}")
    for r in rows:
        print(f"{r['run']:28s} {r['batch']:5d} {r['ddim_steps']:4d} {r['generate_ms']:8.1f} "
              f"{r['generate_with_lora_ms']:8.1f} {r['decode_ms']:9.2f} {r['lora_update_ms']:9.1f} "
              f"{r['overhead_pct']:8.1f} {r['frames_per_s']:8.1f}")
    publish({"benchmark": "world model: one chunk generated, decoded, one TEMP-LoRA update (one thread)",
             "repeats": args.repeats, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
             "results": rows}, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
