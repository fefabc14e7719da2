"""Choose a trained run's sampling temperature on validation seeds and store it in its ``run.json``.

    python -m rdp.temperature task=lift policy=dp                 # the shipped checkpoints/lift/dp
    python -m rdp.temperature task=wipe checkpoint=RUN [candidates=[0,1]] [episodes=20] [seed=1000] [out=DIR]

The temperature (``noise_scale``: DDIM's start noise times this; 1 samples the learned distribution, 0 plans from the
prior's mean) changes what a diffusion policy does more than many training options: on lift, DP trained on the
teleoperated demonstrations succeeds on every validation seed at 0 and on none at 1. So each run gets the one that
works for it, chosen fairly: ``python -m sim.eval`` per candidate on the validation seeds ``seed .. seed+episodes-1``
(1000-1019 by default, never the test seeds 0-49), the highest success wins (a tie keeps the method's default,
``rdp.api.Method.noise_scale``), and ``run.json`` gets ``inference: {noise_scale, chosen_on}`` with every
candidate's result. ``sim.eval``, ``rdp.run`` and ``rdp.compare`` then use it unless a temperature is given
explicitly. Writes ``OUT/<task>-<run>.json`` too; the last stdout line is its JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bus.cli import UsageError, command
from bus.config import compose, override
from rdp.compare import run_sensors

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class TemperatureConfig:
    """``configs/rdp/temperature.yaml``."""

    task: str = ""
    policy: str = ""  # a shipped run name (checkpoints/<task>/<policy>) when no checkpoint is given
    checkpoint: str = ""
    sensors: str = ""  # sim.eval's sensors; empty: vision for a run that reads cameras (images, perception)
    candidates: list[float] = field(default_factory=lambda: [0.0, 1.0])
    episodes: int = 20
    seed: int = 1000
    out: str = "results/temperature"


def choose_temperature(results: dict[float, float], default: float) -> float:
    """Candidate -> validation success; the best one, the method's default on a tie with it, else the lowest."""
    best = max(results.values())
    winners = sorted(t for t, s in results.items() if s == best)
    return default if default in winners else winners[0]


def _eval(task: str, checkpoint: Path, policy: str, noise: float, cfg: TemperatureConfig, work: Path) -> float:
    out = work / f"ns{noise:g}"
    values = {"task": task, "policy": policy, "policy.checkpoint": str(checkpoint), "policy.noise_scale": noise,
              "episodes": cfg.episodes, "seed": cfg.seed, "out": str(out), "video": False}
    run = json.loads((checkpoint / "run.json").read_text())
    sensors = cfg.sensors or run_sensors(run)
    if sensors:
        values["sensors"] = sensors
    if "goal" in run.get("obs_keys", ()):  # a goal-conditioned run: validated over the task's goals
        values["task.goal"] = "random"
    cmd = [sys.executable, "-m", "sim.eval", *(override(k, v) for k, v in values.items())]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **{k: "1" for k in THREAD_VARS}})
    if proc.returncode != 0:
        raise RuntimeError(f"sim.eval at noise_scale={noise:g} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return float(json.loads((out / "results.json").read_text())["success_rate"])


def write_inference(run_dir: Path, inference: dict) -> None:
    """Replace ``run.json``'s ``inference`` section, atomically (a crash leaves the old file whole)."""
    from dataset.durable import write_file_durably

    path = run_dir / "run.json"
    run = json.loads(path.read_text())
    run["inference"] = inference
    tmp = path.with_name(".run.json.tmp")
    write_file_durably(tmp, (json.dumps(run, indent=1) + "\n").encode())
    os.replace(tmp, path)


@command("rdp.temperature")
def main(argv: Sequence[str] | None = None) -> int:
    from rdp.api import get_method
    from rdp.checkpoint import load_run_info
    from rdp.inference import shipped_run

    cfg = compose(TemperatureConfig, "rdp/temperature", list(sys.argv[1:] if argv is None else argv), "temperature",
                  "task=lift policy=dp")
    if not cfg.task or not (cfg.policy or cfg.checkpoint):
        raise UsageError("need task=T and policy=NAME (a shipped run) or checkpoint=RUN")
    if cfg.episodes < 1 or cfg.seed < 50:
        raise UsageError(f"episodes must be >= 1 and seed >= 50 (seeds 0-49 are the test seeds), got "
                         f"{cfg.episodes}, {cfg.seed}")
    candidates = sorted(set(cfg.candidates))
    if not candidates or min(candidates) < 0:
        raise UsageError(f"candidates must be numbers >= 0, got {list(cfg.candidates)}")
    run_dir = Path(cfg.checkpoint) if cfg.checkpoint else shipped_run(cfg.task, cfg.policy)
    run = load_run_info(run_dir)
    method = get_method(run["method"])
    policy = cfg.policy or run["method"]
    results: dict[float, float] = {}
    with tempfile.TemporaryDirectory(prefix="temperature-") as tmp:
        for noise in candidates:
            results[noise] = _eval(cfg.task, run_dir, policy, noise, cfg, Path(tmp))
            print(f"{cfg.task} {run_dir.name}: noise_scale {noise:g} -> {results[noise]:.2f} on seeds {cfg.seed}-"
                  f"{cfg.seed + cfg.episodes - 1}", flush=True)
    chosen = choose_temperature(results, method.noise_scale)
    inference = {"noise_scale": chosen, "chosen_on": {
        "seeds": [cfg.seed, cfg.seed + cfg.episodes - 1], "success": {f"{t:g}": s for t, s in results.items()},
        "command": f"python -m rdp.temperature task={cfg.task} " + (f"checkpoint={cfg.checkpoint}" if cfg.checkpoint
                                                                     else f"policy={cfg.policy}")
        + (f" sensors={cfg.sensors}" if cfg.sensors else "")
        + (f" episodes={cfg.episodes}" if cfg.episodes != TemperatureConfig.episodes else "")
        + (f" seed={cfg.seed}" if cfg.seed != TemperatureConfig.seed else "")
        + (f" candidates=[{','.join(f'{t:g}' for t in candidates)}]" if candidates != [0.0, 1.0] else "")}}
    write_inference(run_dir, inference)
    summary = {"task": cfg.task, "run": str(run_dir), "method": run["method"], **inference}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{cfg.task}-{run_dir.name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
