"""The sim adapter's chunk bookkeeping: relative actions, simulated latency and latency matching."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rdp.api import Planner
from rdp.data import ACTION_DIM, cond_features, cond_parts, env_to_policy_action, shift_positions
from rdp.inference import SimPolicy
from rdp.methods.dp import ActionChunkDecoder, ActionCodec

HORIZON = 16


class _CountingSlow:
    """A stand-in slow policy: chunk entry i has x = 10 * plan + i, so every executed action names its source."""

    def __init__(self) -> None:
        self.plans = 0
        self.cfg = SimpleNamespace(target_shape=(HORIZON, ACTION_DIM))

    def eval(self) -> _CountingSlow:
        return self

    def predict(self, obs, generator=None, num_inference_steps=None, noise_scale=1.0) -> torch.Tensor:
        base = env_to_policy_action(np.array([0.0, 0.0, 0.0, np.pi, 0.0, 0.0, 0.04]))
        chunk = np.tile(base, (HORIZON, 1)).astype(np.float32)
        chunk[:, 0] = 10.0 * self.plans + np.arange(HORIZON)
        self.plans += 1
        return torch.from_numpy(chunk)[None]


def _dp_policy(run: dict, slow, replan_every: int, num_inference_steps=None, seed: int = 0, **latency) -> SimPolicy:
    """The sim adapter of a dp run around a stand-in slow model: a planner and dp's chunk-indexing decoder."""
    return SimPolicy(Planner(run, slow, ActionCodec(run), num_inference_steps, seed=seed), ActionChunkDecoder(run),
                     replan_every, **latency)


def _run(frame: str = "absolute") -> dict:
    return {"method": "dp", "horizon": HORIZON, "rate_hz": 25.0, "obs_steps": 2, "obs_keys": ["proprio"], "num_arms": 1,
            "num_pads": 3, "tactile_embedding": "default", "action_frame": frame, "action_dim": ACTION_DIM}


def _obs(x: float = 0.0) -> dict[str, np.ndarray]:
    return {"tcp_pos": np.array([[x, 0.1, 0.2]]), "tcp_quat": np.array([[0.0, 1.0, 0.0, 0.0]]),
            "gripper_width": np.array([0.04]), "wrench": np.zeros((1, 6)),
            "marker_offset": np.zeros((3, 7, 9, 2), np.float32)}


def _drive(policy: SimPolicy, steps: int, obs=None) -> list[float]:
    env = SimpleNamespace(control_hz=25.0, arms=[0], pads=[0, 1, 2])
    policy.reset(env)
    return [float(policy.act(obs or _obs())[0]) for _ in range(steps)]


def test_no_latency_executes_each_chunk_from_its_first_entry() -> None:
    xs = _drive(_dp_policy(_run(), _CountingSlow(), replan_every=4, num_inference_steps=None), 9)
    assert xs == [0, 1, 2, 3, 10, 11, 12, 13, 20]


def test_latency_matching_skips_the_entries_whose_time_passed() -> None:
    p = _dp_policy(_run(), _CountingSlow(), replan_every=4, num_inference_steps=None, latency_steps=2)
    # Plan 0 is waited for; plan 1 (made at step 4) arrives at step 6 and starts at its entry 2.
    assert _drive(p, 11) == [0, 1, 2, 3, 4, 5, 12, 13, 14, 15, 22]


def test_without_latency_matching_stale_entries_run() -> None:
    p = _dp_policy(_run(), _CountingSlow(), replan_every=4, num_inference_steps=None, latency_steps=2,
                    latency_matching=False)
    assert _drive(p, 11) == [0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 20]


def test_latency_must_leave_the_chunk_long_enough() -> None:
    with pytest.raises(ValueError, match="replan_every \\+ latency_steps <= horizon"):
        _dp_policy(_run(), _CountingSlow(), replan_every=12, num_inference_steps=None, latency_steps=5)


def test_relative_chunks_are_offsets_from_the_planning_pose() -> None:
    xs = _drive(_dp_policy(_run("relative"), _CountingSlow(), replan_every=4, num_inference_steps=None), 5,
                obs=_obs(x=0.5))
    assert xs == pytest.approx([0.5, 1.5, 2.5, 3.5, 10.5])


