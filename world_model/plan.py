"""Plan with the world model on the marker task (``world_model.marker_task``), in lockstep with the simulator.

    python -m world_model.plan scorer out=DIR [episodes=200] [seed=800000] [steps=1500]   # train the scoring head
    python -m world_model.plan eval [scorer=DIR] [run=RUN] [episodes=50] [seed=700000] [out=DIR]
                                    [conditions=[temp_lora,no_memory,current_view,true_frames,frame_buffer]]

Every episode: the camera sees the marker, is carried away and dwells (the planner observes those frames), then
plan -> act -> observe: the planner imagines the straight path to every candidate destination from where the camera
is, scores the imagined end frames, moves ``replan_every`` frames along the best plan, observes the real frames, and
plans again, until it stands on a destination (or ``max_frames`` pass). Conditions, all on the same seeds:

- ``temp_lora``: the world model with TEMP-LoRA memory (each chunk of real frames written in as it arrives);
- ``no_memory``: the same world model, context window only;
- ``current_view``: no imagination, the current view only; no destination is in view, so it picks at random
  (the two-frame reactive policy's situation, by design);
- ``true_frames``: the real frames of every candidate path scored instead of imagined ones (the scorer's ceiling);
- ``frame_buffer``: a non-parametric memory: the scorer over every frame seen, go to the destination nearest the
  best one's camera position.

Writes ``OUT/metrics.json`` (success, Wilson 95 % interval, decisions per second, memory-update ms per condition;
every episode) and, for the first ``videos`` episodes of the world-model conditions, ``OUT/<condition>-ep<i>.mp4``:
each candidate's real path beside its imagined one at the first decision (chosen: orange frame, the marker's
destination: green), after the frames the camera saw.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from bus.cli import UsageError, command
from bus.config import compose, split_verb
from world_model.marker_task import MarkerTaskConfig, MarkerWorld, displacements, scorer_frames
from world_model.planner import MarkerScorer, ScorerConfig, WorldModelPlanner, autoencoder_roundtrip, train_scorer
from world_model.revisit import RevisitConfig
from world_model.train import load_world_model

CONDITIONS = ("temp_lora", "no_memory", "current_view", "true_frames", "frame_buffer")
WORLD_MODEL_CONDITIONS = ("temp_lora", "no_memory")


@dataclass
class ScorerTrainConfig:
    """``configs/world_model/scorer.yaml``."""

    out: str = ""
    run: str = ""  # the world model whose autoencoder imagined frames pass through; empty: the shipped one
    episodes: int = 200
    per_episode: int = 24
    seed: int = 800000
    steps: int = 1500
    batch: int = 64
    lr: float = 1e-3
    width: int = 16
    threads: int = 1
    progress: bool = True
    # real: camera views labelled by the geometry (the marker within success_radius of the view's centre);
    # imagined: the planner's own imagined end frames of every candidate plan, labelled by whether the candidate
    # is the marker's spot (the planner below imagines them: memory and its options as in world_model.plan eval)
    source: str = "real"
    memory: bool = True
    reverse: bool = False
    replay: int = 0
    lora_rank: int = 8
    lora_lr: float = 1e-3
    lora_steps: int = 1
    score_frames: int = 2

    def __post_init__(self) -> None:
        if self.episodes < 2 or self.per_episode < 2 or self.steps < 1 or self.batch < 2:
            raise ValueError(f"episodes, per_episode, batch >= 2 and steps >= 1 required, got {self}")
        if self.source not in ("real", "imagined"):
            raise ValueError(f"source must be real or imagined, got {self.source!r}")


@dataclass
class PlanConfig:
    """``configs/world_model/plan.yaml``."""

    run: str = ""  # world model run; empty: the shipped checkpoints/world_model/revisit
    scorer: str = ""  # scorer checkpoint; empty: the shipped checkpoints/world_model/marker_scorer
    out: str = ""
    episodes: int = 50
    seed: int = 700000
    conditions: list[str] = field(default_factory=lambda: list(CONDITIONS))
    candidates: int = 4
    replan_every: int = 64  # frames executed between decisions; a plan shorter than this is carried out whole
    max_frames: int = 60  # task frames before the episode counts as failed
    score_frames: int = 2  # imagined end frames the scorer averages
    context: int = 0  # 0: the model's context_frames
    lora_rank: int = 8
    lora_lr: float = 1e-3
    lora_steps: int = 1  # local steps per chunk of real frames
    reverse: bool = False  # also write each chunk into the memory played backwards (the way back)
    replay: int = 0  # passes over all stored chunks before a decision that follows new frames
    planner: str = "process"  # process: a planner node on the bus (world_model.node); inprocess: in this process
    videos: int = 2
    threads: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        bad = sorted(set(self.conditions) - set(CONDITIONS))
        if bad or not self.conditions:
            raise ValueError(f"conditions must be a non-empty subset of {list(CONDITIONS)}, got {bad or '[]'}")
        if self.planner not in ("process", "inprocess"):
            raise ValueError(f"planner must be process or inprocess, got {self.planner!r}")
        if self.episodes < 1 or self.replan_every < 1 or self.max_frames < 1 or self.score_frames < 1:
            raise ValueError("episodes, replan_every, max_frames and score_frames must be >= 1")


def save_scorer(out: Path, scorer: MarkerScorer, meta: dict) -> None:
    from rdp.checkpoint import save_checkpoint

    save_checkpoint(out, scorer, scorer.cfg)
    (out / "scorer.json").write_text(json.dumps(meta, indent=1) + "\n")


def load_scorer(path: Path) -> MarkerScorer:
    from rdp.checkpoint import config_from_dict, load_checkpoint, load_config

    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no scorer (train one: python -m world_model.plan scorer out={path})")
    _, cfg = load_config(path)
    scorer = MarkerScorer(config_from_dict(ScorerConfig, cfg))
    load_checkpoint(path, scorer)
    return scorer.eval()


def shipped(name: str) -> Path:
    from bus.resources import checkpoint_dir

    return checkpoint_dir() / "world_model" / name


def fit_scorer(cfg: ScorerTrainConfig) -> dict:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    run = Path(cfg.run) if cfg.run else shipped("revisit")
    ae, _, info = load_world_model(run)
    task = MarkerTaskConfig(revisit=RevisitConfig(image_size=info["image_size"]))
    t0 = time.perf_counter()
    n_val = max(1, cfg.episodes // 10)
    train_seeds = range(cfg.seed, cfg.seed + cfg.episodes)
    val_seeds = range(cfg.seed + cfg.episodes, cfg.seed + cfg.episodes + n_val)
    scorer = MarkerScorer(ScorerConfig(image_size=info["image_size"], width=cfg.width))
    if cfg.source == "imagined":
        from world_model.node import build_planner

        planner = build_planner(str(run), "", cfg.memory, 0, cfg.score_frames, cfg.lora_rank, cfg.lora_lr,
                                cfg.lora_steps, cfg.reverse, cfg.replay, scorer_model=scorer)
        frames, labels = imagined_frames(task, train_seeds, planner, cfg.progress)
        val_frames, val_labels = imagined_frames(task, val_seeds, planner, cfg.progress)
        history = train_scorer(scorer, frames, labels, None, cfg.steps, cfg.batch, cfg.lr, cfg.seed, cfg.progress)
        k, f = task.candidates, cfg.score_frames
        val_scores = scorer.score(val_frames).reshape(-1, k, f).mean(2)
        answers = val_labels.reshape(-1, k, f)[:, :, 0].argmax(1)
        acc = {"imagined": float(((scorer.score(val_frames) > 0.5) == (val_labels > 0.5)).mean()),
               "top1": float((val_scores.argmax(1) == answers).mean())}
    else:
        frames, labels = scorer_frames(task, train_seeds, cfg.per_episode)
        val_frames, val_labels = scorer_frames(task, val_seeds, cfg.per_episode, np.random.default_rng(1))
        history = train_scorer(scorer, frames, labels, ae, cfg.steps, cfg.batch, cfg.lr, cfg.seed, cfg.progress)
        acc = {name: float(((scorer.score(f) > 0.5) == (val_labels > 0.5)).mean())
               for name, f in (("real", val_frames), ("autoencoder", autoencoder_roundtrip(ae, val_frames)))}
    args = " ".join(f"{k}={v}" for k, v in asdict(cfg).items() if k not in ("progress", "threads") and v != "")
    meta = {"command": f"python -m world_model.plan scorer {args}",
            "world_model": str(run), "train_frames": len(frames), "positive": float(labels.mean()),
            "validation_accuracy": acc, "loss": history, "seconds": round(time.perf_counter() - t0, 1),
            "params": sum(p.numel() for p in scorer.parameters())}
    save_scorer(Path(cfg.out), scorer, meta)
    return {"out": cfg.out, **{k: meta[k] for k in ("validation_accuracy", "seconds", "params")}}


def imagined_frames(task: MarkerTaskConfig, seeds: range, planner: WorldModelPlanner,
                    progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The planner's imagined end frames (its last ``score_frames``) of every candidate plan at the task's first
    decision, episode by episode: frames (E * K * F, S, S, 3) uint8 and labels (1: the candidate is the marker's
    spot), in episode, candidate, frame order."""
    from tqdm import tqdm

    frames, labels = [], []
    for seed in tqdm(seeds, desc="imagine", unit="ep", disable=not progress):
        with MarkerWorld(task, seed) as world:
            seen, actions = world.seen()
            planner.reset(seed=seed)
            planner.observe(seen, actions)
            planner.consolidate()
            pos = world.path[-1]
            imagined = planner.imagine(displacements_batch(world.plans(pos), pos))[:, -planner.score_frames:]
            frames.append(imagined.reshape(-1, *imagined.shape[2:]))
            truth = (np.arange(len(imagined)) == world.answer).astype(np.float32)
            labels.append(np.repeat(truth, imagined.shape[1]))
    return np.concatenate(frames), np.concatenate(labels)


