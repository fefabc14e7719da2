"""Behaviour fingerprint of the shipped checkpoints: does a code change alter what the robot is told to do?

    python -m benchmarks.behaviour_digest --out F.json [--tasks wipe,peel,lift] [--runs rdp,dp,...]
        [--digest-episodes 5] [--eval-episodes 20] [--eval-runs rdp]
    python -m benchmarks.behaviour_digest --compare BEFORE.json AFTER.json

For every shipped run (``checkpoints/<task>/<run>``) it runs the process graph in lockstep (``python -m rdp.run
mode=lockstep``, seeds 0 .. N-1) and keeps the fast node's ``cmd_digest``, a hash of every command it sent, and each
episode's outcome; for the ``--eval-runs`` it also keeps ``python -m sim.eval``'s per-episode outcomes. Lockstep is
deterministic, so two code versions that drive the robot identically give equal digests; ``--compare`` prints every
cell that differs and exits 1 if any does. Run it on both commits (a ``git worktree`` of the older one) with the
same checkpoints. Resumable: cells already in ``--out`` are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.behaviour_digest", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path)
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    p.add_argument("--tasks", default="wipe,peel,lift")
    p.add_argument("--runs", default=None, help="comma-separated shipped runs (default: every one of the task)")
    p.add_argument("--digest-episodes", type=int, default=5)
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--eval-runs", default="rdp", help="runs whose sim.eval outcomes are kept ('' for none)")
    args = p.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if args.out is None:
        p.error("--out is required (or --compare BEFORE AFTER)")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    result = json.loads(args.out.read_text()) if args.out.is_file() else {"digest": {}, "eval": {}}
    result.update(commit=commit, dirty=dirty, digest_episodes=args.digest_episodes,
                  eval_episodes=args.eval_episodes)
    eval_runs = [r for r in args.eval_runs.split(",") if r]
    with tempfile.TemporaryDirectory(prefix="behaviour-") as tmp:
        work = Path(tmp)
        for task in args.tasks.split(","):
            runs = args.runs.split(",") if args.runs else shipped_runs(task)
            cells = [("digest", task, r) for r in runs] + [("eval", task, r) for r in eval_runs if r in runs]
            for kind, t, run in cells:
                key = f"{t}/{run}"
                if key in result[kind]:
                    continue
                t0 = time.monotonic()
                cell = (digest_cell(t, run, args.digest_episodes, work) if kind == "digest"
                        else eval_cell(t, run, args.eval_episodes, work))
                result[kind][key] = cell
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(result, indent=1) + "\n")
                ok = sum(o[1] for o in cell["outcomes"])
                print(f"{kind:6s} {key:18s} {ok}/{len(cell['outcomes'])} ok  {cell.get('cmd_digest', '')[:12]}"
                      f"  {time.monotonic() - t0:.0f} s", flush=True)
    print(json.dumps({"out": str(args.out), "digest": len(result["digest"]), "eval": len(result["eval"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
