"""Replay a recording open-loop in the lockstep sim and check the outcome is reproduced.

    python -m teleop.replay DIR [episodes=[0,2]] [score_tol=0.2] [source=auto|applied|commands]   (DIR: data=DIR)

For each committed episode: a lockstep robot node (``python -m sim.node mode=lockstep``, no cameras) is reset
with the episode's task and seed (perturbations on when the episode had one), then driven with what the live
robot did. The replay stops when the task ends, or one second of sim time after the recorded end.
``match``: same ``success`` and ``|score - recorded| <= score_tol``.

Two sources (``source=auto``, the default, takes the first the recording has):

- ``applied_target`` (``mode: applied``): each target the live robot node's controllers took, stamped with the
  start of the node tick that took it. The replay advances one node tick (250 Hz) per request and sends, from
  the tick of the first one on, the newest applied target as that tick's command. The node then sets the same
  targets at the same ticks as the live run, so physics, sensor noise and the outcome repeat exactly: ``match``
  also needs the replayed TCP track within 1 um of the recorded one (``tcp_max_dev_m``), and a mismatch
  means the sim is not deterministic, not that timing was unlucky.
- ``action`` (``mode: commands``; recordings made before the robot published ``applied``): each command the
  teleop node sent, stamped with its send time. One control step (1 / control_hz) per request carries the
  newest command stamped within it (rounded to the nearest step start). Approximate: the live robot applied
  each command on arrival, after the operator's network latency, at its 250 Hz tick; an outcome near a
  threshold (a lift squeeze) can flip.

The last stdout line is JSON: ``episodes`` (one row each: mode, recorded and replayed success/score, match)
and ``all_match``; the exit code is 0 only when every episode matches.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bus.cli import CommandError, UsageError, choose, command
from bus.config import compose, override
from bus.process import Child
from bus.transport import Client
from dataset.format import list_episodes, load_stream, read_meta
from teleop.collect import ANY

SOURCES = ("auto", "applied", "commands")
TCP_TOL_M = 1e-6  # applied replays repeat the recorded TCP track to float precision (it is stored as float64)


def recorded_outcome(episode: Path, meta: dict[str, Any]) -> tuple[bool | None, float | None, float]:
    """(success, score, end sim time) as the robot node reported them when the episode was recorded."""
    score = end = None
    outcome = meta.get("outcome") or {}
    if isinstance(outcome.get("score"), (int, float)):
        score = float(outcome["score"])
        end = float(outcome["sim_time"]) if isinstance(outcome.get("sim_time"), (int, float)) else None
    elif "outcome_score" in meta["streams"]:  # recordings made before the outcome moved to the metadata
        t, v = load_stream(episode, "outcome_score", meta)
        score, end = float(v[-1]), float(t[-1])
    if end is None:
        end = max(s["t_last"] for s in meta["streams"].values())
    return meta.get("success"), score, float(end)


def replay_episode(client: Client, episode: Path, control_hz: float = 50.0, tick_hz: float = 250.0,
                   score_tol: float = 0.2, source: str = "auto") -> dict[str, Any]:
    """Drive a lockstep robot node (``client`` connected to its tick socket) with one episode's recording."""
    meta = read_meta(episode)
    success, score, t_end = recorded_outcome(episode, meta)
    choose("source", source, SOURCES, "replay source")
    has_applied = "applied_target" in meta["streams"]
    if source == "applied" and not has_applied:
        raise ValueError(f"{episode}: no applied_target stream (recorded before the robot node published it); "
                         "use source=commands")
    applied = has_applied and source != "commands"
    if applied:  # one node tick per request; target k is applied from its own tick on
        dt, tick_meta = 1.0 / tick_hz, {"node_ticks": 1}
        t_cmd, targets = load_stream(episode, "applied_target", meta)
        step_of = np.round(t_cmd / dt).astype(np.int64)
    else:  # one control step per request; action i goes with the step whose start is nearest to its stamp
        dt, tick_meta = 1.0 / control_hz, None
        t_cmd, targets = load_stream(episode, "action", meta)
        step_of = np.floor(t_cmd / dt + 0.5).astype(np.int64)
    n_arms = targets[0].size // 7
    # The recorded TCP track by node tick, to compare the replayed one with (states are stamped after their tick).
    t_tcp, tcp = load_stream(episode, "tcp_pos", meta)
    tcp_at = dict(zip(np.round(t_tcp * tick_hz).astype(np.int64).tolist(), tcp, strict=True))
    dev, compared = 0.0, 0
    client.request("reset", meta={"seed": int(meta["seed"])}, timeout=30.0)
    k, i, current, reply = 0, 0, None, None
    while True:
        newest = None
        while i < len(step_of) and step_of[i] <= k:
            newest = i
            i += 1
        if newest is not None:
            current = targets[newest].astype(np.float64).reshape(n_arms, 7)
        # Applied targets are re-sent every tick (the node's watchdog must not trip where the live one did not:
        # a live hold is itself an applied target); commands only on the steps that had one, as recorded.
        send = applied or newest is not None
        reply = client.request("tick", {"target": current} if send and current is not None else None,
                               meta=tick_meta, timeout=30.0)
        if reply.topic != "tick":
            raise RuntimeError(f"{episode.name}: the replay node refused a tick: {reply.meta.get('reason')}")
        k += 1
        m = reply.meta
        recorded_tcp = tcp_at.get(round(m["sim_time"] * tick_hz))
        if recorded_tcp is not None:
            compared += 1
            dev = max(dev, float(np.abs(reply.arrays["tcp_pos"] - recorded_tcp).max()))
        if m["terminated"] or m["truncated"] or k * dt > t_end + 1.0:
            break
    replayed_success, replayed_score = bool(reply.meta["success"]), float(reply.meta["score"])
    match = replayed_success == success and (score is None or abs(replayed_score - score) <= score_tol)
    if applied:  # the same targets at the same ticks: the track itself must repeat
        match = match and compared > 0 and dev <= TCP_TOL_M
    return {
        "episode": episode.name, "seed": meta["seed"], "mode": "applied" if applied else "commands",
        "recorded": {"success": success, "score": score, "t_end": t_end},
        "replayed": {"success": replayed_success, "score": replayed_score, "t_end": round(k * dt, 4)},
        "commands": int(len(t_cmd)), "tcp_compared": compared, "tcp_max_dev_m": dev, "match": bool(match),
    }


