"""Command-line tools of the episode dataset format (``dataset.format``): ``info``, ``verify``, ``recover``,
``build``, ``viz`` (a video of one episode, ``dataset.viz``), ``export format=lerobot`` (LeRobotDataset v3.0,
``dataset.lerobot``) and ``import format=lerobot`` (``dataset.lerobot_import``).

    python -m dataset info|verify|recover DIR
    python -m dataset build A [B ...] rate=25 out=D [streams=[state,wrench]]
    python -m dataset viz DIR [episode=0] [out=FILE] [fps=25]
    python -m dataset export DIR format=lerobot out=OUT [fps=25] [streams=[a,b]] [state=[a,b]] [action=action]
    python -m dataset import SRC OUT format=lerobot [require=[a,b]]

The first argument is the command; the rest are hydra overrides of ``configs/dataset/<command>.yaml``, whose
directory arguments may be given without their key, in order (``python -m dataset <command> --help`` lists them).
Exit 1 on damage found by ``verify`` or a storage failure, 2 on a refused input (one line, ``bus.cli``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus.cli import UsageError, choose, command
from bus.config import compose, split_verb
from dataset.format import build_training_set, dataset_info, list_episodes, recover_dataset, verify_dataset

FORMATS = ("lerobot",)


@dataclass
class DirConfig:
    """``info`` / ``verify`` / ``recover``: one dataset directory."""

    data: str


@dataclass
class BuildConfig:
    inputs: list[str]
    rate: float
    out: str
    streams: list[str] | None = None


@dataclass
class VizConfig:
    data: str
    episode: int = 0
    out: str | None = None
    fps: float = 25.0


@dataclass
class ExportConfig:
    data: str
    format: str
    out: str
    fps: int | None = None
    streams: list[str] | None = None
    state: list[str] | None = None
    action: str = "action"

    def __post_init__(self) -> None:
        choose("format", self.format, FORMATS, "export format")


@dataclass
class ImportConfig:
    src: str
    out: str
    format: str
    require: list[str] | None = None

    def __post_init__(self) -> None:
        choose("format", self.format, FORMATS, "import format")


@command("dataset")
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dataset COMMAND [DIR ...] [key=value ...]``; see the module docstring."""
    name, rest = split_verb(sys.argv[1:] if argv is None else argv, _COMMANDS, "dataset", "python -m dataset info DIR",
                            __doc__)
    cls, positional, run = _COMMANDS[name]
    cfg = compose(cls, f"dataset/{name}", rest, f"dataset {name}", f"{' '.join(p.upper() for p in positional)}",
                  doc=__doc__, positional=positional)
    return run(cfg)


def _cmd_info(args: DirConfig) -> int:
    info = dataset_info(Path(args.data))
    print(f"dataset {info['dataset']} (schema {info['schema_version']})")
    print(f"  {info['episodes']} episodes ({info['successes']} successful, {info['salvaged']} salvaged),"
          f" {info['seconds']:.1f} s recorded, {info['in_progress']} in progress")
    for name, s in info["streams"].items():
        rate = f"{s['rate_hz']:.1f} Hz" if s["rate_hz"] else "rate ?"
        flag = "  (inconsistent dtype/shape across episodes)" if s.get("inconsistent") else ""
        print(f"  {name:<16} {rate:>10}  {s['dtype']:<4} {tuple(s['shape'])}  {s['samples']} samples{flag}")
    if info["in_progress"]:
        print("  note: in-progress directories are ignored here; after a crash run `recover`")
    print(json.dumps(info))
    return 0


def _cmd_verify(args: DirConfig) -> int:
    problems, warnings = verify_dataset(Path(args.data))
    for w in warnings:
        print(f"warning: {w}")
    for p in problems:
        print(f"DAMAGED: {p}")
    n = len(list_episodes(Path(args.data)))
    print(json.dumps({"episodes": n, "ok": not problems, "problems": problems, "warnings": warnings}))
    return 1 if problems else 0


def _cmd_recover(args: DirConfig) -> int:
    reports = recover_dataset(Path(args.data))
    if not reports:
        print("nothing to recover")
    for r in reports:
        if r.outcome == "salvaged":
            kept = ", ".join(f"{k} {v}" for k, v in r.kept.items())
            print(f"{r.source} -> {r.episode} (salvaged): kept {kept} samples")
        elif r.outcome == "empty-removed":
            print(f"{r.source}: nothing had been flushed; removed")
        else:
            print(f"{r.source}: still being recorded by a live process; skipped")
        for d in r.dropped:
            print(f"  dropped {d}")
    print(json.dumps({"recovered": [r.__dict__ for r in reports]}))
    return 0


def _cmd_build(args: BuildConfig) -> int:
    if not args.inputs:
        raise UsageError("build needs at least one recorded dataset: python -m dataset build A [B ...] rate=HZ out=D")
    inputs = [Path(p) for p in args.inputs]
    summary = build_training_set(inputs if len(inputs) > 1 else inputs[0], args.rate, Path(args.out), args.streams)
    print(f"built {len(summary['episodes'])} episodes, {summary['num_steps']} steps at {args.rate:g} Hz -> {args.out}")
    print(json.dumps({k: summary[k] for k in ("rate_hz", "num_steps", "streams")} | {"out": args.out}))
    return 0


def _cmd_viz(args: VizConfig) -> int:
    from dataset.viz import render_episode

    summary = render_episode(Path(args.data), args.episode, None if args.out is None else Path(args.out), args.fps)
    print(f"wrote {summary['frames']} frames of {summary['episode']} at {summary['fps']:g} fps -> {summary['out']}")
    print(json.dumps(summary))
    return 0


def _cmd_export(args: ExportConfig) -> int:
    from dataset.lerobot import export_lerobot

    rate = {} if args.fps is None else {"fps": args.fps}  # unset: export_lerobot's default, the training rate
    summary = export_lerobot(Path(args.data), Path(args.out), streams=args.streams, state=args.state,
                             action=args.action, **rate)
    for name, rate in summary["held_streams"].items():
        print(f"note: {name} is recorded at {rate:.3g} Hz, below {summary['fps']} fps: each sample is held"
              " (zero-order hold) over several frames")
    for name, why in summary["skipped_streams"].items():
        print(f"note: {name} left out ({why})")
    print(f"exported {summary['total_episodes']} episodes, {summary['total_frames']} frames at {summary['fps']} fps"
          f" -> {args.out} (LeRobotDataset {summary['codebase_version']})")
    print(json.dumps(summary))
    return 0


def _cmd_import(args: ImportConfig) -> int:
    from dataset.lerobot_import import import_lerobot

    summary = import_lerobot(Path(args.src), Path(args.out), require=args.require)
    for note in summary["notes"]:
        print(f"note: {note}")
    print(f"imported {summary['episodes']} episodes, {summary['frames']} frames at {summary['fps']} fps,"
          f" streams {sorted(summary['streams'])} -> {args.out}")
    print(json.dumps(summary))
    return 0


# command -> (config class, keys its bare arguments fill, what runs it)
_COMMANDS: dict[str, tuple[type, tuple[str, ...], Callable[[Any], int]]] = {
    "info": (DirConfig, ("data",), _cmd_info), "verify": (DirConfig, ("data",), _cmd_verify),
    "recover": (DirConfig, ("data",), _cmd_recover), "build": (BuildConfig, ("inputs",), _cmd_build),
    "viz": (VizConfig, ("data",), _cmd_viz), "export": (ExportConfig, ("data",), _cmd_export),
    "import": (ImportConfig, ("src", "out"), _cmd_import)}

if __name__ == "__main__":
    sys.exit(main())
