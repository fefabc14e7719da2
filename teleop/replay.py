"""Replay recorded teleoperation commands open-loop in the lockstep sim and check the outcome is reproduced.

    python -m teleop.replay DIR [episodes=0,2] [score_tol=0.2]

For each committed episode: a lockstep robot node (``python -m sim.node mode=lockstep``, no cameras) is reset
with the episode's task and seed (perturbations on when the episode had one), then advanced one control step
(1 / control_hz) per tick. A tick carries the newest recorded ``action`` stamped within the step
(rounded to the nearest step start); a step with no new command carries none, so the node's watchdog and
hold logic see the same command gaps the live run had. The replay stops when the task ends, or one
second of sim time after the recorded end. ``match``: same ``success`` and ``|score - recorded| <= score_tol``.

Why open-loop in lockstep: the recording was made in realtime, where the robot applied each command at its
250 Hz tick; lockstep applies them at the 50 Hz control step, up to half a step off. Reproducing the outcome
despite that says the recorded commands, not luck in timing, carried the demonstration.

The last stdout line is JSON: ``episodes`` (one row each: recorded and replayed success/score, match) and
``all_match``; the exit code is 0 only when every episode matches.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bus.transport import Client
from teleop.collect import ANY, Child
from teleop.dataset import list_episodes, load_stream, read_meta


def recorded_outcome(episode: Path, meta: dict[str, Any]) -> tuple[bool | None, float | None, float]:
    """(success, score, end sim time) as the robot node reported them when the episode was recorded."""
    score = end = None
    if "outcome_score" in meta["streams"]:
        t, v = load_stream(episode, "outcome_score", meta)
        score, end = float(v[-1]), float(t[-1])
    if end is None:
        end = max(s["t_last"] for s in meta["streams"].values())
    return meta.get("success"), score, float(end)


def replay_episode(client: Client, episode: Path, control_hz: float = 50.0, score_tol: float = 0.2) -> dict[str, Any]:
    """Drive a lockstep robot node (``client`` connected to its tick socket) with one episode's commands."""
    meta = read_meta(episode)
    success, score, t_end = recorded_outcome(episode, meta)
    t_act, actions = load_stream(episode, "action", meta)
    n_arms = actions.shape[1] // 7
    client.request("reset", meta={"seed": int(meta["seed"])}, timeout=30.0)
    dt = 1.0 / control_hz
    # Action i goes with the control step whose start is nearest to its stamp.
    step_of = np.floor(t_act / dt + 0.5).astype(np.int64)
    k, i, reply = 0, 0, None
    while True:
        newest = None
        while i < len(step_of) and step_of[i] <= k:
            newest = i
            i += 1
        arrays = None if newest is None else {"target": actions[newest].astype(np.float64).reshape(n_arms, 7)}
        reply = client.request("tick", arrays, timeout=30.0)
        k += 1
        m = reply.meta
        if m["terminated"] or m["truncated"] or k * dt > t_end + 1.0:
            break
    replayed_success, replayed_score = bool(reply.meta["success"]), float(reply.meta["score"])
    match = replayed_success == success and (score is None or abs(replayed_score - score) <= score_tol)
    return {
        "episode": episode.name, "seed": meta["seed"], "recorded": {"success": success, "score": score, "t_end": t_end},
        "replayed": {"success": replayed_success, "score": replayed_score, "t_end": round(k * dt, 4)},
        "commands": int(len(t_act)), "match": bool(match),
    }


def replay_dataset(root: Path, episodes: Sequence[int] | None = None, score_tol: float = 0.2) -> dict[str, Any]:
    """Replay the chosen (default: all) committed episodes of ``root``; one lockstep node per task."""
    paths = list_episodes(root)
    if episodes is not None:
        paths = [p for j, p in enumerate(paths) if j in set(episodes)]
    if not paths:
        raise ValueError(f"{root}: no committed episodes to replay (selected {episodes})")
    rows = []
    log_dir = Path(root) / "logs"
    log_dir.mkdir(exist_ok=True)
    by_task: dict[tuple[str, bool], list[Path]] = {}
    for p in paths:
        meta = read_meta(p)
        perturb = (meta.get("user") or {}).get("perturbation", "none") != "none"
        by_task.setdefault((meta["task"], perturb), []).append(p)
    for (task, perturb), eps in by_task.items():
        node = Child("replay_node", [
            "sim.node", f"task={task}", "mode=lockstep", "cameras=false", f"perturb={str(perturb).lower()}",
            f"addresses.pub={ANY}", f"addresses.cmd={ANY}", f"addresses.tick={ANY}"], log_dir)
        client = None
        try:
            ready = node.expect("ready", 60.0)
            client = Client(ready["tick"])
            for p in eps:
                rows.append(replay_episode(client, p, score_tol=score_tol))
        finally:
            if client is not None:
                client.close()
            node.stop()
    return {"dataset": str(root), "episodes": rows, "all_match": all(r["match"] for r in rows)}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    root, opts = Path(args[0]), dict(a.split("=", 1) for a in args[1:] if "=" in a)
    unknown = set(opts) - {"episodes", "score_tol"}
    if unknown or len(opts) != len(args) - 1:
        print(f"teleop.replay: expected DIR [episodes=0,1] [score_tol=0.2], got {args[1:]}", file=sys.stderr)
        return 2
    episodes = [int(x) for x in opts["episodes"].split(",")] if "episodes" in opts else None
    try:
        result = replay_dataset(root, episodes, float(opts.get("score_tol", 0.2)))
    except (ValueError, subprocess.SubprocessError, RuntimeError) as exc:
        print(f"teleop.replay: {exc}", file=sys.stderr)
        return 2
    for r in result["episodes"]:
        print(f"{r['episode']}: recorded {r['recorded']}, replayed {r['replayed']} -> "
              f"{'match' if r['match'] else 'MISMATCH'}", file=sys.stderr)
    print(json.dumps(result))
    return 0 if result["all_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
