"""Slow-policy inference time per plan with each wrist-camera encoder: Terminator vs the ResNet-style one.

    python -m benchmarks.policy_encoders [repeats=100] [runs=[runs/wipe-rdp_vision,runs/wipe-rdp_vision_terminator]]

One plan = ``DiffusionPolicy.predict`` at batch 1, 8 DDIM steps, one thread, eval + inference_mode: the observation
encoder once (2 steps of one 48x48 wrist image + proprio + tactile), then 8 UNet evaluations. The policies are the
trained runs when their directories exist (``runs``), otherwise the same configs (configs/policy/rdp_vision*.yaml,
wipe sizes) with random weights -- latency does not depend on the weights. The encoder alone and the live frame's
96 -> 48 resize (``rdp.data.resize_images``) are timed too.

Prints a table, writes JSON to benchmarks/results/policy_encoders.json; the last stdout line is that JSON.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmarks.rdp_ldp_latency import summary, time_ms
from benchmarks.report import publish
from bus.cli import UsageError, command
from bus.config import compose
from rdp.data import resize_images
from rdp.policy import DiffusionPolicy, DiffusionPolicyConfig

REPO = Path(__file__).resolve().parents[1]
POLICIES = ("rdp_vision", "rdp_vision_terminator")
DDIM_STEPS = 8
WIPE_LOWDIM = {"proprio": 10, "tactile": 45}  # one arm; three pads x 15 PCA dims


@dataclass
class EncodersConfig:
    """``configs/benchmarks/policy_encoders.yaml``."""

    repeats: int = 100
    warmup: int = 10
    runs: list[str] = field(default_factory=lambda: ["runs/wipe-rdp_vision", "runs/wipe-rdp_vision_terminator"])
    out: str = "benchmarks/results/policy_encoders.json"

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.warmup < 0:
            raise UsageError(f"repeats={self.repeats} must be >= 1 and warmup={self.warmup} >= 0")
        if len(self.runs) != len(POLICIES):
            raise UsageError(f"runs=[{','.join(self.runs)}]: expected {len(POLICIES)} training runs, for "
                             f"{', '.join(POLICIES)}")


def policy_from_config(name: str) -> DiffusionPolicy:
    """configs/policy/<name>.yaml's slow policy at wipe's sizes, random weights, fitted identity-like normaliser."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from rdp.train import TrainConfig

    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        cfg = compose("train", overrides=[f"policy={name}", "data=-", "out=-"])
    t = TrainConfig.from_hydra(OmegaConf.to_container(cfg, resolve=True))
    m, tok = t.method, t.method.tokenizer
    assert tok is not None and m.image_size is not None
    dp_cfg = DiffusionPolicyConfig(
        target="latent", horizon=t.horizon, latent_steps=tok.latent_steps, latent_channels=tok.latent_channels,
        obs_steps=t.obs_steps, lowdim_keys=m.obs_keys, lowdim_dims=tuple(WIPE_LOWDIM[k] for k in m.obs_keys),
        image_keys=m.image_keys, image_size=(m.image_size, m.image_size), encoder=m.encoder,
        encoder_width=m.encoder_width, encoder_stem_stride=m.encoder_stem_stride,
        **{**dataclasses.asdict(m.diffusion), "down_dims": tuple(m.diffusion.down_dims)},
    )
    policy = DiffusionPolicy(dp_cfg)
    policy.fit_normalizer({k: np.random.default_rng(0).normal(size=(64, d)) for k, d in WIPE_LOWDIM.items()},
                          np.random.default_rng(1).normal(size=(64, *dp_cfg.target_shape)))
    return policy


def make_obs(cfg: DiffusionPolicyConfig) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    obs = {k: torch.randn(1, cfg.obs_steps, d, generator=g) for k, d in zip(cfg.lowdim_keys, cfg.lowdim_dims,
                                                                              strict=True)}
    obs.update({k: torch.randint(0, 256, (1, cfg.obs_steps, 3, *cfg.image_size), generator=g, dtype=torch.uint8)
                for k in cfg.image_keys})  # uint8, as rdp.inference feeds them
    return obs


@command("benchmarks.policy_encoders")
def main(argv: Sequence[str] | None = None) -> int:
    args = compose(EncodersConfig, "benchmarks/policy_encoders", list(sys.argv[1:] if argv is None else argv),
                   "policy_encoders", "repeats=20 runs=[RUN_RESNET,RUN_TERMINATOR]")
    torch.set_num_threads(1)
    torch.manual_seed(0)

    results = {}
    frame = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    for name, run in zip(POLICIES, map(Path, args.runs), strict=True):
        trained = (run / "policy" / "config.json").is_file()
        policy = (DiffusionPolicy.from_checkpoint(run / "policy") if trained else policy_from_config(name)).eval()
        cfg = policy.cfg
        obs = make_obs(cfg)
        generator = torch.Generator().manual_seed(0)
        encoder = next(iter(policy.obs_encoder.cameras.values()))
        with torch.inference_mode():
            plan = time_ms(lambda p=policy, o=obs, g=generator: p.predict(o, g, num_inference_steps=DDIM_STEPS),
                           args.repeats, args.warmup)
            enc = time_ms(lambda p=policy, o=obs: p.obs_encoder(o), args.repeats, args.warmup)
        size = cfg.image_size[0]
        resize = time_ms(lambda s=size: resize_images(frame, s), args.repeats, args.warmup)
        results[name] = {
            "encoder": cfg.encoder, "weights": f"trained ({run})" if trained else "random (config)",
            "image_size": list(cfg.image_size), "encoder_parameters": sum(p.numel() for p in encoder.parameters()),
            "policy_parameters": sum(p.numel() for p in policy.parameters()),
            "plan": summary(plan), "obs_encoder": summary(enc), "live_resize": summary(resize),
        }

    print(f"{'policy':<24s} {'encoder':<11s} {'enc params':>10s} {'plan p50':>9s} {'plan p99':>9s} "
          f"{'enc p50':>8s} {'Hz@p50':>7s}")
    for name, r in results.items():
        print(f"{name:<24s} {r['encoder']:<11s} {r['encoder_parameters']:>10d} {r['plan']['p50_ms']:>7.2f}ms "
              f"{r['plan']['p99_ms']:>7.2f}ms {r['obs_encoder']['p50_ms']:>6.2f}ms {r['plan']['hz_at_p50']:>7.1f}")
    report = {
        "benchmark": f"slow-policy plan (DiffusionPolicy.predict, {DDIM_STEPS} DDIM steps), batch 1, one wrist image "
                     f"per obs step, eval + inference_mode",
        "threads": torch.get_num_threads(), "repeats": args.repeats, "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(), "results": results,
    }
    publish(report, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
