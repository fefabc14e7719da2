"""Score a trained grounding run on cached episodes: held-out wording of held-out-look episodes.

    python -m grounding.evaluate run=RUN cache=TEST_CACHE.npz [split=heldout] [frames=T] out=FILE.json
    python -m grounding.evaluate table=[A.json,B.json,...] [metric=all_right] [out=results.md]

For every instruction the test episodes answer (``grounding.data.episode_instructions`` on the cache's metas, with
the ``split`` templates), the run's model reads the cached frame tokens resampled to T frames and the instruction.
Scored per instruction kind and overall, each with a 95 % Wilson interval:

* ``task``; each goal field (``region``, ``force``, ``height``, ``grip``) over the samples that ask it;
* ``keyframe_exact`` and ``keyframe_within1`` (the bin, or one bin off) over the ``when`` questions;
* ``all_right``: every field the sample asks (task, goal fields, keyframe bin) right.

Beside them: the language model's counted prefill FLOPs at T (``grounding.flops``, the median instruction length)
and the frame encoder's per frame, and the median latency of one sample (batch 1, one thread). Prints a table and
writes JSON: format, run, cache, split, mode, frames, trained_frames, episodes, samples, metrics {overall, by_kind}
(each metric {correct, n, accuracy, ci95}), flops, latency, backbone, data. ``table=`` renders several result
files as a markdown table, rows mode, columns T.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from bus.cli import UsageError, choose, command
from bus.config import compose
from dataset.durable import write_file_durably
from grounding.flops import frame_encoder_flops, lm_prefill_flops
from grounding.instructions import FIELDS, KINDS, SPLITS
from grounding.model import IGNORE_INDEX, MODES, GroundingModel, load
from grounding.train import (
    CACHE_HOW,
    MODEL_DIR,
    RUN_FILE,
    EncodedSamples,
    TokenCache,
    encode_samples,
    load_backbone,
)
from rdp.checkpoint import read_json
from sim.eval import wilson_interval

EVAL_FORMAT = "slowfast-grounding-eval/1"
METRICS = ("task", *FIELDS, "keyframe_exact", "keyframe_within1", "all_right")
RUN_HOW = ("python -m grounding.train stage=lm cache=CACHE backbone=BACKBONE mode=slowfast frames=T out={} "
           "(or stage=backbone)")


@dataclass
class GroundingEvalConfig:
    """``configs/grounding/evaluate.yaml``."""

    run: str = ""
    cache: str = ""
    split: str = "heldout"
    frames: int | None = None
    out: str = ""
    seed: int = 0
    rounds: int = 1
    instructions: list[str] = field(default_factory=lambda: list(KINDS))
    batch: int = 64
    latency_samples: int = 50
    threads: int = 1
    progress: bool = True
    table: list[str] = field(default_factory=list)
    metric: str = "all_right"

    def __post_init__(self) -> None:
        choose("metric", self.metric, METRICS, "metric")
        if self.table:
            return
        if not self.run or not self.cache:
            raise UsageError("run=RUN and cache=TEST_CACHE are required (e.g. run=runs/ground-slowfast-64 "
                             "cache=runs/ground-test-tokens.npz out=results/ground-slowfast-64.json), or table=[...]")
        choose("split", self.split, SPLITS, "instruction split")
        for kind in self.instructions:
            choose("instructions", kind, KINDS, "instruction kind")
        if self.frames is not None and self.frames < 2:
            raise UsageError(f"frames={self.frames}: expected at least 2, or null for the run's own T")
        for name in ("rounds", "batch", "threads"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name}={getattr(self, name)}: expected an integer >= 1")
        if self.latency_samples < 0:
            raise UsageError(f"latency_samples={self.latency_samples}: expected >= 0 (0: no latency)")


# ------------------------------------------------------------------------------------------------------ scoring
def predict(model: GroundingModel, videos: torch.Tensor, samples: EncodedSamples, batch: int,
            progress: bool = False) -> dict[str, torch.Tensor]:
    """Argmax class of every head for every sample: head -> (S,) long."""
    preds: dict[str, list[torch.Tensor]] = {}
    rows = np.arange(len(samples))
    with torch.inference_mode():
        for start in tqdm(range(0, len(rows), batch), desc="evaluate", unit="batch", file=sys.stderr,
                          disable=not progress):
            episode, ids, mask, _ = samples.batch(rows[start:start + batch])
            for head, logits in model(videos[episode], ids, mask).items():
                preds.setdefault(head, []).append(logits.argmax(dim=1))
    return {k: torch.cat(v) for k, v in preds.items()}


def outcomes(preds: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
             ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """metric -> (asked, right), each (S,) bool: where the metric applies and where the model got it."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for head in ("task", *FIELDS):
        t, p = targets[head].numpy(), preds[head].numpy()
        out[head] = (t != IGNORE_INDEX, p == t)
    t, p = targets["keyframe"].numpy(), preds["keyframe"].numpy()
    asked = t != IGNORE_INDEX
    out["keyframe_exact"] = (asked, p == t)
    out["keyframe_within1"] = (asked, np.abs(p - t) <= 1)
    every = np.ones(len(t), dtype=bool)
    for name in ("task", *FIELDS, "keyframe_exact"):
        a, r = out[name]
        every &= r | ~a
    out["all_right"] = (np.ones(len(t), dtype=bool), every)
    return out


