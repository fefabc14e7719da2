"""Planning with the world model: the marker task's design (the marker leaves the view for longer than the context;
the answer is one of the destinations), the plan -> act -> observe loop in lockstep through a planner node on the
bus with a tiny world model, and the node's answers to bad requests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bus.message import Message
from world_model.marker_task import MarkerTaskConfig, MarkerWorld, displacements
from world_model.revisit import RevisitConfig

TINY = ["model.width=32", "model.depth=1", "model.ae_width=8", "model.context_frames=2", "model.chunk_frames=2",
        "model.inference_steps=2", "model.train_timesteps=20", "ae.steps=10", "ae.batch=8", "diffusion.steps=10",
        "diffusion.batch=4", "log_every=5", "progress=false"]
PY = [sys.executable, "-m"]


def test_the_marker_is_out_of_view_when_the_task_starts_and_one_destination_is_its_spot():
    cfg = MarkerTaskConfig(revisit=RevisitConfig(image_size=16))
    for seed in range(6):
        with MarkerWorld(cfg, seed) as world:
            frames, actions = world.seen()
            assert len(frames) == len(world.path) and np.allclose(np.cumsum(actions, 0) + world.path[0], world.path)
            # the dwell frames show nothing of the marker: it lies further than half a view (+ its size) away
            far = np.abs(world.path[-cfg.revisit.dwell:, :2] - world.marker).max(1)
            assert (far > cfg.view / 2 + 2 * cfg.marker_half).all(), (seed, far.min())
            assert np.array_equal(world.destinations[world.answer], world.marker)
            decoys = np.delete(world.destinations, world.answer, axis=0)
            assert (np.abs(decoys - world.marker).max(1) > cfg.view).all()
            dist = np.linalg.norm(world.destinations - world.path[-1, :2], axis=1)
            assert np.allclose(dist, dist[0])  # how far a destination is says nothing about which is the marker
            plans = world.plans()
            assert plans.shape[0] == cfg.candidates and np.allclose(plans[:, -1, :2], world.destinations)
            assert world.success(plans[world.answer, -1])
            assert not any(world.success(p[-1]) for i, p in enumerate(plans) if i != world.answer)
            steps = np.linalg.norm(np.diff(np.concatenate([world.path[-1:].repeat(len(plans), 0)[:, None], plans], 1),
                                           axis=1), axis=2)
            assert steps.max() <= cfg.revisit.step + 1e-9
    with MarkerWorld(cfg, 3) as a, MarkerWorld(cfg, 3) as b:
        assert np.array_equal(a.destinations, b.destinations) and np.array_equal(a.seen()[0], b.seen()[0])
    assert np.allclose(displacements(np.array([[0.0, 0, 0], [0.1, 0, 0]]))[1], [0.1, 0, 0])
    with pytest.raises(ValueError, match="bad marker task"):
        MarkerTaskConfig(candidates=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny world model (16 px) and scorer, trained for a few steps: the loop's plumbing, not its skill."""
    root = tmp_path_factory.mktemp("plan")
    data, run, scorer = root / "data", root / "run", root / "scorer"
    subprocess.run([*PY, "world_model.data", "revisit", f"out={data}", "episodes=2", "seed=1", "image_size=16"],
                   check=True, capture_output=True)
    subprocess.run([*PY, "world_model.train", f"data={data}", f"out={run}", *TINY], check=True, capture_output=True)
    done = subprocess.run([*PY, "world_model.plan", "scorer", f"run={run}", f"out={scorer}", "episodes=3",
                           "per_episode=4", "steps=5", "progress=false"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert set(json.loads(done.stdout.splitlines()[-1])["validation_accuracy"]) == {"real", "autoencoder"}
    return run, scorer, data


def test_plan_act_observe_in_lockstep_through_the_planner_node(tiny, tmp_path):
    run, scorer, _ = tiny
    out = tmp_path / "eval"
    done = subprocess.run([*PY, "world_model.plan", "eval", f"run={run}", f"scorer={scorer}", "episodes=2",
                           "seed=5", "max_frames=10", "videos=1", "progress=false", f"out={out}"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["conditions"]) == {"temp_lora", "no_memory", "current_view", "true_frames", "frame_buffer"}
    answers = None
    for name, cond in metrics["conditions"].items():
        rows = cond["episodes"]
        assert len(rows) == 2 and cond["summary"]["episodes"] == 2
        lo, hi = cond["summary"]["wilson95"]
        assert 0 <= lo <= cond["summary"]["success"] <= hi <= 1
        assert answers in (None, [r["answer"] for r in rows])  # every condition on the same episodes
        answers = [r["answer"] for r in rows]
        for r in rows:
            assert 0 <= r["chosen"] < 4 and r["success"] == (r["final_error_m"] < 0.05)
        if name in ("temp_lora", "no_memory"):
            for r in rows:  # planned, moved at most max_frames, observed between
                assert r["decisions"] >= 1 and 0 <= r["frames"] <= 10 and len(r["choices"]) == r["decisions"]
            assert (out / f"{name}-ep0.mp4").stat().st_size > 0 and not (out / f"{name}-ep1.mp4").exists()
            assert (out / f"planner-{name}.log").exists()
    memory = metrics["conditions"]["temp_lora"]["episodes"]
    assert all(r["memory_updates"] > 0 for r in memory)  # the seen frames went into TEMP-LoRA, chunk by chunk
    assert all(r["memory_updates"] == 0 for r in metrics["conditions"]["no_memory"]["episodes"])


def test_the_planner_node_answers_bad_requests_with_errors_and_keeps_its_state(tiny):
    from world_model.node import PlannerNode, PlannerNodeConfig

    run, scorer, _ = tiny
    node = PlannerNode(PlannerNodeConfig(run=str(run), scorer=str(scorer), max_candidates=4, max_plan_frames=8))
    try:
        ask = node.answer
        frames = np.zeros((3, 16, 16, 3), np.uint8)
        actions = np.zeros((3, 3), np.float32)
        assert ask(Message("plan", 0.0, arrays={"plans": np.zeros((2, 4, 3), np.float32)}))[0] == "error"  # no frame
        topic, _, meta = ask(Message("observe", 0.0, arrays={"frames": frames, "actions": actions}))
        assert topic == "observed" and meta["frames"] == 3 and meta["memory_updates"] == 1  # one chunk of 2
        bad = [
            Message("fly", 0.0),
            Message("reset", 0.0, meta={"seed": "x"}),
            Message("observe", 0.0, arrays={"frames": frames.astype(np.float32), "actions": actions}),
            Message("observe", 0.0, arrays={"frames": frames[:, :8], "actions": actions}),
            Message("observe", 0.0, arrays={"frames": frames, "actions": actions[:2]}),
            Message("observe", 0.0, arrays={"frames": frames, "actions": np.full((3, 3), np.nan, np.float32)}),
            Message("observe", 0.0, arrays={"frames": frames[:0], "actions": actions[:0]}),
            Message("plan", 0.0),
            Message("plan", 0.0, arrays={"plans": np.zeros((5, 4, 3), np.float32)}),  # too many candidates
            Message("plan", 0.0, arrays={"plans": np.zeros((2, 9, 3), np.float32)}),  # too long
            Message("plan", 0.0, arrays={"plans": np.zeros((2, 4, 2), np.float32)}),  # wrong action size
            Message("plan", 0.0, arrays={"plans": np.full((2, 4, 3), np.inf, np.float32)}),
            Message("plan", 0.0, arrays={"plans": np.zeros((2, 4, 3), np.int64)}),
        ]
        for msg in bad:
            topic, arrays, meta = ask(msg)
            assert topic == "error" and arrays == {} and 0 < len(str(meta["error"])) < 300, (msg.topic, meta)
        assert len(node.planner.latents) == 3 and node.planner.updates == 1  # nothing bad reached the planner
        assert node.stats("stats")["rejects"]["rej_request"] == len(bad) + 1
        topic, arrays, meta = ask(Message("plan", 0.0, arrays={"plans": np.zeros((3, 5, 3), np.float32)},
                                          meta={"imagined": True}))
        assert topic == "plan" and 0 <= meta["index"] < 3 and arrays["scores"].shape == (3,)
        assert arrays["imagined"].shape == (3, 5, 16, 16, 3) and arrays["imagined"].dtype == np.uint8
        assert node.planner.updates == 1  # imagining never writes into the memory
        assert ask(Message("reset", 0.0, meta={"seed": 4}))[0] == "reset" and not node.planner.latents
    finally:
        node.close()


def test_a_reversed_window_is_the_camera_retracing_its_path():
    import torch

    from world_model.planner import reversed_window

    pos = np.cumsum(np.random.default_rng(0).normal(size=(6, 3)), axis=0)
    acts = torch.from_numpy(displacements(pos))
    frames = torch.arange(6.0)[:, None]
    back, moves = reversed_window(frames, acts)
    assert back[:, 0].tolist() == [5, 4, 3, 2, 1, 0] and float(moves[0].abs().sum()) == 0
    assert np.allclose(moves[1:].numpy(), np.diff(pos[::-1], axis=0))  # the move into each reversed frame


def test_the_slow_fast_loop_trains_the_base_with_the_memory_and_resumes(tiny, tmp_path):
    import torch

    from world_model.slowfast import SlowFastConfig, train_slowfast
    from world_model.train import StageConfig, load_world_model

    run, _, data = tiny
    out = tmp_path / "sf"
    cfg = SlowFastConfig(data=str(data), out=str(out), init=str(run), progress=False, log_every=1,
                         checkpoint_every=2, outer=StageConfig(steps=2, batch=1, lr=1e-3, warmup=0))
    train_slowfast(cfg)
    assert (out / "checkpoints" / "slowfast").exists() is False  # removed once the run is complete
    _, before, _ = load_world_model(run)
    _, after, info = load_world_model(out)  # a plain world model again: the adapters are not in it
    assert info["init"] == str(run) and "slowfast" in info
    changed = [not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters(), strict=True)]
    assert any(changed)  # the outer loop moved the base weights
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows
                                                                      if "loss" in r)
    # stopped after its checkpoint at step 2 of 4, then resumed: it continues from 2
    out2 = tmp_path / "sf2"
    cfg2 = SlowFastConfig(data=str(data), out=str(out2), init=str(run), progress=False, log_every=1,
                          checkpoint_every=2, outer=StageConfig(steps=4, batch=1, lr=1e-3, warmup=0))
    import world_model.slowfast as sf

    real = sf.Stage.checkpoint

    def stop_after_checkpoint(self, seconds):
        real(self, seconds)
        raise KeyboardInterrupt

    sf.Stage.checkpoint = stop_after_checkpoint
    try:
        with pytest.raises(KeyboardInterrupt):
            train_slowfast(cfg2)
    finally:
        sf.Stage.checkpoint = real
    assert (out2 / "checkpoints" / "slowfast" / "state.json").exists()
    cfg2.resume = True
    assert train_slowfast(cfg2)["episodes_seen"] == 4
    steps = [json.loads(line).get("step") for line in (out2 / "log.jsonl").read_text().splitlines()]
    assert steps[:2] == [1, 2] and steps[2:4] == [3, 4]


def test_a_scorer_learns_from_the_planners_own_imagined_frames(tiny, tmp_path):
    from world_model.plan import ScorerTrainConfig, fit_scorer, load_scorer

    run, _, _ = tiny
    out = tmp_path / "imagined"
    result = fit_scorer(ScorerTrainConfig(out=str(out), run=str(run), source="imagined", episodes=2, steps=3,
                                          batch=4, progress=False, reverse=True, replay=1))
    assert set(result["validation_accuracy"]) == {"imagined", "top1"}
    meta = json.loads((out / "scorer.json").read_text())
    assert "source=imagined" in meta["command"] and meta["train_frames"] == 2 * 4 * 2  # episodes x K x frames
    assert load_scorer(out).cfg.image_size == 16
    with pytest.raises(ValueError, match="source must be"):
        ScorerTrainConfig(source="dreamed")
