"""From an instruction and a video to the robot: every answer of the grounding model is a goal its task can run,
``grounding.run`` grounds in one JSON line and refuses bad inputs in one line, ``grounding.endtoend`` writes both
arms, and the grounded goal (not the env's) is what the policy's planner reads.

Tiny runs: a grounding backbone run of 3 steps on the synthetic episodes of ``test_train`` and a goal-conditioned
``dp`` policy from ``tests/rdp/test_runtime_units.make_tiny_run`` (meaningless weights, real files)."""

from __future__ import annotations

import importlib
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from test_train import SIZE, write_episodes
from test_train import train as train_grounding

from grounding import endtoend
from grounding import run as grun
from grounding.data import INDEX, episode_path, read_episode, resample, write_episode
from grounding.ground import Grounder, check_video, goal_from_classes, goal_option, read_answer
from grounding.model import GroundingConfig
from rdp.runtime.process import ROOT
from sim.registry import TASKS
from sim.tasks.base import GoalSetting
from sim.tasks.wipe import WipeGoal

TEXT = "please wipe the vase on the left half only."


def rdp_test_helpers() -> ModuleType:
    """tests/rdp/test_runtime_units.py (make_tiny_run), imported by the name the rdp tests import it by."""
    folder = str(Path(__file__).parents[1] / "rdp")
    if folder not in sys.path:
        sys.path.append(folder)  # as pytest does for the rdp tests (there at the front)
    return importlib.import_module("test_runtime_units")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Synthetic grounding episodes, a grounding run trained on them (its own backbone) and a wipe goal policy."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("grounding-e2e")
    data, ground = root / "episodes", root / "ground"
    data.mkdir()
    write_episodes(data)
    assert train_grounding("stage=backbone", f"data={data}", f"out={ground}", "frames=4", "steps=3") == 0
    policy = rdp_test_helpers().make_tiny_run(root, method="dp", goal=True)
    return {"root": root, "data": data, "ground": ground, "policy": policy}


# ----------------------------------------------------------------------------------------------- answers -> goals
def one_hot_logits(cfg: GroundingConfig, answer: dict[str, int]) -> dict[str, torch.Tensor]:
    return {head: torch.nn.functional.one_hot(torch.tensor(answer.get(head, 0)), n).float() * 5.0
            for head, n in cfg.head_sizes.items()}


def test_every_combination_of_answers_is_a_goal_the_predicted_task_runs():
    cfg = GroundingConfig()
    heads = ["task", *cfg.goal_fields]
    for combo in itertools.product(*(range(cfg.head_sizes[h]) for h in heads)):
        answer = dict(zip(heads, combo, strict=True))
        g = read_answer(cfg, one_hot_logits(cfg, answer), TEXT, 2.0)
        gtype = TASKS[g.task].goal_type
        assert g.task == cfg.tasks[answer["task"]] and isinstance(g.goal, gtype)
        assert gtype.parse(g.goal.name) == g.goal  # the name the runners take back
        setting = GoalSetting(gtype, goal_option(g.goal))
        assert setting.conditioned and setting.draw(0) == g.goal  # the env observes the very goal
        for name, value in g.fields.items():  # the task's own fields as answered (the classes are the Goal's)
            assert value == cfg.goal_fields[name][answer[name]]
        assert 0.0 < g.confidence <= 1.0
    assert {goal_option(t.goal_type()) for t in TASKS.values()} == {"all-normal", "all", "normal"}


def test_classes_a_goal_does_not_know_and_missing_heads_give_defaults():
    cfg = GroundingConfig(goal_fields={"region": ("all", "left", "right", "middle"), "speed": ("slow", "fast"),
                                       "height": ("low", "normal", "high")})  # no force, no grip head
    g = read_answer(cfg, one_hot_logits(cfg, {"task": 0, "region": 3, "speed": 1}), TEXT, 2.0)
    assert g.task == "wipe" and g.goal == WipeGoal() and g.classes["region"] == "middle"
    assert goal_from_classes("lift", {"height": "high", "grip": "firm", "region": "left"}).name == "high"
    # The confidence counts every class that maps onto the value: "middle" and "all" both give region all.
    logits = one_hot_logits(cfg, {"task": 0})
    logits["region"] = torch.log(torch.tensor([0.2, 0.1, 0.1, 0.6]))
    logits["task"] = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    g = read_answer(cfg, logits, TEXT, 2.0)
    assert g.goal == WipeGoal() and g.confidence == pytest.approx(0.5 * 0.8, abs=1e-4)
    assert g.keyframe_bin == 0 and g.keyframe_s == pytest.approx(0.5 / cfg.num_time_bins * 2.0)


