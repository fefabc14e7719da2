"""Command-line tools of the episode dataset format (``dataset.format``): ``info``, ``verify``, ``recover``,
``build``, ``viz`` (a video of one episode, ``dataset.viz``), ``export --format lerobot`` (LeRobotDataset v3.0,
``dataset.lerobot``) and ``import --format lerobot`` (``dataset.lerobot_import``).

    python -m dataset info|verify|recover|build|viz|export|import DIR ...
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bus.cli import ArgumentParser, command
from dataset.format import build_training_set, dataset_info, list_episodes, recover_dataset, verify_dataset


@command("dataset")
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dataset {info,verify,recover,build,viz,export,import} DIR``; exit 1 on damage found by
    ``verify`` or a storage failure, 2 on a refused input (one line, ``bus.cli``)."""
    parser = ArgumentParser(prog="python -m dataset", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for cmd, text in (("info", "summary; last line is JSON"), ("verify", "recompute checksums"),
                      ("recover", "salvage crashed in-progress episodes")):
        sub.add_parser(cmd, help=text).add_argument("dir", type=Path)
    b = sub.add_parser("build", help="resample to a common clock into a training set")
    b.add_argument("dir", type=Path, nargs="+", help="recorded dataset(s); several are pooled in the order given")
    b.add_argument("--rate", type=float, required=True, help="common clock, Hz")
    b.add_argument("--out", type=Path, required=True, help="output directory (must not exist)")
    b.add_argument("--streams", type=lambda s: [x for x in s.split(",") if x], default=None,
                   help="comma-separated subset of streams")
    v = sub.add_parser("viz", help="video of one episode: cameras, tactile arrows, force plot; last line JSON")
    v.add_argument("dir", type=Path)
    v.add_argument("--episode", type=int, default=0, help="position among committed episodes (default 0)")
    v.add_argument("--out", type=Path, default=None, help="video file (default DIR/episode_XXXXXX.mp4)")
    v.add_argument("--fps", type=float, default=25.0, help="video frame rate (default 25)")
    e = sub.add_parser("export", help="convert to another dataset format; last line JSON")
    e.add_argument("dir", type=Path)
    e.add_argument("--format", required=True, choices=["lerobot"], help="lerobot: LeRobotDataset v3.0")
    e.add_argument("--out", type=Path, required=True, help="output directory (must not exist)")
    e.add_argument("--fps", type=int, default=None,
                   help="one rate for every column (default: the rate rdp.train resamples to, 25)")
    e.add_argument("--streams", type=lambda s: [x for x in s.split(",") if x], default=None,
                   help="recorded streams to export besides state and action (default: every stream with at least"
                        " two samples per episode)")
    e.add_argument("--state", type=lambda s: [x for x in s.split(",") if x], default=None,
                   help="streams concatenated into observation.state (default: tcp_pos,tcp_quat,gripper_width"
                        " where exported)")
    e.add_argument("--action", default="action", help="stream exported as `action` (default action)")
    m = sub.add_parser("import", help="convert from another dataset format into this one; last line JSON")
    m.add_argument("src", type=Path, help="the dataset to convert")
    m.add_argument("out", type=Path, help="output directory (must not exist)")
    m.add_argument("--format", required=True, choices=["lerobot"], help="lerobot: LeRobotDataset v3.0")
    m.add_argument("--require", type=lambda s: [x for x in s.split(",") if x], default=None,
                   help="streams the result must have (default: the ones rdp.train needs; '' for none)")
    args = parser.parse_args(argv)
    return _COMMANDS[args.cmd](args)


def _cmd_info(args: argparse.Namespace) -> int:
    info = dataset_info(args.dir)
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


def _cmd_verify(args: argparse.Namespace) -> int:
    problems, warnings = verify_dataset(args.dir)
    for w in warnings:
        print(f"warning: {w}")
    for p in problems:
        print(f"DAMAGED: {p}")
    n = len(list_episodes(args.dir))
    print(json.dumps({"episodes": n, "ok": not problems, "problems": problems, "warnings": warnings}))
    return 1 if problems else 0


def _cmd_recover(args: argparse.Namespace) -> int:
    reports = recover_dataset(args.dir)
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


def _cmd_build(args: argparse.Namespace) -> int:
    summary = build_training_set(args.dir if len(args.dir) > 1 else args.dir[0], args.rate, args.out, args.streams)
    print(f"built {len(summary['episodes'])} episodes, {summary['num_steps']} steps at {args.rate:g} Hz -> {args.out}")
    print(json.dumps({k: summary[k] for k in ("rate_hz", "num_steps", "streams")} | {"out": str(args.out)}))
    return 0


def _cmd_viz(args: argparse.Namespace) -> int:
    from dataset.viz import render_episode

    summary = render_episode(args.dir, args.episode, args.out, args.fps)
    print(f"wrote {summary['frames']} frames of {summary['episode']} at {summary['fps']:g} fps -> {summary['out']}")
    print(json.dumps(summary))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from dataset.lerobot import export_lerobot

    rate = {} if args.fps is None else {"fps": args.fps}  # unset: export_lerobot's default, the training rate
    summary = export_lerobot(args.dir, args.out, streams=args.streams, state=args.state, action=args.action, **rate)
    for name, rate in summary["held_streams"].items():
        print(f"note: {name} is recorded at {rate:.3g} Hz, below {summary['fps']} fps: each sample is held"
              " (zero-order hold) over several frames")
    for name, why in summary["skipped_streams"].items():
        print(f"note: {name} left out ({why})")
    print(f"exported {summary['total_episodes']} episodes, {summary['total_frames']} frames at {summary['fps']} fps"
          f" -> {args.out} (LeRobotDataset {summary['codebase_version']})")
    print(json.dumps(summary))
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from dataset.lerobot_import import import_lerobot

    summary = import_lerobot(args.src, args.out, require=args.require)
    for note in summary["notes"]:
        print(f"note: {note}")
    print(f"imported {summary['episodes']} episodes, {summary['frames']} frames at {summary['fps']} fps,"
          f" streams {sorted(summary['streams'])} -> {args.out}")
    print(json.dumps(summary))
    return 0


_COMMANDS = {"info": _cmd_info, "verify": _cmd_verify, "recover": _cmd_recover, "build": _cmd_build,
             "viz": _cmd_viz, "export": _cmd_export, "import": _cmd_import}

if __name__ == "__main__":
    sys.exit(main())