def test_shift_positions_round_trip_and_only_moves_positions() -> None:
    rng = np.random.default_rng(0)
    action = rng.normal(size=(3, 5, 2 * ACTION_DIM)).astype(np.float32)
    anchor = rng.normal(size=(3, 2 * ACTION_DIM)).astype(np.float32)
    rel = shift_positions(action, anchor, -1.0)
    np.testing.assert_allclose(shift_positions(rel, anchor, +1.0), action, atol=1e-6)
    moved = np.abs(rel - action).reshape(3, 5, 2, ACTION_DIM).max(axis=(0, 1, 2)) > 0
    assert moved.tolist() == [True] * 3 + [False] * (ACTION_DIM - 3)


def test_cond_features_tcp_rel_and_unknown_parts() -> None:
    feats = {"proprio": np.array([[1.0, 2.0, 3.0] + [0.0] * 7]), "tactile": np.ones((1, 45))}
    anchor = np.array([0.5, 0.5, 0.5] + [0.0] * 7)
    cond = cond_features(feats, anchor, "tactile+tcp_rel")
    assert cond.shape == (1, 48) and cond[0, -3:].tolist() == [0.5, 1.5, 2.5]
    with pytest.raises(ValueError, match="parts must be"):
        cond_parts("tactile+force")


def test_cond_features_can_carry_the_goal_to_the_decoder() -> None:
    feats = {"tactile_load": np.full((4, 6), 2.0), "goal": np.tile([1.0, 25 / 60], (4, 1))}
    cond = cond_features(feats, np.zeros(20), "tactile_load+goal")
    assert cond.shape == (4, 8) and cond[:, -2:].tolist() == [[1.0, pytest.approx(25 / 60)]] * 4
    with pytest.raises(KeyError):
        cond_features({"tactile_load": feats["tactile_load"]}, np.zeros(20), "tactile_load+goal")


class _NoiseSlow(_CountingSlow):
    """Entry x of every chunk is the first number the sampler's generator draws: the episode's noise made visible."""

    def predict(self, obs, generator=None, num_inference_steps=None, noise_scale=1.0) -> torch.Tensor:
        chunk = super().predict(obs)
        chunk[..., 0] = torch.randn((), generator=generator)
        return chunk


def _first_noise(policy: SimPolicy, seed: int | None) -> float:
    policy.reset(SimpleNamespace(control_hz=25.0, arms=[0], pads=[0, 1, 2]), seed=seed)
    return float(policy.act(_obs())[0])


def test_each_episode_draws_its_own_noise_reproducibly() -> None:
    p = _dp_policy(_run(), _NoiseSlow(), replan_every=4, num_inference_steps=None, seed=3)
    by_episode = [_first_noise(p, s) for s in (0, 1, 2, 0)]
    assert by_episode[0] == by_episode[3]  # same episode seed: same noise
    assert len(set(by_episode[:3])) == 3  # episodes differ (one shared draw made every episode alike)
    other_sampler = _dp_policy(_run(), _NoiseSlow(), replan_every=4, num_inference_steps=None, seed=4)
    assert _first_noise(other_sampler, 0) != by_episode[0]
    assert _first_noise(p, None) == _first_noise(p, None)  # no episode seed: the sampler seed alone


def test_episode_noise_seed_fits_a_torch_generator() -> None:
    from rdp.inference import episode_noise_seed

    seeds = {episode_noise_seed(s, e) for s in range(3) for e in range(100)}
    assert len(seeds) == 300
    for s in list(seeds)[:20]:
        torch.Generator().manual_seed(s)  # raises when out of range
    assert episode_noise_seed(0, 5) == episode_noise_seed(0, 5)