# ---------------------------------------------------------------------------------------------------- Grounder
def test_grounder_reads_the_video_as_training_did_and_refuses_bad_inputs(runs, tmp_path):
    grounder = Grounder(runs["ground"])
    frames, times, meta = read_episode(episode_path(runs["data"], 1))
    g = grounder.ground(frames, TEXT, times=times, duration=meta["duration"])
    assert g.task in TASKS and isinstance(g.goal, TASKS[g.task].goal_type)
    assert 0 <= g.keyframe_s <= meta["duration"] and set(g.probs) == {"task", "region", "force", "height", "grip",
                                                                         "keyframe"}
    # The frames it encodes are the nearest-frame resample the token cache and training use.
    picked, _ = resample(frames, times, meta["duration"], grounder.frames)
    with torch.no_grad():
        expected = grounder.backbone.encoder(torch.from_numpy(picked).permute(0, 3, 1, 2)[None])
    torch.testing.assert_close(grounder.frame_tokens(frames, times, meta["duration"]), expected)
    big = np.repeat(np.repeat(frames, 2, axis=1), 2, axis=2)  # the same video at twice the size: resized back
    assert big.shape[1] == 2 * SIZE and grounder.ground(big, TEXT, times=times).probs == g.probs
    with pytest.raises(ValueError, match="is empty"):
        grounder.ground(frames, "   ", times=times)
    with pytest.raises(ValueError, match="at least 2"):
        grounder.ground(frames[:1], TEXT, duration=1.0)
    with pytest.raises(ValueError, match="times or the episode's duration"):
        check_video(frames, None, None)
    bare = tmp_path / "no-backbone"
    shutil.copytree(runs["ground"], bare, ignore=shutil.ignore_patterns("backbone", "checkpoints"))
    info = json.loads((bare / "run.json").read_text())
    info["backbone"]["dir"] = str(tmp_path / "gone")
    (bare / "run.json").write_text(json.dumps(info))
    with pytest.raises(FileNotFoundError, match="no frame encoder"):
        Grounder(bare)


