"""Slow-policy (LDP) inference latency on the CPU: one ``DiffusionPolicy.predict`` call vs the number of DDIM steps.

    python -m benchmarks.rdp_ldp_latency [repeats=100] [warmup=10] [out=FILE]

Batch 1, one thread, eval + inference_mode, default ``DiffusionPolicyConfig``: target "latent" (L=8, C=16), two
observation steps of two 96x96 cameras (ResNet encoders, width 32, stem stride 4) plus low-dim proprio (10),
tactile (30) and wrench (6), UNet (64, 128, 256). Weights are random (latency does not depend on them). A call is
the whole slow-loop cost: observation encoding once, then K UNet evaluations and DDIM updates. The observation
encoder and a single UNet evaluation are also timed alone, to show where the time goes.

Prints a table, writes JSON to benchmarks/results/rdp_ldp_latency.json; the last stdout line is that JSON.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.report import publish
from bus.cli import UsageError, command
from bus.config import compose
from rdp.policy import DiffusionPolicy, DiffusionPolicyConfig

REPO = Path(__file__).resolve().parents[1]
DDIM_STEPS = (1, 2, 4, 8, 16)
TARGET_HZ = 10.0


def make_obs(cfg: DiffusionPolicyConfig, batch: int = 1) -> dict[str, torch.Tensor]:
    obs = {k: torch.randn(batch, cfg.obs_steps, d) for k, d in zip(cfg.lowdim_keys, cfg.lowdim_dims, strict=True)}
    obs.update({k: torch.rand(batch, cfg.obs_steps, 3, *cfg.image_size) for k in cfg.image_keys})
    return obs


def time_ms(fn: Callable[[], object], repeats: int, warmup: int) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter_ns()
        fn()
        out[i] = (time.perf_counter_ns() - start) / 1e6
    return out


def summary(ms: np.ndarray) -> dict[str, float]:
    stats = {"p50_ms": np.percentile(ms, 50), "p99_ms": np.percentile(ms, 99), "mean_ms": ms.mean(), "max_ms": ms.max()}
    stats["hz_at_p50"] = 1000.0 / stats["p50_ms"]
    return {k: round(float(v), 2) for k, v in stats.items()}


@dataclass
class LatencyConfig:
    """``configs/benchmarks/rdp_ldp_latency.yaml``."""

    repeats: int = 100
    warmup: int = 10
    out: str = "benchmarks/results/rdp_ldp_latency.json"

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.warmup < 0:
            raise UsageError(f"repeats={self.repeats} must be >= 1 and warmup={self.warmup} >= 0")


@command("benchmarks.rdp_ldp_latency")
def main(argv: Sequence[str] | None = None) -> int:
    args = compose(LatencyConfig, "benchmarks/rdp_ldp_latency", list(sys.argv[1:] if argv is None else argv),
                   "rdp_ldp_latency", "repeats=20")
    torch.set_num_threads(1)
    torch.manual_seed(0)

    cfg = DiffusionPolicyConfig()
    policy = DiffusionPolicy(cfg).eval()
    obs = make_obs(cfg)
    policy.fit_normalizer({k: make_obs(cfg, 64)[k] for k in cfg.lowdim_keys}, torch.randn(64, *cfg.target_shape))
    generator = torch.Generator().manual_seed(0)

    results: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        cond = policy.obs_encoder(obs)
        x = torch.randn(1, *cfg.target_shape)
        parts = {
            "obs_encoder": summary(time_ms(lambda: policy.obs_encoder(obs), args.repeats, args.warmup)),
            "unet_eval": summary(time_ms(lambda: policy.model(x, 50, cond), args.repeats, args.warmup)),
        }
        for k in DDIM_STEPS:
            ms = time_ms(lambda k=k: policy.predict(obs, generator, num_inference_steps=k), args.repeats, args.warmup)
            results[f"ddim_{k}"] = summary(ms)

    print(f"{'DDIM steps':>10s} {'p50 ms':>8s} {'p99 ms':>8s} {'Hz@p50':>8s}")
    for k in DDIM_STEPS:
        r = results[f"ddim_{k}"]
        print(f"{k:10d} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['hz_at_p50']:8.1f}")
    encoder, unet = parts["obs_encoder"]["p50_ms"], parts["unet_eval"]["p50_ms"]
    print(f"obs encoder p50 {encoder:.2f} ms, one UNet eval p50 {unet:.2f} ms")

    at_8 = results["ddim_8"]
    report = {
        "benchmark": "DiffusionPolicy.predict (LDP, target latent 8x16), batch 1, eval + inference_mode",
        "config": dataclasses.asdict(cfg),
        "parameters": sum(p.numel() for p in policy.parameters()),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "results": results,
        "parts": parts,
        "target_hz_at_8_steps": TARGET_HZ,
        "meets_target_at_8_steps_p50": at_8["hz_at_p50"] >= TARGET_HZ,
        "meets_target_at_8_steps_p99": 1000.0 / at_8["p99_ms"] >= TARGET_HZ,
    }
    publish(report, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
