"""CPU latency of one 96x96 RGB image (batch 1, feature mode, one thread): Terminator vs ResNetEncoder.

Both are built from their hydra configs in configs/encoder/ with camera overrides (3 input channels, no head,
a stride-4 patchify stem: a 24x24 map after the stem). Extra rows show the other stem stride.

    python -m benchmarks.terminator_latency [warmup=10] [runs=50] [out=FILE]

Prints a table, writes JSON to benchmarks/results/terminator_latency.json; the last stdout line is the JSON.
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

import bus.config
from benchmarks.report import publish
from bus.cli import UsageError, command

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs" / "encoder"

# name -> (config, overrides on top of in_channels=3, num_classes=None)
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "terminator_patch4": ("terminator", {"patch_size": 4}),
    "resnet_stem4": ("cnn_baseline", {"stem_stride": 4}),
    "terminator_patch8": ("terminator", {"patch_size": 8}),
    "resnet_stem2": ("cnn_baseline", {"stem_stride": 2}),
}


def build(config: str, overrides: dict[str, object]) -> nn.Module:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name=config)
    return instantiate(cfg, **overrides, in_channels=3, num_classes=None, _convert_="all").eval()


def latency_ms(model: nn.Module, image: torch.Tensor, warmup: int, runs: int) -> list[float]:
    """Wall-clock milliseconds of ``runs`` forward passes after ``warmup`` untimed ones."""
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            start = time.perf_counter()
            model(image)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return times


@dataclass
class EncoderLatencyConfig:
    """``configs/benchmarks/terminator_latency.yaml``."""

    warmup: int = 10
    runs: int = 50
    out: str = "benchmarks/results/terminator_latency.json"

    def __post_init__(self) -> None:
        if self.runs < 2 or self.warmup < 0:  # p90 needs two timings
            raise UsageError(f"runs={self.runs} must be >= 2 and warmup={self.warmup} >= 0")


@command("benchmarks.terminator_latency")
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = bus.config.compose(EncoderLatencyConfig, "benchmarks/terminator_latency", argv, "terminator_latency",
                              "runs=10")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    image = torch.randn(1, 3, 96, 96)
    results = {}
    for name, (config, overrides) in VARIANTS.items():
        model = build(config, overrides)
        times = latency_ms(model, image, args.warmup, args.runs)
        results[name] = {
            "config": config,
            "overrides": overrides,
            "params": sum(p.numel() for p in model.parameters()),
            "feature_dim": model.feature_dim,
            "median_ms": statistics.median(times),
            "p90_ms": statistics.quantiles(times, n=10)[-1],
        }
    print(f"{'model':20s} {'median ms':>10s} {'p90 ms':>8s} {'params':>8s} {'features':>9s}")
    for name, r in results.items():
        print(f"{name:20s} {r['median_ms']:10.2f} {r['p90_ms']:8.2f} {r['params']:8d} {r['feature_dim']:9d}")
    report = {
        "benchmark": "96x96x3 image, batch 1, feature mode, eval + inference_mode",
        "threads": torch.get_num_threads(),
        "warmup": args.warmup,
        "runs": args.runs,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "results": results,
    }
    publish(report, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
