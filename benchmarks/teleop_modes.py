"""Realtime against lockstep collection: do the two modes give demonstrations of the same quality?

    python -m benchmarks.teleop_modes lockstep=data/tele-wipe200 [episodes=20] [out=outputs/teleop_modes]

``lockstep`` (also given without its key) is a lockstep ``teleop.collect`` recording (the one policies train on).
This runs ``teleop.collect`` in realtime (the robot node on the wall clock, the operator's latency in wall time) with
the same task, operator settings and the first ``episodes`` seeds of that recording, then compares the two
recordings episode by episode on the same seeds: success and score, episode length, the wrist's normal force while in
contact (mean and 95th percentile; the quantity the operator regulates), and the commanded speed (mean TCP target
speed). A realtime run
of that name that is complete is reused. Prints a table; writes ``benchmarks/results/teleop_modes_<task>.json``
(``result``; the last stdout line is its summary).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bus.cli import CommandError, UsageError, command
from bus.config import compose

ROOT = Path(__file__).resolve().parent.parent
CONTACT_N = 1.0  # N: |normal force| above this counts as in contact


@dataclass
class ModesConfig:
    """``configs/benchmarks/teleop_modes.yaml``."""

    lockstep: str  # a lockstep teleop.collect recording
    episodes: int = 20
    out: str = "outputs/teleop_modes"  # where the realtime recording goes
    result: str | None = None  # the result JSON; None: benchmarks/results/teleop_modes_<task>.json

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise UsageError(f"episodes={self.episodes} must be >= 1")


def episode_stats(ep: Path) -> dict[str, Any]:
    from dataset.format import load_stream, read_meta

    meta = read_meta(ep)
    _, wrench = load_stream(ep, "wrench", meta)
    force = np.abs(wrench.reshape(wrench.shape[0], -1, 6)[:, :, 2]).max(axis=1)  # the larger arm's |Fz|
    contact = force[force > CONTACT_N]
    source = "applied_target" if "applied_target" in meta["streams"] else "action"
    t, target = load_stream(ep, source, meta)
    pos = target.reshape(target.shape[0], -1, 7)[:, :, :3]
    speed = (np.linalg.norm(np.diff(pos, axis=0), axis=-1).sum(axis=0) / max(t[-1] - t[0], 1e-9)).mean()
    outcome = meta.get("outcome") or {}
    return {"seed": meta.get("seed"), "success": bool(meta.get("success")), "score": outcome.get("score"),
            "length_s": outcome.get("sim_time"), "contact_force_mean_n": float(contact.mean()) if contact.size else 0.0,
            "contact_force_p95_n": float(np.percentile(contact, 95)) if contact.size else 0.0,
            "target_speed_m_s": float(speed)}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(k: str) -> float:
        return round(float(np.mean([r[k] for r in rows if r[k] is not None])), 4)

    return {"episodes": len(rows), "successes": sum(r["success"] for r in rows),
            **{k: mean(k) for k in ("score", "length_s", "contact_force_mean_n", "contact_force_p95_n",
                                    "target_speed_m_s")}}


@command("benchmarks.teleop_modes")
def main(argv: Sequence[str] | None = None) -> int:
    from dataset.format import list_episodes, read_meta

    args = compose(ModesConfig, "benchmarks/teleop_modes", list(sys.argv[1:] if argv is None else argv),
                   "teleop_modes", "lockstep=data/tele-wipe200 episodes=20", positional=("lockstep",))
    lock_dir = Path(args.lockstep)
    try:
        run = json.loads((lock_dir / "collect.json").read_text())
    except ValueError as e:
        raise UsageError(f"{lock_dir / 'collect.json'}: not a teleop.collect summary ({e})") from None
    if run.get("mode") != "lockstep":
        raise UsageError(f"lockstep={lock_dir}: was collected in {run.get('mode')!r} mode, not lockstep")
    task, seed = run["task"], int(run["seed"])
    out = Path(args.out) / f"{task}-realtime-{seed}-{args.episodes}"
    if not (out / "collect.json").is_file():
        cmd = [sys.executable, "-m", "teleop.collect", f"task={task}", f"episodes={args.episodes}", f"seed={seed}",
               "mode=realtime", f"cameras={str(run.get('cameras', False)).lower()}",
               f"feedback={str(run['feedback']).lower()}", f"out={out}"]
        print(f"$ {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        subprocess.run(cmd, cwd=ROOT, check=False)
    realtime = {read_meta(e)["seed"]: e for e in list_episodes(out)}
    lockstep = {read_meta(e)["seed"]: e for e in list_episodes(lock_dir)}
    seeds = sorted(s for s in realtime if s in lockstep)[: args.episodes]
    if not seeds:
        raise CommandError(f"no seed recorded in both {out} and {lock_dir}")
    rows = {"lockstep": [episode_stats(lockstep[s]) for s in seeds],
            "realtime": [episode_stats(realtime[s]) for s in seeds]}
    agree = sum(a["success"] == b["success"] for a, b in zip(rows["lockstep"], rows["realtime"], strict=True))
    result = {"benchmark": "teleop_modes", "task": task, "seeds": seeds, "lockstep_dir": str(lock_dir),
              "realtime_dir": str(out), "realtime_wall_s": json.loads((out / "collect.json").read_text()).get("wall_s"),
              "summary": {m: summarize(r) for m, r in rows.items()}, "same_outcome": agree, "episodes": rows}
    print("| mode | successes | score | length (s) | contact force mean / p95 (N) | target speed (m/s) |")
    print("|---|---|---|---|---|---|")
    for mode, s in result["summary"].items():
        print(f"| {mode} | {s['successes']}/{s['episodes']} | {s['score']:.3f} | {s['length_s']:.2f} | "
              f"{s['contact_force_mean_n']:.1f} / {s['contact_force_p95_n']:.1f} | {s['target_speed_m_s']:.4f} |")
    print(f"same outcome on {agree} of {len(seeds)} seeds")
    dest = Path(args.result) if args.result else ROOT / "benchmarks" / "results" / f"teleop_modes_{task}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "episodes"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
