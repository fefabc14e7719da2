"""Behaviour fingerprint of the shipped checkpoints: does a code change alter what the robot is told to do?

    python -m benchmarks.behaviour_digest out=F.json [tasks=[wipe,peel,lift]] [runs=[rdp,dp,...]]
        [digest_episodes=5] [eval_episodes=20] [eval_runs=[rdp]]
    python -m benchmarks.behaviour_digest compare=[BEFORE.json,AFTER.json]

For every shipped run (``checkpoints/<task>/<run>``) it runs the process graph in lockstep (``python -m rdp.run
mode=lockstep``, seeds 0 .. N-1) and keeps the fast node's ``cmd_digest``, a hash of every command it sent, and each
episode's outcome; for the ``eval_runs`` it also keeps ``python -m sim.eval``'s per-episode outcomes. Lockstep is
deterministic, so two code versions that drive the robot identically give equal digests; ``compare`` prints every
cell that differs and exits 1 if any does. Run it on both commits (a ``git worktree`` of the older one) with the
same checkpoints. Resumable: cells already in ``out`` are kept.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bus.cli import UsageError, command
from bus.config import compose

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class DigestConfig:
    """``configs/benchmarks/behaviour_digest.yaml``."""

    out: str | None = None  # the digest JSON to write (required unless compare is given)
    compare: list[str] = field(default_factory=list)  # [BEFORE.json, AFTER.json]: compare two digests instead
    tasks: list[str] = field(default_factory=lambda: ["wipe", "peel", "lift"])
    runs: list[str] | None = None  # shipped runs; None: every one of the task
    digest_episodes: int = 5
    eval_episodes: int = 20
    eval_runs: list[str] = field(default_factory=lambda: ["rdp"])  # runs whose sim.eval outcomes are kept

    def __post_init__(self) -> None:
        if self.compare and len(self.compare) != 2:
            raise UsageError(f"compare=[{','.join(self.compare)}]: expected two files, compare=[BEFORE,AFTER]")
        if not self.compare and not self.out:
            raise UsageError("out=... is required (the digest file to write), or compare=[BEFORE,AFTER]")
        if self.digest_episodes < 1 or self.eval_episodes < 1:
            raise UsageError(f"digest_episodes={self.digest_episodes} and eval_episodes={self.eval_episodes} "
                             "must be >= 1")


def _last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError("no JSON summary line in the output")


def _run(argv: list[str], log: Path) -> str:
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"),
               PYOPENGL_PLATFORM=os.environ.get("PYOPENGL_PLATFORM", "egl"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} ... exited {proc.returncode}; log: {log}")
    return proc.stdout


def digest_cell(task: str, run: str, episodes: int, work: Path) -> dict:
    out = work / f"run-{task}-{run}"
    stdout = _run(["rdp.run", f"task={task}", f"policy={run}", "mode=lockstep", f"episodes={episodes}", "seed=0",
                   "video=false", f"out={out}"], work / f"run-{task}-{run}.log")
    summary = _last_json(stdout)
    detail = json.loads((out / "results.json").read_text())["episodes_detail"]
    return {"cmd_digest": summary["fast"]["cmd_digest"],
            "outcomes": [[e["seed"], bool(e["success"]), e.get("failure")] for e in detail]}


def eval_cell(task: str, run: str, episodes: int, work: Path) -> dict:
    out = work / f"eval-{task}-{run}"
    _run(["sim.eval", f"task={task}", f"policy={run}", f"episodes={episodes}", "seed=0", f"out={out}"],
         work / f"eval-{task}-{run}.log")
    detail = json.loads((out / "results.json").read_text())["episodes_detail"]
    return {"outcomes": [[e["seed"], bool(e["success"]), round(float(e["score"]), 6)] for e in detail]}


def shipped_runs(task: str) -> list[str]:
    root = ROOT / "checkpoints" / task
    return sorted(p.name for p in root.iterdir() if (p / "run.json").is_file())


def compare(a_path: Path, b_path: Path) -> int:
    """Cells present in both files are compared; a cell in one only is listed, not counted as a difference."""
    a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))
    for n in ("digest_episodes", "eval_episodes"):
        if a.get(n) != b.get(n):
            print(f"refused: {n} differs ({a.get(n)} vs {b.get(n)}); the digests cover different episodes",
                  file=sys.stderr)
            return 2
    diffs, same, single = [], 0, []
    for kind in ("digest", "eval"):
        for key in sorted(set(a[kind]) | set(b[kind])):
            if key not in a[kind] or key not in b[kind]:
                single.append(f"{kind} {key}")
            elif a[kind][key] != b[kind][key]:
                diffs.append(f"{kind} {key}: {a[kind][key]} != {b[kind][key]}")
            else:
                same += 1
    for d in diffs:
        print("DIFFERS", d)
    if single:
        print("in one file only (not compared):", ", ".join(single))
    print(json.dumps({"same": same, "differ": len(diffs), "before": a.get("commit"), "after": b.get("commit")}))
    return 1 if diffs else 0


@command("benchmarks.behaviour_digest")
def main(argv: Sequence[str] | None = None) -> int:
    args = compose(DigestConfig, "benchmarks/behaviour_digest", list(sys.argv[1:] if argv is None else argv),
                   "behaviour_digest", "out=F.json tasks=[wipe]")
    if args.compare:
        return compare(*map(Path, args.compare))
    assert args.out is not None  # __post_init__: out or compare
    out = Path(args.out)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    result = json.loads(out.read_text()) if out.is_file() else {"digest": {}, "eval": {}}
    result.update(commit=commit, dirty=dirty, digest_episodes=args.digest_episodes,
                  eval_episodes=args.eval_episodes)
    eval_runs = args.eval_runs
    with tempfile.TemporaryDirectory(prefix="behaviour-") as tmp:
        work = Path(tmp)
        for task in args.tasks:
            runs = args.runs or shipped_runs(task)
            cells = [("digest", task, r) for r in runs] + [("eval", task, r) for r in eval_runs if r in runs]
            for kind, t, run in cells:
                key = f"{t}/{run}"
                if key in result[kind]:
                    continue
                t0 = time.monotonic()
                cell = (digest_cell(t, run, args.digest_episodes, work) if kind == "digest"
                        else eval_cell(t, run, args.eval_episodes, work))
                result[kind][key] = cell
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(result, indent=1) + "\n")
                ok = sum(o[1] for o in cell["outcomes"])
                print(f"{kind:6s} {key:18s} {ok}/{len(cell['outcomes'])} ok  {cell.get('cmd_digest', '')[:12]}"
                      f"  {time.monotonic() - t0:.0f} s", flush=True)
    print(json.dumps({"out": str(out), "digest": len(result["digest"]), "eval": len(result["eval"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
