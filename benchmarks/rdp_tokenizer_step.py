"""Per-tick cost of the asymmetric tokenizer's fast loop: one incremental GRU step vs RDP-style re-decoding.

    python -m benchmarks.rdp_tokenizer_step [chunks=200] [warmup_chunks=20] [out=FILE]

Batch 1, one thread, eval + inference_mode, horizon 32, default sizes (latent 8 x 16, GRU hidden 128), action
dim 10, conditioning 30 (two tactile pads x 15 PCA dims). Per control tick t of a chunk:

* ``incremental`` -- ``AsymmetricTokenizer.step``: one GRU cell step with the carried hidden state.
* ``rerun_prefix`` -- what RDP's public code does: rebuild the decoder inputs for steps 0..t from the latent and the
  conditioning seen so far, run the GRU over them from h_0 and keep the last output (O(t) per tick).

``init_state`` (once per chunk, not per tick) is reported separately. Prints a table, writes JSON to
benchmarks/results/rdp_tokenizer_step.json; the last stdout line is that JSON.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.report import publish
from bus.cli import UsageError, command
from bus.config import compose
from rdp.tokenizer import AsymmetricTokenizer, TokenizerConfig

REPO = Path(__file__).resolve().parents[1]


def rerun_prefix(model: AsymmetricTokenizer, z: torch.Tensor, cond: torch.Tensor, t: int) -> torch.Tensor:
    """RDP-style tick t: decode steps 0..t from scratch, return a_t (B, Da)."""
    latent_per_step = z.repeat_interleave(model.cfg.downsample, dim=1)[:, : t + 1]  # (B, t + 1, C)
    inputs = torch.cat([latent_per_step, cond[:, : t + 1]], dim=-1)  # (B, t + 1, C + Dc)
    out, _ = model.gru(inputs, model._initial_hidden(z).unsqueeze(0))
    return model.head(out[:, -1])


def time_chunks(model: AsymmetricTokenizer, chunks: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(chunks, T) per-tick microseconds and (chunks,) init_state microseconds."""
    cfg = model.cfg
    T = cfg.horizon
    ticks = np.empty((chunks, T))
    inits = np.empty(chunks)
    for c in range(chunks):
        z = torch.randn(1, cfg.latent_steps, cfg.latent_channels)
        cond = torch.randn(1, T, cfg.cond_dim)
        start = time.perf_counter_ns()
        state = model.init_state(z)
        inits[c] = (time.perf_counter_ns() - start) / 1e3
        for t in range(T):
            cond_t = cond[:, t]
            start = time.perf_counter_ns()
            if method == "incremental":
                _, state = model.step(state, cond_t)
            else:
                rerun_prefix(model, z, cond, t)
            ticks[c, t] = (time.perf_counter_ns() - start) / 1e3
    return ticks, inits


def summary(us: np.ndarray) -> dict[str, float]:
    flat = us.reshape(-1)
    stats = {"p50_us": np.percentile(flat, 50), "p99_us": np.percentile(flat, 99), "max_us": flat.max()}
    return {k: round(float(v), 2) for k, v in {**stats, "mean_us": flat.mean()}.items()}


@dataclass
class StepConfig:
    """``configs/benchmarks/rdp_tokenizer_step.yaml``."""

    chunks: int = 200
    warmup_chunks: int = 20
    out: str = "benchmarks/results/rdp_tokenizer_step.json"

    def __post_init__(self) -> None:
        if self.chunks < 1 or self.warmup_chunks < 0:
            raise UsageError(f"chunks={self.chunks} must be >= 1 and warmup_chunks={self.warmup_chunks} >= 0")


@command("benchmarks.rdp_tokenizer_step")
def main(argv: Sequence[str] | None = None) -> int:
    args = compose(StepConfig, "benchmarks/rdp_tokenizer_step", list(sys.argv[1:] if argv is None else argv),
                   "rdp_tokenizer_step", "chunks=20")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = TokenizerConfig(action_dim=10, cond_dim=30)
    model = AsymmetricTokenizer(cfg).eval()

    results: dict[str, dict[str, object]] = {}
    with torch.inference_mode():
        for method in ("incremental", "rerun_prefix"):
            time_chunks(model, args.warmup_chunks, method)
            ticks, inits = time_chunks(model, args.chunks, method)
            results[method] = {
                "per_tick": summary(ticks),
                "first_tick": summary(ticks[:, 0]),
                "last_tick": summary(ticks[:, -1]),
            }
            if method == "incremental":
                results[method]["init_state_per_chunk"] = summary(inits)

    print(f"{'method':14s} {'p50 us':>8s} {'p99 us':>8s} {'max us':>8s} {'last-tick p50':>14s}")
    for name, r in results.items():
        s = r["per_tick"]
        print(f"{name:14s} {s['p50_us']:8.1f} {s['p99_us']:8.1f} {s['max_us']:8.1f} {r['last_tick']['p50_us']:14.1f}")
    init = results["incremental"]["init_state_per_chunk"]
    print(f"init_state per chunk: p50 {init['p50_us']:.1f} us, p99 {init['p99_us']:.1f} us")

    report = {
        "benchmark": "AsymmetricTokenizer fast-loop tick, batch 1, eval + inference_mode",
        "config": cfg.to_dict(),
        "threads": torch.get_num_threads(),
        "chunks": args.chunks,
        "ticks_per_method": args.chunks * cfg.horizon,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "results": results,
        "speedup_p50": round(
            results["rerun_prefix"]["per_tick"]["p50_us"] / results["incremental"]["per_tick"]["p50_us"], 2
        ),
    }
    publish(report, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