def summarise(results: Mapping[str, tuple[np.ndarray, np.ndarray]], rows: np.ndarray) -> dict[str, Any]:
    """metric -> {correct, n, accuracy (None when n = 0), ci95 (Wilson)} over the samples ``rows`` (bool mask)."""
    table = {}
    for name, (asked, right) in results.items():
        n = int((asked & rows).sum())
        k = int((asked & right & rows).sum())
        lo, hi = wilson_interval(k, n)
        table[name] = {"correct": k, "n": n, "accuracy": k / n if n else None, "ci95": [round(lo, 4), round(hi, 4)]}
    return table


def score(preds: Mapping[str, torch.Tensor], samples: EncodedSamples) -> dict[str, Any]:
    """Every metric overall and per instruction kind."""
    results = outcomes(preds, samples.targets)
    kinds = np.asarray(samples.kinds)
    return {"overall": summarise(results, np.ones(len(kinds), dtype=bool)),
            "by_kind": {k: summarise(results, kinds == k) for k in KINDS if (kinds == k).any()}}


def median_latency_ms(model: GroundingModel, videos: torch.Tensor, samples: EncodedSamples, count: int,
                      warmup: int = 3) -> float | None:
    """Median wall time of one sample's forward pass (batch 1) over the first ``count`` samples."""
    count = min(count, len(samples))
    if count == 0:
        return None
    times = []
    with torch.inference_mode():
        for i in [*range(min(warmup, count)), *range(count)]:
            episode, ids, mask, _ = samples.batch(np.array([i]))
            start = time.perf_counter()
            model(videos[episode], ids, mask)
            times.append((time.perf_counter() - start) * 1e3)
    return round(float(np.median(times[min(warmup, count):])), 3)


# ------------------------------------------------------------------------------------------------------ evaluate
def load_run(run: str | Path) -> tuple[GroundingModel, Any, dict[str, Any]]:
    """The model, tokenizer and run.json of a grounding run (stage=lm or stage=backbone)."""
    root = Path(run)
    if not (root / MODEL_DIR).is_dir() or not (root / RUN_FILE).is_file():
        raise FileNotFoundError(f"run={run}: no trained grounding model there (train one: {RUN_HOW.format(run)})")
    info = read_json(root / RUN_FILE, "the run's description")
    if "backbone" not in info:
        raise UsageError(f"run={run}: training has not finished (run.json names no backbone yet); resume it with "
                         "resume=true")
    model, tokenizer = load(root / MODEL_DIR)
    return model, tokenizer, info


def evaluate(cfg: GroundingEvalConfig) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    model, tokenizer, info = load_run(cfg.run)
    cache = TokenCache.load(cfg.cache)
    backbone_dir = info["backbone"]["dir"]
    cache.check_backbone(info["backbone"]["sha256"], f"run={cfg.run}",
                         CACHE_HOW.replace("BACKBONE", backbone_dir).format(cfg.cache))
    frames = cfg.frames or int(info["frames"])
    samples = encode_samples(cache.samples(cfg.split, cfg.seed, cfg.rounds, cfg.instructions), tokenizer, model.cfg,
                             f"the model reads at most max_text_len={model.cfg.max_text_len} tokens")
    videos = cache.videos(frames)
    metrics = score(predict(model, videos, samples, cfg.batch, cfg.progress), samples)
    text_len = int(np.median(samples.mask.sum(dim=1).numpy()))
    encoder_flops = None
    if (Path(backbone_dir) / "backbone").is_dir():
        size = int(info.get("image_size") or cache.meta["backbone"]["config"]["image_size"])
        encoder_flops = frame_encoder_flops(load_backbone(backbone_dir).encoder, (size, size))
    recording = cache.meta["data"]["recording"]
    return {
        "format": EVAL_FORMAT, "run": str(cfg.run), "cache": str(cfg.cache), "split": cfg.split,
        "mode": model.cfg.mode, "frames": frames, "trained_frames": int(info["frames"]),
        "episodes": len(cache.episodes), "samples": len(samples), "metrics": metrics,
        "flops": {"lm_prefill": lm_prefill_flops(model, frames, text_len), "text_len": text_len,
                  "frame_encoder_per_frame": encoder_flops},
        "latency": {"median_ms": median_latency_ms(model, videos, samples, cfg.latency_samples),
                    "samples": min(cfg.latency_samples, len(samples)), "threads": cfg.threads, "batch": 1},
        "backbone": info["backbone"],
        "data": {"root": cache.meta["data"]["root"], "looks": recording.get("looks"),
                 "frame_hz": recording.get("frame_hz"), "seed": cfg.seed, "rounds": cfg.rounds},
    }


