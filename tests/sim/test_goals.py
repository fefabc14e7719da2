"""Goal-conditioned tasks: a goal changes what the expert does and how the episode is scored, and the default goal
changes nothing."""

from __future__ import annotations

import hashlib
import json
import platform

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim
from bus.cli import UsageError
from sim.eval import evaluate
from sim.experts import make_expert
from sim.registry import ENV_IDS, TASKS, goal_option

INFO_BEFORE_GOALS = ("task", "score", "success", "failure", "perturbation", "perturbation_time", "time")
# sha256[:16] of an expert episode (every observation, action, reward and the final info of INFO_BEFORE_GOALS),
# recorded with the code before goals existed: (task, seed, perturb) -> digest. Floating point differs between
# MuJoCo builds and CPUs, so they are checked on the build they were recorded with.
DIGESTS_BEFORE_GOALS = {
    ("wipe", 0, True): "ef1619d934a6aeac",
    ("wipe", 2, False): "fa380b6c4062e6c4",
    ("peel", 0, True): "78db181bbc88f746",
    ("peel", 2, False): "02c15a1cc6263861",
    ("lift", 0, True): "8cd92ab18ddfe94f",
    ("lift", 2, False): "8354aa6516cca6ff",
}
RECORDED_ON = ("4.0.0", "x86_64", "GenuineIntel")  # mujoco version, machine, CPU vendor (AMD EPYC differs)


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
GOAL_DIMS = {"wipe": 9, "peel": 5, "lift": 7}


def _run_expert(env, seed: int, expert=None) -> tuple[dict, list[dict], list[np.ndarray]]:
    """One episode of the task's expert (or ``expert``): final info, every observation, every action."""
    expert = expert or make_expert(env.task.name)
    obs, info = env.reset(seed=seed)
    expert.reset(env)
    observations, actions = [obs], []
    while True:
        actions.append(np.asarray(expert.act(obs), dtype=np.float64))
        obs, _, terminated, truncated, info = env.step(actions[-1])
        observations.append(obs)
        if terminated or truncated:
            return info, observations, actions


def _digest(task: str, seed: int, perturb: bool, **env_args) -> str:
    env = sim.make_env(task, perturb=perturb, **env_args)
    expert = make_expert(task)
    obs, info = env.reset(seed=seed)
    expert.reset(env)
    h = hashlib.sha256()

    def put(o: dict) -> None:
        for k in sorted(o):
            h.update(k.encode())
            h.update(np.ascontiguousarray(o[k]).tobytes())

    put(obs)
    while True:
        a = np.asarray(expert.act(obs), dtype=np.float64)
        h.update(a.tobytes())
        obs, r, terminated, truncated, info = env.step(a)
        put(obs)
        h.update(np.array([r, terminated, truncated], dtype=np.float64).tobytes())
        if terminated or truncated:
            break
    h.update(json.dumps({k: info[k] for k in INFO_BEFORE_GOALS}, sort_keys=True).encode())
    env.close()
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ default goal
@pytest.mark.parametrize(("task", "seed", "perturb"), sorted(DIGESTS_BEFORE_GOALS))
def test_the_default_goal_is_bit_identical_to_the_tasks_before_goals(task: str, seed: int, perturb: bool) -> None:
    plain = _digest(task, seed, perturb)
    assert _digest(task, seed, perturb, goal="default") == plain  # on every build: the default goal changes nothing
    if (mujoco.__version__, platform.machine(), _cpu_vendor()) == RECORDED_ON:  # the history only where recorded
        assert plain == DIGESTS_BEFORE_GOALS[task, seed, perturb]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_random_goal_draws_apart_from_the_physics(task: str) -> None:
    """The goal stream is not the physics': a seed's scene, perturbation and, when the drawn goal is the default,
    every observation and action are the same as with the default goal."""
    default, drawn = sim.make_env(task), sim.make_env(task, goal="random")
    assert "goal" not in default.observation_space.spaces and "goal" in drawn.observation_space.spaces
    seed = next(s for s in range(100) if drawn.task.goal_setting.draw(s).name == "default")
    info_a, obs_a, act_a = _run_expert(default, seed)
    info_b, obs_b, act_b = _run_expert(drawn, seed)
    assert info_b["goal"] == "default" and len(act_a) == len(act_b)
    np.testing.assert_array_equal(np.stack(act_a), np.stack(act_b))
    for a, b in zip(obs_a, obs_b, strict=True):
        np.testing.assert_array_equal(b.pop("goal"), drawn.task.goal.vector())
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for s in range(seed + 1, seed + 4):  # other goals: the same scene and perturbation
        _, info_a = default.reset(seed=s)
        obs_b, info_b = drawn.reset(seed=s)
        assert (info_a["perturbation"], info_a["perturbation_time"]) == (info_b["perturbation"],
                                                                         info_b["perturbation_time"])
        np.testing.assert_array_equal(default.task.scene_features(), obs_b["scene"])


