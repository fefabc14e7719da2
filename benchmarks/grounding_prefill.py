"""Prefill cost of the grounding model against the number of frames: slow-fast vs fast-only vs full.

    python -m benchmarks.grounding_prefill [runs=7] [warmup=2] [frames=[16,32,64,128]] [out=FILE]

For each mode and T: the counted FLOPs (``grounding.flops``) and the median CPU latency (one thread, batch 1,
eval + inference_mode) of one forward pass of the language-model part -- frame tokens (1, T, 16, 32) and a
24-token instruction in, the answer heads out -- at the default ``GroundingConfig`` with random weights (cost does
not depend on the weights). The frame encoder's FLOPs per 96x96 frame are reported beside it: it runs once per frame
whatever the mode, and its features can be cached.

Prints a table and each mode's growth from the first to the last T, writes JSON to
benchmarks/results/grounding_prefill.json; the last stdout line is that JSON.
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

from benchmarks.rdp_ldp_latency import time_ms
from benchmarks.report import publish
from bus.cli import UsageError, command
from bus.config import compose
from grounding.flops import frame_encoder_flops, lm_prefill_flops
from grounding.model import MODES, FrameEncoder, GroundingConfig, GroundingModel


@dataclass
class PrefillConfig:
    """``configs/benchmarks/grounding_prefill.yaml``."""

    frames: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    modes: list[str] = field(default_factory=lambda: list(MODES))
    text_len: int = 24
    warmup: int = 2
    runs: int = 7
    run: str = ""  # a grounding LM run (grounding.train stage=lm): its model sizes; empty: GroundingConfig's defaults
    out: str = "benchmarks/results/grounding_prefill.json"

    def __post_init__(self) -> None:
        if self.runs < 1 or self.warmup < 0:
            raise UsageError(f"runs={self.runs} must be >= 1 and warmup={self.warmup} >= 0")
        if len(self.frames) < 2 or min(self.frames) < 1:
            raise UsageError(f"frames={self.frames}: expected at least two frame counts, each >= 1")
        unknown = sorted(set(self.modes) - set(MODES))
        if unknown or not self.modes:
            raise UsageError(f"modes={self.modes}: choose from {', '.join(MODES)}")
        if not 1 <= self.text_len <= GroundingConfig().max_text_len:
            raise UsageError(f"text_len={self.text_len} must be in [1, {GroundingConfig().max_text_len}]")


def measure(model: GroundingModel, frames: int, text_len: int, warmup: int, runs: int) -> dict[str, float | int]:
    """Counted FLOPs and the median latency of one prefill with T = ``frames``."""
    cfg = model.cfg
    frame_tokens = torch.randn(1, frames, cfg.slots, cfg.visual_dim)
    text_ids = torch.randint(4, cfg.vocab_size, (1, text_len))
    text_mask = torch.ones(1, text_len, dtype=torch.bool)
    with torch.inference_mode():
        ms = time_ms(lambda: model(frame_tokens, text_ids, text_mask), runs, warmup)
    return {"frames": frames, "flops": lm_prefill_flops(model, frames, text_len),
            "median_ms": round(float(np.median(ms)), 3), "sequence_tokens": _sequence_tokens(cfg, frames, text_len)}


def _sizes(run: str) -> GroundingConfig:
    """The model sizes of a grounding run (its ``model/config.json``), or the defaults."""
    if not run:
        return GroundingConfig()
    from rdp.checkpoint import load_config

    path = Path(run) / "model"
    if not (path / "config.json").is_file():
        raise UsageError(f"run={run}: no {path / 'config.json'} (a grounding.train stage=lm run folder)")
    return GroundingConfig.from_dict(load_config(path)[1])


def _sequence_tokens(cfg: GroundingConfig, frames: int, text_len: int) -> int:
    return (frames * cfg.slots if cfg.mode == "full" else cfg.num_fast) + text_len


@command("benchmarks.grounding_prefill")
def main(argv: Sequence[str] | None = None) -> int:
    args = compose(PrefillConfig, "benchmarks/grounding_prefill", list(sys.argv[1:] if argv is None else argv),
                   "grounding_prefill", "runs=3")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    results: dict[str, list[dict[str, float | int]]] = {}
    base = _sizes(args.run)
    for mode in args.modes:
        model = GroundingModel(dataclasses.replace(base, mode=mode)).eval()
        results[mode] = [measure(model, T, args.text_len, args.warmup, args.runs) for T in args.frames]
    first, last = args.frames[0], args.frames[-1]
    growth = {mode: {key: round(100.0 * (rows[-1][key] / rows[0][key] - 1.0), 1) for key in ("flops", "median_ms")}
              for mode, rows in results.items()}
    encoders = {"terminator": FrameEncoder.terminator(), "resnet": FrameEncoder.resnet()}
    encoder_flops = {name: frame_encoder_flops(enc) for name, enc in encoders.items()}

    print(f"{'mode':10s} {'T':>4s} {'seq tokens':>10s} {'GFLOPs':>8s} {'median ms':>10s}")
    for mode, rows in results.items():
        for r in rows:
            print(f"{mode:10s} {r['frames']:4d} {r['sequence_tokens']:10d} {r['flops'] / 1e9:8.3f} "
                  f"{r['median_ms']:10.2f}")
    print(f"growth {first} -> {last} frames:")
    for mode, g in growth.items():
        print(f"  {mode:10s} FLOPs {g['flops']:+8.1f} %   latency {g['median_ms']:+8.1f} %")
    for name, flops in encoder_flops.items():
        print(f"frame encoder ({name}, 96x96): {flops / 1e6:.1f} MFLOPs per frame")
    report = {
        "benchmark": "grounding LM prefill (given frame tokens), batch 1, random weights, eval + inference_mode",
        "model": {**dataclasses.asdict(base), "mode": None, "from_run": args.run or None},
        "text_len": args.text_len,
        "threads": torch.get_num_threads(),
        "warmup": args.warmup,
        "runs": args.runs,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "load_average": list(_load_average()),
        "results": results,
        "growth_percent": growth,
        "frame_encoder_flops_per_frame": encoder_flops,
    }
    publish(report, Path(args.out))
    return 0


def _load_average() -> tuple[float, ...]:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        return ()


if __name__ == "__main__":
    sys.exit(main())