# ------------------------------------------------------------------------------------------------------ reports
def _pct(entry: Mapping[str, Any]) -> str:
    return "-" if entry["accuracy"] is None else f"{100 * entry['accuracy']:.1f}"


def format_result(result: Mapping[str, Any]) -> str:
    """A compact table: rows overall and per kind, columns n and every metric's accuracy (%)."""
    metrics = result["metrics"]
    names = ("task", *FIELDS, "keyframe_exact", "keyframe_within1", "all_right")
    short = ("task", *FIELDS, "kf", "kf±1", "all")
    lines = [f"{result['mode']} T={result['frames']} on {result['samples']} {result['split']} instructions "
             f"({result['episodes']} episodes): accuracy %",
             f"{'':<11}{'n':>6}" + "".join(f"{s:>8}" for s in short)]
    for label, table in [("overall", metrics["overall"]), *metrics["by_kind"].items()]:
        lines.append(f"{label:<11}{table['all_right']['n']:>6}" + "".join(f"{_pct(table[m]):>8}" for m in names))
    lat = result["latency"]["median_ms"]
    lines.append(f"LM prefill {result['flops']['lm_prefill'] / 1e6:.1f} MFLOPs (text {result['flops']['text_len']} "
                 f"tokens), median latency {lat if lat is not None else '-'} ms (batch 1, "
                 f"{result['latency']['threads']} thread)")
    return "\n".join(lines)


def render_table(results: Sequence[Mapping[str, Any]], metric: str = "all_right") -> str:
    """Markdown: rows mode, columns T; a cell is the overall ``metric`` in % with its 95 % interval, then the LM
    prefill MFLOPs and median ms per sample."""
    cells: dict[tuple[str, int], str] = {}
    for r in results:
        if (r["mode"], int(r["frames"])) in cells:
            raise UsageError(f"table: two results for mode={r['mode']} T={r['frames']} ({r['run']} and an earlier "
                             "one); give one per cell")
        m = r["metrics"]["overall"][metric]
        lo, hi = m["ci95"]
        acc = "-" if m["accuracy"] is None else f"{100 * m['accuracy']:.1f} ({100 * lo:.0f}–{100 * hi:.0f})"
        lat = r["latency"]["median_ms"]
        cells[r["mode"], int(r["frames"])] = (f"{acc} · {r['flops']['lm_prefill'] / 1e6:.0f} MFLOPs · "
                                              f"{lat if lat is not None else '-'} ms")
    frames = sorted({t for _, t in cells})
    modes = [m for m in MODES if any(mode == m for mode, _ in cells)]
    lines = [f"| {metric} % (95 % CI) · prefill · latency | " + " | ".join(f"T={t}" for t in frames) + " |",
             "|---|" + "---|" * len(frames)]
    lines += [f"| {mode} | " + " | ".join(cells.get((mode, t), "") for t in frames) + " |" for mode in modes]
    return "\n".join(lines) + "\n"


def _read_result(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"table: {path}: no such result file (make it: python -m grounding.evaluate run=RUN "
                                f"cache=TEST_CACHE out={path})")
    result = read_json(p, "a grounding evaluation result")
    if result.get("format") != EVAL_FORMAT:
        raise UsageError(f"table: {path}: format {result.get('format')!r}, expected {EVAL_FORMAT!r}")
    return result


# ---------------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str]) -> GroundingEvalConfig:
    return compose(GroundingEvalConfig, "grounding/evaluate", argv, "grounding evaluation",
                   "run=RUN cache=TEST_CACHE.npz out=FILE.json")


@command("grounding.evaluate")
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(list(sys.argv[1:] if argv is None else argv))
    if cfg.table:
        text = render_table([_read_result(p) for p in cfg.table], cfg.metric)
        if cfg.out:
            write_file_durably(Path(cfg.out), text.encode())
        print(text, end="")
        return 0
    result = evaluate(cfg)
    print(format_result(result), file=sys.stderr)
    if cfg.out:
        out = Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_file_durably(out, (json.dumps(result, indent=1) + "\n").encode())
    print(json.dumps({k: result[k] for k in ("mode", "frames", "samples")} |
                     {"all_right": result["metrics"]["overall"]["all_right"]["accuracy"], "out": cfg.out or None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
