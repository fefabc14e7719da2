"""Imagine long videos with the world model and measure how consistent they stay; side-by-side mp4s.

    python -m world_model.generate data=DIR [run=RUN] [episodes=20] [memory=true] [context=N] [update=true]
                                   [out=DIR] [videos=2]   # context=0: the model's; run: the shipped model

For each episode of a revisit set (held-out seeds: make it with another ``seed=``) the model is given the first
``context`` real frames and the whole action sequence, and generates the rest chunk by chunk (each chunk's context:
the newest ``context`` frames, real or imagined). With ``memory=true`` a fresh TEMP-LoRA memory (reset per episode)
takes one local update after every chunk on [previous frames ⊕ the chunk] (``update=false`` keeps the adapters
but never updates them: the "no local update" ablation). Metrics, per episode and averaged:

- ``revisit_ssim``: SSIM between the imagined return frames and the real ones, which show exactly what the first
  visit showed (same camera pose, static scene) -- what a model must remember, not invent;
- ``revisit_self_ssim``: SSIM between the imagined return frame and the imagined (or given) first-visit frame;
- ``frame_ssim``: SSIM of every imagined frame with the real one;
- ``scene_cuts``: imagined frame-to-frame changes larger than any the real videos of the set contain (colour
  histogram distance above the real videos' maximum), per video;
- ``horizon_ssim``: SSIM with the real frame against how many frames past the given ones it was imagined (per
  episode; the summary averages each horizon over the episodes that reach it, drawn in ``OUT/horizon.png``).

Writes ``OUT/metrics.json`` (the last stdout line is its summary) and ``OUT/episode<i>.mp4`` for the first
``videos`` episodes: real | imagined, with the revisit frames marked.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from bus.cli import UsageError, command
from bus.config import compose
from world_model.autoencoder import FrameAutoencoder
from world_model.data import VideoSet
from world_model.temp_lora import TempLoRAConfig, TempLoRAMemory
from world_model.train import frames_tensor, load_world_model
from world_model.video_diffusion import VideoDiffusion


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per image of (N, 3, H, W) in [0, 1] (Gaussian window 7, sigma 1.5, grey-level constants)."""
    k = torch.exp(-((torch.arange(7) - 3.0) ** 2) / (2 * 1.5**2))
    k = (k[:, None] * k[None, :]) / k.sum() ** 2
    w = k.expand(3, 1, 7, 7)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (3, 3, 3, 3), mode="reflect"), w, groups=3)

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def histogram_distance(frames: np.ndarray) -> np.ndarray:
    """(T, S, S, 3) uint8 -> (T - 1,) Hellinger distance between consecutive frames' HSV colour histograms."""
    hists = []
    for f in frames:
        hsv = cv2.cvtColor(f, cv2.COLOR_RGB2HSV)
        h = cv2.calcHist([hsv], [0, 1], None, [16, 8], [0, 180, 0, 256]).ravel()
        hists.append(h / max(h.sum(), 1.0))
    hists = np.array(hists)
    return np.sqrt(np.maximum(0.0, 1.0 - np.sqrt(hists[1:] * hists[:-1]).sum(1)))


@dataclass
class RolloutOptions:
    memory: bool = True
    update: bool = True
    context: int = 4
    lora_rank: int = 8
    lora_lr: float = 1e-3
    lora_steps: int = 1
    memorize_given: bool = False


@torch.no_grad()
def imagine(ae: FrameAutoencoder, model: VideoDiffusion, frames: np.ndarray, actions: np.ndarray,
            opts: RolloutOptions, memory: TempLoRAMemory | None, seed: int) -> np.ndarray:
    """The whole episode imagined from its first ``opts.context`` real frames and its actions: (T, S, S, 3) uint8,
    the given frames copied in front."""
    cfg = model.cfg
    tc, tg = opts.context, cfg.chunk_frames
    latents = list(ae.encode(frames_tensor(frames[:tc])))
    acts = torch.from_numpy(actions)
    g = torch.Generator().manual_seed(seed)
    if memory is not None:
        memory.reset()
        if opts.memorize_given and opts.update and tc >= 2:  # what the camera saw, stored before imagining
            with torch.enable_grad():
                memory.update(torch.stack(latents)[None], acts[:tc][None], n_context=1)
    while len(latents) < len(frames):
        t0 = len(latents) - tc
        n_new = min(tg, len(frames) - len(latents))
        context = torch.stack(latents[t0:])[None]
        new = model.generate(context, acts[t0:t0 + tc + n_new][None], g)[0]
        if memory is not None and opts.update:
            with torch.enable_grad():
                window = torch.cat([context[0], new])[None]
                memory.update(window, acts[t0:t0 + tc + n_new][None], n_context=tc)
        latents.extend(new)
    imagined = (ae.decode(torch.stack(latents)).movedim(1, -1) * 255).round().byte().numpy()
    imagined[:tc] = frames[:tc]
    return imagined