def run_episode(world: MarkerWorld, condition: str, planner: WorldModelPlanner | Any, scorer: MarkerScorer,
                cfg: PlanConfig, rng: np.random.Generator, video: bool = False) -> tuple[dict, dict]:
    """One episode under ``condition``: (its row, what the video needs: filled where ``video``)."""
    seen, seen_actions = world.seen()
    pos = world.path[-1].copy()
    row: dict = {"seed": world.seed, "answer": world.answer, "decisions": 0, "decision_s": 0.0}
    media: dict = {"seen": seen}
    if condition in WORLD_MODEL_CONDITIONS:
        planner.reset(seed=world.seed)
        planner.observe(seen, seen_actions)
        frames_used, choices = 0, []
        while frames_used < cfg.max_frames:
            plans = world.plans(pos)
            decision = planner.decide(displacements_batch(plans, pos))
            row["decisions"] += 1
            row["decision_s"] += decision.seconds
            choices.append(decision.index)
            row.setdefault("first_scores", [round(float(v), 4) for v in decision.scores])
            if video and "imagined" not in media:
                media.update(imagined=decision.imagined, real=world.render_path(plans.reshape(-1, 3)).reshape(
                    *plans.shape[:2], *seen.shape[1:]), chosen=decision.index, scores=decision.scores)
            take = plans[decision.index][:min(cfg.replan_every, cfg.max_frames - frames_used)]
            prev = np.concatenate([[pos], take[:-1]])
            moved = take[np.linalg.norm(take - prev, axis=1) > 1e-9]
            if len(moved) == 0:  # standing on the destination it chose
                break
            real = world.render_path(moved)
            planner.observe(real, displacements(moved, pos))
            frames_used += len(moved)
            pos = moved[-1]
        row.update(choices=choices, frames=frames_used, memory_updates=planner.updates,
                   memory_update_s=round(planner.update_seconds, 4))
        chosen = choices[-1] if choices else -1
    else:
        t0 = time.perf_counter()
        if condition == "current_view":
            chosen = int(rng.integers(len(world.destinations)))
        elif condition == "true_frames":  # the real view at every destination (a held frame repeats it)
            ends = world.render_path(np.column_stack([world.destinations, np.full(len(world.destinations), pos[2])]))
            chosen = int(np.argmax(scorer.score(ends)))
        else:  # frame_buffer
            best = world.path[int(np.argmax(scorer.score(seen)))]
            chosen = int(np.argmin(np.linalg.norm(world.destinations - best[:2], axis=1)))
        row["decision_s"] = time.perf_counter() - t0
        row["decisions"] = 1
        pos = np.array([*world.destinations[chosen], pos[2]])  # the straight path's end
    row.update(chosen=chosen, success=world.success(pos), final_error_m=round(float(np.linalg.norm(
        pos[:2] - world.marker)), 4))
    return row, media