# ----------------------------------------------------------------------------------------- goals and encodings
@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_goal_has_a_distinct_vector_of_the_tasks_fixed_size(task: str) -> None:
    goal_type = TASKS[task].goal_type
    goals = goal_type.every()
    vectors = np.stack([g.vector() for g in goals])
    assert vectors.shape == (len(goals), GOAL_DIMS[task]) and vectors.dtype == np.float32
    assert len({v.tobytes() for v in vectors}) == len(goals)
    assert goals[0] == goal_type() and goals[0].name == "default"
    for g in goals:  # a goal's name parses back to it, as the config option does
        assert goal_type.parse(g.name) == g
        assert goal_option(task, g.name) == g.name
    low, high = goal_type.vector_bounds()
    space = sim.make_env(task, goal="random").observation_space["goal"]
    np.testing.assert_array_equal(space.low, low)
    np.testing.assert_array_equal(space.high, high)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_goal_conditioned_env_passes_the_gymnasium_checks(task: str) -> None:
    env = gym.make(ENV_IDS[task], goal="left" if task != "lift" else "high").unwrapped
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs["goal"], env.task.goal.vector())
    env.close()


def test_goals_parse_in_any_order_and_shared_default_values_change_nothing() -> None:
    assert goal_option("wipe", "gentle-left") == "left-gentle"
    assert goal_option("wipe", "all-normal") == "default"
    assert goal_option("lift", "high-normal") == "high"  # "normal": the default of both height and grip
    assert goal_option("peel", None) == "default"
    assert goal_option("lift", "random") == "random"


@pytest.mark.parametrize("task", sorted(TASKS))
def test_random_is_deterministic_in_the_seed_and_covers_every_goal(task: str) -> None:
    a, b = TASKS[task](goal="random"), TASKS[task](goal="random")
    seeds = list(range(60))
    drawn = [a.choose_goal(s) for s in seeds]
    assert [b.choose_goal(s) for s in reversed(seeds)] == drawn[::-1]  # a seed's goal, whatever came before
    assert set(drawn) == set(TASKS[task].goal_type.every())


@pytest.mark.parametrize(("task", "goal", "says"), [
    ("wipe", "sideways", "goal=sideways: no such wipe goal value 'sideways'; choose default, random or a wipe goal: "
                         "region all|left|right, force normal|gentle|firm (values joined by '-', e.g. right-firm)"),
    ("wipe", "left-right", "goal=left-right: two values of region (left, right); choose default, random"),
    ("peel", "gentle", "goal=gentle: no such peel goal value 'gentle'; choose default, random or a peel goal: "
                       "region all|left|right"),
    ("lift", "high-", "goal=high-: no such lift goal value ''; choose default, random or a lift goal: height "
                      "normal|low|high, grip normal|gentle"),
])
def test_a_wrong_goal_is_a_one_line_error_listing_the_options(task: str, goal: str, says: str) -> None:
    with pytest.raises(UsageError) as err:
        sim.make_env(task, goal=goal)
    message = str(err.value)
    assert message.startswith(says) and "\n" not in message


