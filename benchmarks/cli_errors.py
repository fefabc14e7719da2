"""Bad command lines against every command-line entry point: does each fail in one clear line?

    python -m benchmarks.cli_errors [only=[sim.eval,rdp.run]] [timeout=120] [out=FILE]

Builds its inputs in a temporary directory (a one-episode recorded dataset and damaged copies of it, copies of
the shipped wipe checkpoint with a truncated ``run.json``, a ``run.json`` whose ``horizon`` / ``action_dim`` do not
match the weights, one without ``horizon``, truncated weights), then runs each command as its own process from
that directory (``SLOWFAST_DEBUG`` unset) and records: the exit code, how many lines it wrote to stderr, whether
a Python traceback appeared, and the first and last line it printed (stderr, or stdout when stderr is empty).

A row is ``one-line`` when the command failed (exit code not 0) with exactly one stderr line and no traceback;
``accepted`` when it exited 0 (a bad command line that ran); ``timeout`` when it ran past ``timeout``. Prints the
table; writes ``benchmarks/results/cli_errors.json``; the last stdout line is that JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.report import publish
from bus.cli import UsageError, command
from bus.config import compose

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "checkpoints" / "wipe" / "rdp"

# (module, arguments, what is wrong). "$T" is the temporary directory holding the inputs, "$ROOT" the repository.
CASES: list[tuple[str, list[str], str]] = [
    ("sim.eval", ["task=nosuch"], "unknown task"),
    ("sim.eval", ["policy=nosuch"], "unknown policy"),
    ("sim.eval", ["sensors=nosuch"], "unknown sensors option"),
    ("sim.eval", ["episodes=abc"], "not a number"),
    ("sim.eval", ["episodes=0"], "number out of range"),
    ("sim.eval", ["nosuchkey=1"], "unknown key"),
    ("sim.eval", ["task.nosuch=1"], "unknown nested key"),
    ("sim.eval", ["perturb=maybe", "episodes=1", "video=false"], "not a boolean"),
    ("sim.eval", ["task.perturbations=[nosuch]", "episodes=1", "video=false"], "unknown perturbation kind"),
    ("sim.eval", ["policy=rdp", "policy.checkpoint=$T/missing"], "missing checkpoint directory"),
    ("sim.eval", ["policy=rdp", "policy.checkpoint=$T/run_truncated"], "truncated run.json"),
    ("sim.eval", ["policy=rdp", "policy.checkpoint=$T/run_mismatch", "episodes=1", "video=false"],
     "run.json horizon 64 / action_dim 7 against 32 / 10 weights"),
    ("sim.eval", ["policy=rdp", "policy.checkpoint=$T/run_no_horizon"], "run.json without horizon"),
    ("sim.eval", ["policy=rdp", "policy.checkpoint=$T/run_bad_weights"], "truncated weights"),
    ("sim.eval", ["task=peel", "policy=rdp", "policy.checkpoint=$ROOT/checkpoints/wipe/rdp"], "run of another task"),
    ("sim.eval", ["task=wipe", "policy=dp_tactile"], "no shipped run for the policy"),
    ("sim.eval", ["policy=rdp", "policy.handover=nosuch"], "unknown hand-over"),
    ("sim.eval", ["policy=rdp", "policy.latency_s=abc"], "not a number (policy key)"),
    ("sim.demo", ["episodes=abc"], "not a number"),
    ("rdp.train", ["task=wipe", "policy=rdp", "out=$T/train0"], "data= missing"),
    ("rdp.train", ["task=nosuch", "data=$T/ds", "out=$T/train1"], "unknown task"),
    ("rdp.train", ["data=$T/missing", "out=$T/train2"], "missing dataset"),
    ("rdp.train", ["data=$T/ds", "out=$T/train3", "batch_size=abc"], "not a number"),
    ("rdp.train", ["data=$T/ds", "out=$T/train4", "resume=true"], "resume without a run"),
    ("rdp.train", ["data=$T/ds_no_streams", "out=$T/train5"], "damaged dataset"),
    ("rdp.train", ["data=$T/ds", "out=$T/run_mismatch"], "out holds a run"),
    ("rdp.compare", ["episodes=abc"], "not a number"),
    ("rdp.compare", ["nosuch=1"], "unknown key"),
    ("rdp.compare", ["tasks=nosuch", "out=$T/compare"], "unknown task"),
    ("rdp.agreement", ["tolerance=2"], "number out of range"),
    ("rdp.agreement", ["tasks=nosuch", "out=$T/agreement"], "unknown task"),
    ("rdp.checkpoint", ["$T/run_mismatch"], "run.json against its weights"),
    ("rdp.run", ["task=nosuch"], "unknown task"),
    ("rdp.run", ["mode=nosuch"], "unknown mode"),
    ("rdp.run", ["episodes=abc"], "not a number"),
    ("rdp.run", ["nosuchkey=1"], "unknown key"),
    ("rdp.run", ["checkpoint=$T/run_truncated", "mode=lockstep", "out=$T/runtime"], "truncated run.json"),
    ("teleop.collect", ["episodes=abc", "out=$T/collect"], "not a number"),
    ("teleop.collect", ["task=nosuch", "out=$T/collect"], "unknown task"),
    ("dataset", ["info", "$T/ds_no_streams"], "meta.json without streams"),
    ("dataset", ["info", "$T/missing"], "missing dataset"),
    ("dataset", ["build", "$T/ds", "rate=abc", "out=$T/built"], "not a number"),
    ("dataset", ["build", "$T/ds_torn", "rate=25", "out=$T/built_torn"], "torn chunk"),
    ("dataset", ["export", "$T/ds", "format=nosuch", "out=$T/export"], "unknown format"),
    ("teleop.replay", ["$T/missing"], "missing dataset"),
    ("teleop.replay", ["$T/ds", "episodes=x"], "not a number"),
    ("teleop.record_expert", ["task=nosuch", "episodes=1", "out=$T/rec"], "unknown task"),
    ("teleop.record_expert", ["episodes=two", "out=$T/rec"], "not a number"),
    ("teleop.operators", ["nosuch"], "unknown operator"),
    ("teleop.operators", ["scripted", "latency_ms=abc"], "not a list of numbers"),
    ("sim.press_dataset", ["fit", "episodes=abc"], "not a number"),
    ("sim.press_dataset", ["fit", "--episodes", "3"], "a flag instead of an override"),
    ("bus.keys", ["generate", "$T/a_file"], "a file where a directory belongs"),
    ("bus.keys", ["nosuch", "$T/keys"], "unknown command"),
    ("sim.node", ["task=nosuch"], "unknown task"),
    ("sim.node", ["watchdog_ms=abc"], "not a number"),
    ("teleop.node", ["web.port=abc"], "not a number"),
    ("rdp.runtime.slow", ["task=wipe"], "no addresses"),
    ("benchmarks.sim_speed", ["seconds=abc"], "not a number"),
    ("benchmarks.fuzz_nodes", ["only=[nosuch]"], "unknown socket kind"),
    ("benchmarks.teleop_modes", ["lockstep=$T/ds"], "a recording without collect.json"),
]


def make_inputs(tmp: Path) -> None:
    """The damaged files the cases point at, built from a fresh one-episode recording and the shipped run."""
    env = _env()
    subprocess.run([sys.executable, "-m", "teleop.record_expert", "task=wipe", "episodes=1", "max_steps=30",
                    f"out={tmp / 'ds'}", "progress=false"], cwd=tmp, env=env, check=True, capture_output=True)
    for name in ("ds_no_streams", "ds_torn"):
        shutil.copytree(tmp / "ds", tmp / name)
    meta_path = tmp / "ds_no_streams" / "episode_000000" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["streams"]
    meta_path.write_text(json.dumps(meta))
    chunk = tmp / "ds_torn" / "episode_000000" / "wrench.000000.npz"
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])

    for name in ("run_truncated", "run_mismatch", "run_no_horizon", "run_bad_weights"):
        shutil.copytree(SHIPPED, tmp / name)
    text = (SHIPPED / "run.json").read_text()
    (tmp / "run_truncated" / "run.json").write_text(text[: len(text) // 2])
    run = json.loads(text)
    (tmp / "run_mismatch" / "run.json").write_text(json.dumps({**run, "horizon": 64, "action_dim": 7}, indent=1))
    (tmp / "run_no_horizon" / "run.json").write_text(json.dumps({k: v for k, v in run.items() if k != "horizon"}))
    weights = tmp / "run_bad_weights" / "policy" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    (tmp / "a_file").write_text("not a directory\n")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SLOWFAST_DEBUG", "HYDRA_FULL_ERROR")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("PYOPENGL_PLATFORM", "egl")
    return env


def run_case(module: str, args: list[str], tmp: Path, timeout: float) -> dict:
    argv = [a.replace("$T", str(tmp)).replace("$ROOT", str(ROOT)) for a in args]
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", module, *argv], cwd=tmp, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=os.setpgrp)
    try:
        out, err = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own process group: the launcher's children too
        out, err = proc.communicate()
        code = None
    lines = [line for line in err.splitlines() if line.strip()]
    shown = [_placeholders(line, tmp) for line in lines or [line for line in out.splitlines() if line.strip()]]
    traceback = "Traceback (most recent call last)" in err
    if code is None:
        verdict = "timeout"
    elif code == 0:
        verdict = "accepted"
    elif len(lines) == 1 and not traceback:
        verdict = "one-line"
    else:
        verdict = "traceback" if traceback else "multi-line"
    return {"command": " ".join(["python -m", module, *args]), "exit_code": code, "stderr_lines": len(lines),
            "traceback": traceback, "verdict": verdict, "first_line": _clip(shown[0] if shown else ""),
            "last_line": _clip(shown[-1] if shown else ""), "seconds": round(time.monotonic() - t0, 2)}


def _placeholders(line: str, tmp: Path) -> str:
    """The line with the temporary directory and the repository written as in the commands: $T, $ROOT."""
    return line.replace(str(tmp.resolve()), "$T").replace(str(tmp), "$T").replace(str(ROOT), "$ROOT")


def _clip(line: str, limit: int = 400) -> str:
    line = line.strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


@dataclass
class CliErrorsConfig:
    """``configs/benchmarks/cli_errors.yaml``."""

    only: list[str] = field(default_factory=list)  # modules to run; empty: all
    timeout: float = 120.0  # seconds per command
    out: str = "benchmarks/results/cli_errors.json"

    def __post_init__(self) -> None:
        modules = {module for module, _, _ in CASES}
        unknown = sorted(set(self.only) - modules)
        if unknown:
            raise UsageError(f"only={unknown[0]}: no case for this module; choose from {', '.join(sorted(modules))}")
        if self.timeout <= 0:
            raise UsageError(f"timeout={self.timeout} must be > 0")


@command("benchmarks.cli_errors")
def main(argv: Sequence[str] | None = None) -> int:
    args = compose(CliErrorsConfig, "benchmarks/cli_errors", list(sys.argv[1:] if argv is None else argv),
                   "cli_errors", "only=[sim.eval,bus.keys] timeout=60")
    only = set(args.only)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cli-errors-") as name:
        tmp = Path(name)
        make_inputs(tmp)
        for module, case_args, what in CASES:
            if only and module not in only:
                continue
            row = {"what": what, **run_case(module, case_args, tmp, args.timeout)}
            rows.append(row)
            print(f"{row['verdict']:10} exit {str(row['exit_code']):>4}  {row['stderr_lines']:3d} lines  "
                  f"{row['command']}\n{'':12}{row['last_line']}", flush=True)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    print(f"{len(rows)} bad command lines: " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items())))
    report = {"benchmark": "cli_errors", "commands": len(rows), "verdicts": counts,
              "command": "python -m benchmarks.cli_errors", "cases": rows}
    publish(report, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