def episode_metrics(real: np.ndarray, imagined: np.ndarray, pairs: np.ndarray, context: int,
                    cut_threshold: float) -> dict:
    r, m = frames_tensor(real), frames_tensor(imagined)
    gen = slice(context, None)
    pairs = pairs[pairs[:, 1] >= context]
    per_frame = ssim(m[gen], r[gen])
    out = {"frame_ssim": float(per_frame.mean()),
           "scene_cuts": int((histogram_distance(imagined[context - 1:]) > cut_threshold).sum()),
           "horizon_ssim": [round(float(v), 4) for v in per_frame]}
    if len(pairs):
        out["revisit_ssim"] = float(ssim(m[pairs[:, 1]], r[pairs[:, 1]]).mean())
        out["revisit_self_ssim"] = float(ssim(m[pairs[:, 1]], m[pairs[:, 0]]).mean())
    return out


def write_video(path: Path, real: np.ndarray, imagined: np.ndarray, revisit: set[int], context: int,
                scale: int = 4) -> None:
    import imageio.v2 as imageio

    with imageio.get_writer(path, fps=8, macro_block_size=1) as w:
        for t, (a, b) in enumerate(zip(real, imagined, strict=True)):
            frame = np.concatenate([a, np.full((a.shape[0], 2, 3), 255, np.uint8), b], axis=1)
            frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
            colour = (0, 200, 0) if t < context else (255, 160, 0) if t in revisit else (90, 90, 90)
            cv2.rectangle(frame, (0, 0), (frame.shape[1] - 1, frame.shape[0] - 1), colour, 2)
            w.append_data(frame)


def plot_horizon(path: Path, curve: Sequence[float], title: str) -> None:
    """SSIM with the real frame against frames imagined past the given ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(np.arange(1, len(curve) + 1), curve, marker=".")
    ax.set(xlabel="frames imagined past the given ones", ylabel="SSIM with the real frame", ylim=(0, 1), title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@dataclass
class GenerateConfig:
    """``configs/world_model/generate.yaml``."""

    run: str = ""
    data: str = ""
    out: str = ""
    episodes: int = 20
    videos: int = 2
    memory: bool = True
    update: bool = True
    context: int = 0  # 0: the model's context_frames
    lora_rank: int = 8
    lora_lr: float = 1e-3
    lora_steps: int = 1
    memorize_given: bool = False  # also one local update on the given frames themselves before imagining
    seed: int = 0
    threads: int = 1


def evaluate(cfg: GenerateConfig) -> dict:
    torch.set_num_threads(cfg.threads)
    ae, model, info = load_world_model(Path(cfg.run))
    videos = VideoSet.load(Path(cfg.data))
    if videos.image_size != info["image_size"] or videos.action_dim != info["action_dim"]:
        raise UsageError(f"{cfg.data}: {videos.image_size}px frames, {videos.action_dim}-d actions; the run was "
                         f"trained on {info['image_size']}px, {info['action_dim']}-d")
    cfg.context = cfg.context or model.cfg.context_frames
    if not 1 <= cfg.context <= model.cfg.context_frames:
        raise UsageError(f"context={cfg.context}: the model takes 1 .. {model.cfg.context_frames} context frames")
    opts = RolloutOptions(cfg.memory, cfg.update, cfg.context, cfg.lora_rank, cfg.lora_lr, cfg.lora_steps,
                          cfg.memorize_given)
    memory = TempLoRAMemory(model, TempLoRAConfig(rank=cfg.lora_rank, lr=cfg.lora_lr, steps=cfg.lora_steps),
                            seed=cfg.seed) if cfg.memory else None
    cut = float(max(histogram_distance(videos.episode(e)[0]).max() for e in range(videos.episodes)))
    out = Path(cfg.out) if cfg.out else Path("outputs/world_model") / f"generate-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    n = min(cfg.episodes, videos.episodes)
    for e in tqdm(range(n), desc="imagine", unit="ep", file=sys.stderr):
        frames, actions = videos.episode(e)
        imagined = imagine(ae, model, frames, actions, opts, memory, cfg.seed * 100_003 + e)
        pairs = videos.episode_pairs(e)
        rows.append({"episode": e, "seed": int(videos.seeds[e]),
                     **episode_metrics(frames, imagined, pairs, cfg.context, cut)})
        if e < cfg.videos:
            write_video(out / f"episode{e}.mp4", frames, imagined, set(pairs[:, 1].tolist()), cfg.context)
    keys = ("frame_ssim", "revisit_ssim", "revisit_self_ssim", "scene_cuts")
    summary: dict = {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}
    longest = max(len(r["horizon_ssim"]) for r in rows)
    summary["horizon_ssim"] = [round(float(np.mean([r["horizon_ssim"][h] for r in rows
                                                    if len(r["horizon_ssim"]) > h])), 4) for h in range(longest)]
    kind = "TEMP-LoRA" if cfg.memory and cfg.update else "no memory"
    plot_horizon(out / "horizon.png", summary["horizon_ssim"], f"{cfg.run} ({kind}, context {cfg.context})")
    result = {"config": asdict(cfg), "cut_threshold": cut, "summary": summary, "episodes": rows}
    (out / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    return {"out": str(out), **summary}


@command("world_model.generate")
def main(argv: Sequence[str] | None = None) -> int:
    cfg = compose(GenerateConfig, "world_model/generate", list(sys.argv[1:] if argv is None else argv),
                  "world-model generation", "run=RUN data=DIR")
    if not cfg.data:
        raise UsageError("data=DIR (a video set: python -m world_model.data revisit out=DIR) is required")
    if not cfg.run:
        from world_model.train import shipped_run

        cfg.run = str(shipped_run())
    print(json.dumps(evaluate(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