def test_a_wrong_goal_on_the_eval_command_line_fails_in_one_line(capsys, tmp_path) -> None:
    from sim.eval import main

    assert main(["task=peel", "task.goal=left-gentle", "episodes=1", "video=false", f"out={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("sim.eval: error: goal=left-gentle: no such peel goal value 'gentle'; choose default, random or a "
                   "peel goal: region all|left|right (values joined by '-', e.g. right)")


# ------------------------------------------------------------------------------------ goals change the behaviour
def test_wiping_a_half_wipes_only_that_half() -> None:
    for goal, expected in (("left", [1, 1, 1, 0, 0, 0]), ("right", [0, 0, 0, 1, 1, 1])):
        env = sim.make_env("wipe", goal=goal)
        for seed in (0, 1):
            info, _, _ = _run_expert(env, seed)
            assert info["success"] and info["goal"] == goal, info
            assert env.task.removed.astype(int).tolist() == expected
            assert info["region_cleaned"] == 1.0 and info["outside_cleaned"] == 0 and info["score"] == 1.0


def test_wiping_gently_or_firmly_presses_at_that_level() -> None:
    forces = {}
    for goal in ("gentle", "default", "firm"):
        env = sim.make_env("wipe", goal=goal, perturb=False)
        info, _, _ = _run_expert(env, 3)
        assert info["success"] and info["goal_miss"] is None, info
        forces[goal] = info["wipe_force"]
        assert info["wipe_force"] == pytest.approx(info["force_level"], rel=0.15)
    assert forces["gentle"] < 0.85 * forces["default"] and forces["firm"] > 1.15 * forces["default"]


def test_peeling_a_half_peels_only_that_half() -> None:
    for goal, expected in (("left", [1] * 4 + [0] * 4), ("right", [0] * 4 + [1] * 4)):
        env = sim.make_env("peel", goal=goal)
        for seed in (0, 1):
            info, _, _ = _run_expert(env, seed)
            assert info["success"] and info["outside_peeled"] == 0, info
            assert env.task.peeled.astype(int).tolist() == expected


def test_lifting_low_or_high_holds_the_box_at_that_height_and_a_gentle_grip_squeezes_less() -> None:
    held, squeeze = {}, {}
    for goal in ("low", "default", "high", "gentle"):
        env = sim.make_env("lift", goal=goal)
        info, _, _ = _run_expert(env, 2)  # the box turns slippery: today's grip squeezes it at 40 N
        assert info["success"] and info["goal_miss"] is None, info
        held[goal], squeeze[goal] = info["height"], info["max_squeeze"]
    assert 0.03 <= held["low"] <= 0.07 and 0.10 <= held["default"] < 0.2 <= held["high"]
    assert squeeze["gentle"] <= 25.0 < 35.0 < squeeze["default"]


def _replay(env, seed: int, actions: list[np.ndarray]) -> dict:
    """Drive ``env`` open-loop with another episode's ``actions`` (then hold the last one) to the episode's end."""
    env.reset(seed=seed)
    k = 0
    while True:
        _, _, terminated, truncated, info = env.step(actions[min(k, len(actions) - 1)])
        k += 1
        if terminated or truncated:
            return info


@pytest.mark.parametrize(("task", "goal", "seed", "miss"), [
    ("wipe", "right", 0, "mark(s) outside the right half"),
    ("wipe", "gentle", 0, "not within 15% of gentle's 7.5 N"),
    ("peel", "right", 0, "outside the right half"),
    ("lift", "gentle", 2, "over the gentle grip's 25 N"),
    ("lift", "low", 0, None),
])
def test_doing_todays_task_misses_another_goal(task: str, goal: str, seed: int, miss: str | None) -> None:
    """The default expert's actions, replayed under a goal, do not succeed: they did not do what was asked."""
    today, _, actions = _run_expert(sim.make_env(task), seed)
    assert today["success"]
    info = _replay(sim.make_env(task, goal=goal), seed, actions)
    assert not info["success"] and info["failure"] is None, info
    if miss is None:
        assert info["goal_miss"] is None and info["score"] == 0.0  # never held in the goal's height band
    else:
        assert miss in info["goal_miss"]


# ---------------------------------------------------------------------------------------------------- evaluation
def test_eval_reports_success_per_goal_when_goals_vary(tmp_path) -> None:
    result = evaluate("peel", lambda: make_expert("peel"), "expert", episodes=3, seed=0, out_dir=tmp_path,
                      video=False, goal="random")
    rows = result["episodes_detail"]
    assert result["goal"] == "random" and all("goal" in r for r in rows)
    assert sum(v["episodes"] for v in result["per_goal"].values()) == 3
    assert sorted(result["per_goal"]) == sorted({r["goal"] for r in rows})
    plain = evaluate("peel", lambda: make_expert("peel"), "expert", episodes=1, seed=0, out_dir=tmp_path / "plain",
                     video=False)
    assert "per_goal" not in plain and "goal" not in plain["episodes_detail"][0]