def replay_dataset(root: Path, episodes: Sequence[int] | None = None, score_tol: float = 0.2,
                   source: str = "auto") -> dict[str, Any]:
    """Replay the chosen (default: all) committed episodes of ``root``; one lockstep node per task."""
    paths = list_episodes(root)
    if episodes is not None:
        paths = [p for j, p in enumerate(paths) if j in set(episodes)]
    if not paths:
        raise UsageError(f"{root}: no committed episodes to replay (selected {episodes})")
    rows = []
    log_dir = Path(root) / "logs"
    log_dir.mkdir(exist_ok=True)
    by_task: dict[tuple[str, bool], list[Path]] = {}
    for p in paths:
        meta = read_meta(p)
        perturb = (meta.get("user") or {}).get("perturbation", "none") != "none"
        by_task.setdefault((meta["task"], perturb), []).append(p)
    for (task, perturb), eps in by_task.items():
        args = {"task": task, "mode": "lockstep", "cameras": False, "perturb": perturb, "addresses.pub": ANY,
                "addresses.cmd": ANY, "addresses.tick": ANY}
        node = Child("replay_node", "sim.node", [override(k, v) for k, v in args.items()],
                     log_dir / "replay_node.log", session=False)
        client = None
        try:
            ready = node.wait_ready(60.0)
            client = Client(ready["tick"])
            for p in eps:
                rows.append(replay_episode(client, p, tick_hz=float(ready["tick_hz"]), score_tol=score_tol,
                                           source=source))
        finally:
            if client is not None:
                client.close()
            node.stop(timeout=30.0)
    return {"dataset": str(root), "episodes": rows, "all_match": all(r["match"] for r in rows)}


@dataclass
class ReplayOptions:
    """``configs/teleop/replay.yaml``."""

    data: str
    episodes: list[int] = field(default_factory=list)  # positions among the committed episodes; [] = all
    score_tol: float = 0.2
    source: str = "auto"

    def __post_init__(self) -> None:
        choose("source", self.source, SOURCES, "replay source")


@command("teleop.replay")
def main(argv: Sequence[str] | None = None) -> int:
    opts = compose(ReplayOptions, "teleop/replay", list(sys.argv[1:] if argv is None else argv), "replay",
                   "DIR episodes=[0,2]", positional=("data",))
    try:
        result = replay_dataset(Path(opts.data), list(opts.episodes) or None, opts.score_tol, opts.source)
    except (subprocess.SubprocessError, RuntimeError) as exc:  # the lockstep robot node failed
        raise CommandError(str(exc)) from exc
    for r in result["episodes"]:
        print(f"{r['episode']} ({r['mode']}): recorded {r['recorded']}, replayed {r['replayed']}, TCP track "
              f"within {r['tcp_max_dev_m'] * 1e3:.3f} mm -> {'match' if r['match'] else 'MISMATCH'}", file=sys.stderr)
    print(json.dumps(result))
    return 0 if result["all_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