def displacements_batch(plans: np.ndarray, start: np.ndarray) -> np.ndarray:
    return np.stack([displacements(p, start) for p in plans])


def write_plan_video(path: Path, media: dict, answer: int, scale: int = 4) -> None:
    """Seen frames, then each candidate's real | imagined path, one row per candidate."""
    import imageio.v2 as imageio

    seen, real, imagined = media["seen"], media["real"], media["imagined"]
    k, length, s = real.shape[0], real.shape[1], real.shape[2]
    gap = 2

    def tile(rows: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([np.pad(r, ((gap, gap), (gap, gap), (0, 0)), constant_values=255) for r in rows], 0)

    with imageio.get_writer(path, fps=6, macro_block_size=1) as w:
        blank = np.full((s, s, 3), 255, np.uint8)
        for f in seen:
            rows = [np.concatenate([f if i == 0 else blank, blank], 1) for i in range(k)]
            w.append_data(cv2.resize(tile(rows), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST))
        for t in range(length):
            rows = []
            for i in range(k):
                row = np.concatenate([real[i, t], imagined[i, t]], 1).copy()
                colour = (0, 200, 0) if i == answer else (255, 140, 0) if i == media["chosen"] else None
                if colour:
                    cv2.rectangle(row, (0, 0), (row.shape[1] - 1, row.shape[0] - 1), colour, 1)
                rows.append(row)
            w.append_data(cv2.resize(tile(rows), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST))


@contextmanager
def _planner(cfg: PlanConfig, condition: str, run: Path, out: Path) -> Iterator[Any]:
    """The planner of a world-model condition (None for the others): in this process, or a planner node
    (``world_model.node``) started for the condition and stopped after it."""
    if condition not in WORLD_MODEL_CONDITIONS:
        yield None
        return
    from world_model.node import open_planner

    with open_planner(cfg.planner == "process", out / f"planner-{condition}.log", str(run), cfg.scorer,
                      condition == "temp_lora", cfg.context, cfg.score_frames, cfg.lora_rank, cfg.lora_lr,
                      cfg.lora_steps, cfg.reverse, cfg.replay, cfg.threads) as planner:
        yield planner


def evaluate(cfg: PlanConfig) -> dict:
    from tqdm import tqdm

    from sim.eval import wilson_interval

    torch.set_num_threads(cfg.threads)
    run = Path(cfg.run) if cfg.run else shipped("revisit")
    ae, model, info = load_world_model(run)
    scorer = load_scorer(Path(cfg.scorer) if cfg.scorer else shipped("marker_scorer"))
    task = MarkerTaskConfig(revisit=RevisitConfig(image_size=info["image_size"]), candidates=cfg.candidates)
    if scorer.cfg.image_size != task.revisit.image_size:
        raise UsageError(f"the scorer reads {scorer.cfg.image_size}px frames, the world model makes "
                         f"{task.revisit.image_size}px")
    if task.revisit.dwell <= model.cfg.context_frames:
        raise UsageError(f"the dwell ({task.revisit.dwell} frames) must exceed the model's context")
    out = Path(cfg.out) if cfg.out else Path("outputs/world_model") / f"plan-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"config": asdict(cfg), "world_model": str(run), "conditions": {}}
    for condition in cfg.conditions:
        rng = np.random.default_rng(cfg.seed)
        rows = []
        with _planner(cfg, condition, run, out) as planner:
            for e in tqdm(range(cfg.episodes), desc=condition, unit="ep", disable=not cfg.progress):
                with MarkerWorld(task, cfg.seed + e) as world:
                    row, media = run_episode(world, condition, planner, scorer, cfg, rng, video=e < cfg.videos)
                rows.append(row)
                if "imagined" in media:
                    write_plan_video(out / f"{condition}-ep{e}.mp4", media, row["answer"])
        wins = sum(r["success"] for r in rows)
        decisions = sum(r["decisions"] for r in rows)
        seconds = sum(r["decision_s"] for r in rows)
        summary = {"success": wins / len(rows), "wilson95": [round(v, 4) for v in wilson_interval(wins, len(rows))],
                   "episodes": len(rows), "decisions": decisions,
                   "decisions_per_s": round(decisions / seconds, 2) if seconds > 0 else None}
        if condition == "temp_lora":
            updates = sum(r["memory_updates"] for r in rows)
            # one local update writes one chunk (and its reversed copy with reverse=true); replay passes count too
            summary["memory_update_ms"] = round(1000 * sum(r["memory_update_s"] for r in rows) / max(updates, 1), 2)
            summary["memory_updates_per_episode"] = round(updates / len(rows), 1)
        results["conditions"][condition] = {"summary": summary, "episodes": rows}
        (out / "metrics.json").write_text(json.dumps(results, indent=1) + "\n")
    return {"out": str(out), **{c: v["summary"] for c, v in results["conditions"].items()}}


@command("world_model.plan")
def main(argv: Sequence[str] | None = None) -> int:
    verb, rest = split_verb(list(sys.argv[1:] if argv is None else argv), ["scorer", "eval"], "world_model.plan",
                            "eval episodes=50", __doc__)
    if verb == "scorer":
        cfg = compose(ScorerTrainConfig, "world_model/scorer", rest, "marker scorer training", "out=DIR")
        if not cfg.out:
            raise UsageError("out=DIR is required")
        print(json.dumps(fit_scorer(cfg)))
        return 0
    pcfg = compose(PlanConfig, "world_model/plan", rest, "world-model planning", "episodes=50")
    print(json.dumps(evaluate(pcfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