def test_sampling_temperature_is_explicit_else_the_runs_else_the_methods() -> None:
    """sim.eval's policy configs and the runtime leave the temperature to the run (null), and both resolve it with
    ``deploy_noise_scale`` (so lockstep repeats sim.eval): one given explicitly wins, else the one chosen for the run
    on validation seeds (run.json ``inference``, python -m rdp.temperature), else its method's (rdp 0, dp 1)."""
    from pathlib import Path

    import yaml

    from rdp.api import deploy_noise_scale
    from rdp.inference import DEFAULT_NOISE_SCALE
    from rdp.runtime.config import SlowConfig, load_config
    from rdp.temperature import choose_temperature

    root = Path(__file__).resolve().parents[2]
    policy_configs = root / "configs" / "policy"
    assert yaml.safe_load((policy_configs / "rdp.yaml").read_text())["noise_scale"] is None
    assert yaml.safe_load((policy_configs / "dp.yaml").read_text())["noise_scale"] is None
    assert SlowConfig().noise_scale is None and load_config(["checkpoint=X"]).slow.noise_scale is None
    assert deploy_noise_scale({"method": "rdp"}) == DEFAULT_NOISE_SCALE == 0.0
    assert deploy_noise_scale({"method": "dp"}) == 1.0
    chosen = {"method": "dp", "inference": {"noise_scale": 0.0}}
    assert deploy_noise_scale(chosen) == 0.0 and deploy_noise_scale(chosen, 0.5) == 0.5
    assert _dp_policy(_run(), _CountingSlow(), replan_every=4, num_inference_steps=None).noise_scale == 1.0
    assert _dp_policy({**_run(), **chosen}, _CountingSlow(), replan_every=4).noise_scale == 0.0
    # the choice: the best validation success; a tie keeps the method's default, else the lowest temperature
    assert choose_temperature({0.0: 1.0, 1.0: 0.0}, 1.0) == 0.0
    assert choose_temperature({0.0: 0.5, 1.0: 0.5}, 1.0) == 1.0
    assert choose_temperature({0.5: 0.5, 1.0: 0.5}, 0.0) == 0.5


def test_temperature_validates_a_goal_conditioned_run_over_the_tasks_goals(tmp_path, monkeypatch) -> None:
    """A run that observes a goal is validated with task.goal=random (a goal-free scene would give it none); other
    runs are validated as before."""
    import json
    import subprocess

    from rdp import temperature

    seen: list[list[str]] = []

    def fake_run(cmd, **_):
        seen.append(cmd)
        out = next(a.split("=", 1)[1] for a in cmd if a.startswith("out="))
        Path(out).mkdir(parents=True)
        (Path(out) / "results.json").write_text(json.dumps({"success_rate": 0.5}))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(temperature.subprocess, "run", fake_run)
    for keys, expect in ((["proprio", "tactile", "goal"], True), (["proprio", "tactile"], False)):
        run = tmp_path / f"run{len(seen)}"
        run.mkdir()
        (run / "run.json").write_text(json.dumps({"obs_keys": keys}))
        cfg = temperature.TemperatureConfig(task="wipe")
        assert temperature._eval("wipe", run, "rdp", 0.0, cfg, tmp_path / f"w{len(seen)}") == 0.5
        assert ("task.goal=random" in seen[-1]) is expect


def test_the_recorded_temperature_command_repeats_the_choice(tmp_path, monkeypatch) -> None:
    """run.json's ``chosen_on.command`` names every option that changed the validation (seeds, count, candidates)."""
    import json
    import shutil
    import subprocess

    from rdp import temperature

    def fake_run(cmd, **_):
        out = next(a.split("=", 1)[1] for a in cmd if a.startswith("out="))
        Path(out).mkdir(parents=True)
        (Path(out) / "results.json").write_text(json.dumps({"success_rate": 0.5}))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(temperature.subprocess, "run", fake_run)
    run = tmp_path / "run"
    shutil.copytree(Path(__file__).resolve().parents[2] / "checkpoints" / "wipe" / "dp", run)
    out = f"out={tmp_path / 'o'}"
    assert temperature.main(["task=wipe", f"checkpoint={run}", "episodes=60", "seed=2000", out]) == 0
    chosen = json.loads((run / "run.json").read_text())["inference"]["chosen_on"]
    assert chosen["seeds"] == [2000, 2059]
    assert chosen["command"] == f"python -m rdp.temperature task=wipe checkpoint={run} episodes=60 seed=2000"
    assert temperature.main(["task=wipe", f"checkpoint={run}", out]) == 0
    assert json.loads((run / "run.json").read_text())["inference"]["chosen_on"]["command"] == \
        f"python -m rdp.temperature task=wipe checkpoint={run}"
