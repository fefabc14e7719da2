"""Terminator vs a parameter-matched GroupNorm ResNet (and an RBF SVC) on scikit-learn's 8x8 digits.

One stratified split shared by every model; each network is trained from several seeds with the same recipe
(Adam, cosine LR, fixed epochs and batch size). Models are built from the hydra configs in configs/encoder/,
so the ablations are config variants. Runs offline on one CPU thread.

    python -m benchmarks.terminator_digits                    # full benchmark (~15 min on one thread)
    python -m benchmarks.terminator_digits seeds=1 models=[terminator_2d,cnn_baseline] out=/tmp/x.json

Prints a table, writes JSON to benchmarks/results/terminator_digits.json; the last stdout line is the JSON.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC
from torch import nn

import bus.config
from bus.cli import UsageError, choose, command

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs" / "encoder"


@dataclass(frozen=True)
class ModelSpec:
    """A network of the benchmark: an encoder config, its overrides, and the input layout it reads."""

    config: str
    overrides: dict[str, object] = field(default_factory=dict)
    layout: str = "image"  # "image": (B, 1, 8, 8); "sequence": (B, 1, 64) pixels in raster order


MODELS: dict[str, ModelSpec] = {
    "terminator_2d": ModelSpec("terminator"),
    "cnn_baseline": ModelSpec("cnn_baseline"),
    "terminator_1d": ModelSpec("terminator", {"dims": 1}, layout="sequence"),
    "terminator_noslowloss": ModelSpec("terminator_noslowloss"),
    "terminator_noglobal": ModelSpec("terminator_noglobal"),
}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 48
    lr: float = 2e-3
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    test_size: float = 0.25
    split_seed: int = 0


@dataclass(frozen=True)
class Split:
    """Digits scaled to zero mean, unit variance with train statistics: x (N, 8, 8) float32, y (N,) int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_split(cfg: TrainConfig) -> Split:
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images.astype(np.float32),
        digits.target,
        test_size=cfg.test_size,
        stratify=digits.target,
        random_state=cfg.split_seed,
    )
    mean, std = x_train.mean(), x_train.std()
    return Split(
        torch.from_numpy((x_train - mean) / std),
        torch.from_numpy(y_train).long(),
        torch.from_numpy((x_test - mean) / std),
        torch.from_numpy(y_test).long(),
    )


def build_model(spec: ModelSpec) -> nn.Module:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name=spec.config)
    return instantiate(cfg, **spec.overrides, in_channels=1, num_classes=10, _convert_="all")


def as_input(images: torch.Tensor, layout: str) -> torch.Tensor:
    """(N, 8, 8) -> (N, 1, 8, 8) images or (N, 1, 64) raster-order pixel sequences."""
    return images.unsqueeze(1) if layout == "image" else images.reshape(len(images), 1, -1)


def train_and_test(spec: ModelSpec, split: Split, cfg: TrainConfig, seed: int) -> tuple[float, int, float]:
    """Train one network from ``seed``; return (test accuracy, parameter count, training seconds)."""
    torch.manual_seed(seed)
    model = build_model(spec)
    num_params = sum(p.numel() for p in model.parameters())
    x_train, x_test = as_input(split.x_train, spec.layout), as_input(split.x_test, spec.layout)
    steps_per_epoch = -(-len(x_train) // cfg.batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps_per_epoch)
    shuffle = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for _ in range(cfg.epochs):
        for batch in torch.randperm(len(x_train), generator=shuffle).split(cfg.batch_size):
            loss = F.cross_entropy(model(x_train[batch]), split.y_train[batch])
            if hasattr(model, "slow_loss"):
                loss = loss + model.slow_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(x).argmax(dim=1) for x in x_test.split(256)])
    return (predictions == split.y_test).float().mean().item(), num_params, seconds


def svc_accuracy(split: Split) -> float:
    svc = SVC(kernel="rbf", gamma="scale").fit(split.x_train.flatten(1).numpy(), split.y_train.numpy())
    return float(svc.score(split.x_test.flatten(1).numpy(), split.y_test.numpy()))


def summarise(accuracies: list[float]) -> dict[str, float]:
    std = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    return {"acc_mean": statistics.fmean(accuracies), "acc_std": std}


def run(cfg: TrainConfig, model_names: list[str]) -> dict[str, object]:
    split = load_split(cfg)
    results: dict[str, dict[str, object]] = {
        "svc_rbf": {**summarise([svc_accuracy(split)]), "params": None, "accs": None, "seconds_per_seed": None}
    }
    for name in model_names:
        accs, seconds = [], []
        for seed in cfg.seeds:
            acc, num_params, secs = train_and_test(MODELS[name], split, cfg, seed)
            accs.append(acc)
            seconds.append(secs)
            print(f"  {name:24s} seed {seed}: acc {acc:.4f}  ({secs:.0f} s)", flush=True)
        results[name] = {
            **summarise(accs),
            "params": num_params,
            "accs": accs,
            "seconds_per_seed": statistics.fmean(seconds),
        }
    return {
        "benchmark": "sklearn load_digits 8x8, stratified split",
        "train_config": asdict(cfg),
        "n_train": len(split.y_train),
        "n_test": len(split.y_test),
        "threads": torch.get_num_threads(),
        "results": results,
    }


def print_table(report: dict[str, object]) -> None:
    print(f"\n{'model':24s} {'accuracy (mean ± std)':>24s} {'params':>8s} {'s/seed':>7s}")
    for name, r in report["results"].items():
        params = "-" if r["params"] is None else str(r["params"])
        secs = "-" if r["seconds_per_seed"] is None else f"{r['seconds_per_seed']:.0f}"
        print(f"{name:24s} {r['acc_mean'] * 100:15.2f} ± {r['acc_std'] * 100:5.2f} % {params:>8s} {secs:>7s}")


def write_json(report: dict[str, object], path: Path) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a JSON behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)


@dataclass
class DigitsConfig:
    """``configs/benchmarks/terminator_digits.yaml`` (the training recipe's defaults are :class:`TrainConfig`'s)."""

    epochs: int = TrainConfig.epochs
    batch_size: int = TrainConfig.batch_size
    lr: float = TrainConfig.lr
    seeds: int = len(TrainConfig().seeds)  # seeds 0 .. seeds-1
    models: list[str] = field(default_factory=lambda: list(MODELS))
    out: str = "benchmarks/results/terminator_digits.json"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.seeds < 1:
            raise UsageError(f"epochs={self.epochs}, batch_size={self.batch_size} and seeds={self.seeds} must be >= 1")
        for name in self.models:
            choose("models", name, MODELS, "model")


@command("benchmarks.terminator_digits")
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = bus.config.compose(DigitsConfig, "benchmarks/terminator_digits", argv, "terminator_digits",
                              "seeds=1 models=[terminator_2d,cnn_baseline]")
    torch.set_num_threads(1)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seeds=tuple(range(args.seeds)))
    report = run(cfg, args.models)
    print_table(report)
    write_json(report, Path(args.out))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