# ------------------------------------------------------------------------------------------------ grounding.run
def test_run_prints_the_grounding_as_a_line_and_json(runs, capsys):
    video = episode_path(runs["data"], 0)
    assert grun.main([TEXT, f"video={video}", f"run={runs['ground']}"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert lines[-2].startswith(f"grounded: task {result['task']}, goal {result['goal']}")
    assert result["instruction"] == TEXT and result["execute"] is None
    assert TASKS[result["task"]].goal_type.parse(result["goal"]).name == result["goal"]
    assert set(result["fields"]) == set(TASKS[result["task"]].goal_type.choices())


def test_run_refuses_bad_inputs_in_one_line(runs, tmp_path, capsys, monkeypatch):
    video, run = episode_path(runs["data"], 0), runs["ground"]
    frames, times, meta = read_episode(video)
    short = tmp_path / "episode_000000.npz"
    write_episode(short, frames[:1], times[:1], meta)
    cases = [
        ([f"video={video}", f"run={run}"], "instruction is empty"),
        ([TEXT, f"video={tmp_path / 'nothing.npz'}", f"run={run}"], "no such episode"),
        ([TEXT, f"video={runs['data']}", f"run={run}"], "is a dataset folder"),
        ([TEXT, f"video={short}", f"run={run}"], "at least 2"),
        ([TEXT, f"video={video}", f"run={tmp_path}"], "no trained grounding model"),
        ([TEXT, f"video={video}", f"run={run}", "execute=sometimes"], "no such execution mode"),
    ]
    for argv, message in cases:
        assert grun.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("grounding.run: error: ") and message in err and len(err.splitlines()) == 1, err
    # No shipped goal policy: the error names the training command; a policy of another task is refused.
    monkeypatch.setattr("rdp.inference.checkpoint_dir", lambda: tmp_path)
    assert grun.main([TEXT, f"video={video}", f"run={run}", "execute=lockstep"]) == 2
    err = capsys.readouterr().err
    assert "rdp_goal is not shipped" in err and "python -m rdp.train task=" in err
    with pytest.raises(ValueError, match="trained on wipe, but the instruction grounds to peel"):
        grun.goal_policy("peel", str(runs["policy"]))
    assert grun.goal_policy("wipe", str(runs["policy"])) == runs["policy"]


def test_execution_asks_rdp_run_for_the_grounded_goal(runs):
    cfg = grun.parse_args([TEXT, "video=V", "run=R", "execute=lockstep", "episodes=3", "seed=7", "max_episode_s=2"])
    grounding = read_answer(GroundingConfig(), one_hot_logits(GroundingConfig(), {"task": 0}), TEXT, 1.0)
    args = grun.rdp_run_args(cfg, grounding, runs["policy"], Path("OUT"))
    assert args == ["task=wipe", f"checkpoint={runs['policy']}", "goal=all-normal", "mode=lockstep", "episodes=3",
                    "seed=7", "out=OUT", "max_episode_s=2.0"]
    from rdp.checkpoint import load_run_info
    from rdp.run import robot_settings
    from rdp.runtime.config import load_config

    # rdp.run takes them and its robot node observes the (default) goal the policy needs.
    assert robot_settings(load_config(args), load_run_info(runs["policy"]))["goal"] == "all-normal"


@pytest.mark.timeout(120)
def test_the_module_runs_as_a_command(runs):
    cmd = [sys.executable, "-m", "grounding.run", TEXT, f"video={episode_path(runs['data'], 2)}",
           f"run={runs['ground']}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["video"].endswith("episode_000002.npz")


# ------------------------------------------------------------------------------------------- grounding.endtoend
def test_the_grounded_goal_reaches_the_planner_not_the_envs(runs):
    from rdp.inference import make_policy

    policy = make_policy("wipe", checkpoint=runs["policy"])
    target, grounded = WipeGoal(region="left"), WipeGoal(region="right", force="firm")
    seen: list[np.ndarray] = []
    features = policy.planner.features

    def spy(obs):
        out = features(obs)
        seen.append(np.array(out["goal"]))
        return out

    policy.planner.features = spy
    env = endtoend.make_task_env("wipe", target, policy, perturb=False)
    try:
        row = endtoend.run_arm(env, policy, 3, grounded, max_seconds=0.1)
        assert row["ran"] and row["cut"] and env.task.goal == target  # scored against the target
        assert seen and all(np.array_equal(v, grounded.vector()) for v in seen)
        seen.clear()
        endtoend.run_arm(env, policy, 3, None, max_seconds=0.1)
        assert seen and all(np.array_equal(v, target.vector()) for v in seen)
    finally:
        env.close()


def test_endtoend_writes_both_arms_per_episode(runs, tmp_path, capsys):
    data = tmp_path / "wipe-episodes"  # the synthetic episodes of wipe only: the tiny policy is a wipe policy
    shutil.copytree(runs["data"], data)
    index = json.loads((data / INDEX).read_text())
    index["episodes"] = [r for r in index["episodes"] if r["task"] == "wipe"]
    (data / INDEX).write_text(json.dumps(index))
    out = tmp_path / "e2e"
    common = [f"run={runs['ground']}", f"policies=[wipe:{runs['policy']}]", "episodes=2", "seed=5",
              "max_seconds=0.1", "progress=false", "kinds=[explicit,repeat,modified]"]
    assert endtoend.main([*common, f"data={data}", f"out={out}"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    result = json.loads((out / "results.json").read_text())
    assert summary["episodes"] == result["episodes"] == 2 and result["format"] == endtoend.E2E_FORMAT
    for row in result["rows"]:
        assert row["target"]["task"] == "wipe" and row["kind"] in ("explicit", "repeat", "modified")
        assert set(row["arms"]) == {"grounded", "true"} and row["arms"]["true"]["ran"]
        assert row["arms"]["grounded"]["ran"] == (row["grounded"]["task"] == "wipe")
        assert row["correct"]["task"] == (row["grounded"]["task"] == "wipe")
    totals = result["totals"]
    assert set(totals) == {"overall", "by_kind", "by_task"} and set(totals["by_task"]) == {"wipe"}
    for arm in ("grounded", "true"):
        entry = totals["overall"][arm]
        assert entry["count"] == sum(r["arms"][arm]["success"] for r in result["rows"]) and len(entry["ci95"]) == 2
    # The same seed draws the same instructions; a task without a policy is refused before anything runs.
    again = [endtoend.draw_instruction(m, "heldout", 5, ["explicit", "repeat", "modified"])
             for m in (read_episode(episode_path(data, i))[2] for i in (0, 3))]
    assert [i.text for i in again] == [r["instruction"] for r in result["rows"]]
    assert endtoend.main([*common, f"data={runs['data']}", f"out={tmp_path / 'x'}"]) == 2
    assert "policies= has no run for peel" in capsys.readouterr().err
    assert endtoend.main([*common, f"data={data}", f"out={tmp_path / 'x'}", "kinds=[when]"]) == 2
    assert "asks for a moment" in capsys.readouterr().err



# ------------------------------------------------------------------------------------------- grounding.node executes
@pytest.mark.timeout(400)
def test_the_grounding_node_carries_out_a_grounding_and_answers_its_state(runs, tmp_path, monkeypatch):
    """A grounding handed to the node's execution starts rdp.run (lockstep here) with the task's goal policy; the
    node answers its state while it runs and once it has ended, refuses a second one meanwhile, stops one on a stop
    request with its results written, and says why when the task has no goal policy."""
    import time
    from collections import Counter

    from bus.cli import UsageError
    from bus.message import Message
    from grounding.node import EpisodeVideo, GroundingNode, GroundingNodeConfig

    cfg = GroundingNodeConfig(robot_pub="tcp://127.0.0.1:*", run=str(runs["ground"]), execute="lockstep",
                              policies={"wipe": str(runs["policy"])}, max_episode_s=1.0, out=str(tmp_path / "ex"))
    node = GroundingNode.__new__(GroundingNode)  # the request logic only: no sockets, no model
    node.cfg, node.last, node.current, node.carrying = cfg, None, EpisodeVideo(None, 8.0, 10), None
    node.counts = Counter()
    wipe = read_answer(GroundingConfig(), one_hot_logits(GroundingConfig(), {"task": 0}), TEXT, 1.0)

    def status(topic: str = "execution") -> dict:
        reply_topic, meta = node.answer(Message(topic, 0.0, 0, {}, {}))
        assert reply_topic == "execution", meta
        return meta

    def until_ended(timeout: float = 240.0) -> dict:
        end = time.monotonic() + timeout
        while (meta := status())["state"] == "running":
            assert time.monotonic() < end, meta
            time.sleep(0.5)
        return meta

    assert node.answer(Message("execution", 0.0, 0, {}, {}))[0] == "error"  # nothing carried out yet
    first = node._carry_out(wipe)
    assert first.ident == 1 and status()["state"] == "running" and status()["task"] == "wipe"
    with pytest.raises(UsageError, match="still carrying out execution 1"):
        node._carry_out(wipe)
    done = until_ended()
    assert done["state"] in ("succeeded", "failed") and done["episodes"] == 1, done
    assert done["outcome"].startswith("executed: rdp.run mode=lockstep task=wipe goal=all-normal")
    assert (tmp_path / "ex" / "001-wipe-all-normal" / "results.json").is_file()

    node.cfg.episodes = 100_000  # one that would run for hours, stopped
    second = node._carry_out(wipe)
    assert second.ident == 2
    deadline = time.monotonic() + 120
    while not (second.out / "fast.log").is_file() and time.monotonic() < deadline:
        time.sleep(0.5)  # its nodes started, not still loading
    time.sleep(3.0)
    assert status("stop")["state"] in ("running", "stopped")
    stopped = until_ended()
    assert stopped["state"] == "stopped" and stopped["execution"] == 2, stopped
    assert (second.out / "results.json").is_file() and not second.execution.child.alive()

    gcfg = GroundingConfig()
    lift = read_answer(gcfg, one_hot_logits(gcfg, {"task": gcfg.tasks.index("lift")}), "lift the box", 1.0)
    assert lift.task == "lift"
    monkeypatch.setattr("rdp.inference.checkpoint_dir", lambda: tmp_path / "no-checkpoints")  # none shipped
    with pytest.raises(FileNotFoundError, match="no goal-conditioned lift policy"):
        node._carry_out(lift)
    node.cfg.execute = "none"
    with pytest.raises(UsageError, match="execute=none"):
        node._carry_out(wipe)


def test_the_task_env_gives_a_depth_head_policy_its_point_cloud():
    from types import SimpleNamespace

    from sim.tasks.lift import LiftGoal

    policy = SimpleNamespace(image_keys=(), run={"perception": {"camera": "scene_points", "image_size": 32}})
    env = endtoend.make_task_env("lift", LiftGoal(grip="gentle"), policy, perturb=False)
    try:
        obs, _ = env.reset(seed=1)
        assert obs["scene_points"].shape[1] == 3 and env.image_size == 32 and env.task.goal == LiftGoal(grip="gentle")
    finally:
        env.close()
    blind = SimpleNamespace(image_keys=(), run={})
    env = endtoend.make_task_env("lift", LiftGoal(), blind, perturb=False)
    try:
        assert "scene_points" not in env.reset(seed=1)[0] and not env.cameras
    finally:
        env.close()
