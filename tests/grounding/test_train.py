"""The staged grounding training on tiny sizes: the backbone stage saves encoder, tokenizer and model; the token
cache covers every recorded frame; the language-model stage resumes to the very weights of an uninterrupted run in
every mode; evaluation writes its documented JSON; a cache of another backbone and missing inputs are refused.

Episodes are synthetic (noise frames, hand-written metas in the recorded format), so nothing is simulated."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

import grounding.train as gtrain
from grounding import evaluate as geval
from grounding.data import FORMAT, INDEX, episode_path, resample, write_episode
from grounding.instructions import KINDS
from grounding.model import MODES, load
from grounding.text import InstructionTokenizer
from grounding.train import TokenCache, load_backbone
from rdp.checkpoint import save_checkpoint

SIZE, HZ = 32, 16.0
TASKS = ("wipe", "peel", "lift", "wipe")
FRAMES = (20, 26, 23, 17)
TINY = ["model.width=32", "model.layers=2", "model.heads=2", "model.hybrid_layers=[1]", "model.fast_frames=4",
        "encoder.width=8", "encoder.depth=2", "batch=4", "rounds=2", "log_every=1", "progress=false"]
GOALS = {"wipe": {"region": "left", "force": "firm"}, "peel": {"region": "right"},
         "lift": {"height": "normal", "grip": "gentle"}}
SHOWN = {"wipe": {"region": "left"}, "peel": {"region": "right"}, "lift": {"height": "normal"}}
EVENTS = {"wipe": ("contact_onset", "mark_wiped", "mark_wiped"), "peel": ("contact_onset", "strip_peeled"),
          "lift": ("contact_onset", "box_lifted", "box_top")}


def write_episodes(root: Path) -> None:
    """Episodes in grounding.data's format: noise frames at 16 Hz, a meta with goal, shown fields and events."""
    rng = np.random.default_rng(0)
    rows = []
    for k, (task, n) in enumerate(zip(TASKS, FRAMES, strict=True)):
        times = np.round(np.arange(n) / HZ, 6)
        duration = float(times[-1])
        events = [{"kind": kind, "t": round(duration * (i + 1) / 4, 6), "visible": True}
                  for i, kind in enumerate(EVENTS[task])]
        meta = {"format": FORMAT, "index": k, "task": task, "seed": 700 + k, "looks": "train", "image_size": SIZE,
                "frame_hz": HZ, "max_seconds": None, "goal": {"name": "-".join(GOALS[task].values()),
                                                              "fields": GOALS[task]},
                "success": True, "cut": False, "duration": duration, "frames": n, "events": events,
                "outcome": {}, "shown": SHOWN[task]}
        frames = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
        write_episode(episode_path(root, k), frames, times, meta)
        rows.append({"file": episode_path(root, k).name, "index": k, "task": task})
    recording = {"tasks": list(TASKS), "seed": 700, "image_size": SIZE, "frame_hz": HZ, "looks": "train",
                 "max_seconds": None}
    (root / INDEX).write_text(json.dumps({"format": FORMAT, "recording": recording, "episodes": rows}))


def train(*args: str) -> int:
    return gtrain.main([*args, *TINY])


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """Episodes, a backbone run (3 steps) and the token cache it makes of the episodes."""
    root = tmp_path_factory.mktemp("grounding-train")
    data, backbone, cache = root / "episodes", root / "backbone", root / "tokens.npz"
    data.mkdir()
    write_episodes(data)
    assert train("stage=backbone", f"data={data}", f"out={backbone}", "frames=4", "steps=3") == 0
    assert gtrain.main(["stage=cache", f"backbone={backbone}", f"data={data}", f"out={cache}", "chunk=7",
                        "progress=false"]) == 0
    return {"root": root, "data": data, "backbone": backbone, "cache": cache}


def weights(run: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(run / "model" / "model.safetensors"))


def test_backbone_stage_saves_encoder_tokenizer_and_model(setup):
    run = setup["backbone"]
    info = json.loads((run / "run.json").read_text())
    assert info["stage"] == "backbone" and info["mode"] == "full" and info["frames"] == 4
    assert info["steps"] == 3 and info["wall_s"] > 0 and info["image_size"] == SIZE
    assert info["data"]["split"] == "train" and info["data"]["episodes"] == len(TASKS)
    backbone = load_backbone(run)
    assert backbone.config["image_size"] == SIZE and backbone.encoder.feature_dim == 8
    assert info["backbone"]["sha256"] == backbone.sha256
    tokenizer = InstructionTokenizer.load(run / "tokenizer.json")
    model, model_tokenizer = load(run / "model")
    assert model.cfg.mode == "full" and model.cfg.vocab_size == tokenizer.vocab_size == model_tokenizer.vocab_size
    steps = [row["step"] for row in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in row]
    assert steps == [1, 2, 3]
    images = torch.zeros(1, 2, 3, SIZE, SIZE, dtype=torch.uint8)
    assert backbone.encoder(images).shape == (1, 2, 16, 8)


def test_cache_covers_every_recorded_frame(setup):
    cache = TokenCache.load(setup["cache"])
    backbone = load_backbone(setup["backbone"])
    assert cache.tokens.shape == (sum(FRAMES), 16, 8) and cache.tokens.dtype == np.float16
    assert np.diff(cache.offsets).tolist() == list(FRAMES)
    assert [m["task"] for m in cache.episodes] == list(TASKS)
    assert cache.meta["backbone"]["sha256"] == backbone.sha256
    # Episode 1's tokens are the encoder's on its frames, and resampling picks frames by grounding.data.resample.
    from grounding.data import read_episode

    frames, times, meta = read_episode(episode_path(setup["data"], 1))
    with torch.no_grad():
        expected = backbone.encoder(torch.from_numpy(frames).permute(0, 3, 1, 2)[None])[0].numpy()
    a, b = cache.offsets[1], cache.offsets[2]
    np.testing.assert_allclose(cache.tokens[a:b].astype(np.float32), expected, rtol=1e-2, atol=1e-2)
    picked, _ = resample(cache.tokens[a:b], times, meta["duration"], 7)
    assert np.array_equal(cache.video(1, 7), picked.astype(np.float32))
    assert cache.videos(5).shape == (len(TASKS), 5, 16, 8)


@pytest.mark.parametrize("mode", MODES)
def test_lm_stage_resumes_to_the_weights_of_an_uninterrupted_run(setup, mode, monkeypatch):
    root = setup["root"] / f"lm-{mode}"
    common = ["stage=lm", f"cache={setup['cache']}", f"backbone={setup['backbone']}", f"mode={mode}", "frames=6",
              "steps=4", "checkpoint_every=2", "warmup=1"]
    assert train(*common, f"out={root / 'straight'}") == 0

    real = gtrain.batch_rows

    def killed_at_step_3(seed, step, n, batch):
        if step == 3:
            raise RuntimeError("killed")
        return real(seed, step, n, batch)

    monkeypatch.setattr(gtrain, "batch_rows", killed_at_step_3)
    with pytest.raises(RuntimeError, match="killed"):
        train(*common, f"out={root / 'resumed'}")
    monkeypatch.setattr(gtrain, "batch_rows", real)
    assert not (root / "resumed" / "model").exists()
    assert train(*common, f"out={root / 'resumed'}", "resume=true") == 0

    straight, resumed = weights(root / "straight"), weights(root / "resumed")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    rows = [json.loads(line) for line in (root / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    info = json.loads((root / "resumed" / "run.json").read_text())
    assert info["steps"] == 4 and info["mode"] == mode and info["frames"] == 6
    assert info["backbone"]["sha256"] == load_backbone(setup["backbone"]).sha256


def test_evaluate_writes_the_documented_json(setup, capsys):
    run = setup["root"] / "lm-eval"
    assert train("stage=lm", f"cache={setup['cache']}", f"backbone={setup['backbone']}", "mode=slowfast",
                 "frames=6", "steps=2", f"out={run}") == 0
    out = setup["root"] / "eval.json"
    assert geval.main([f"run={run}", f"cache={setup['cache']}", f"out={out}", "latency_samples=3",
                       "progress=false"]) == 0
    result = json.loads(out.read_text())
    assert {"format", "run", "cache", "split", "mode", "frames", "trained_frames", "episodes", "samples", "metrics",
            "flops", "latency", "backbone", "data"} <= set(result)
    assert result["split"] == "heldout" and result["mode"] == "slowfast" and result["frames"] == 6
    assert set(result["metrics"]["by_kind"]) <= set(KINDS)
    for table in [result["metrics"]["overall"], *result["metrics"]["by_kind"].values()]:
        assert set(table) == set(geval.METRICS)
        for entry in table.values():
            lo, hi = entry["ci95"]
            assert 0.0 <= lo <= hi <= 1.0 and 0 <= entry["correct"] <= entry["n"]
            assert entry["accuracy"] is None or lo <= entry["accuracy"] <= hi
    overall = result["metrics"]["overall"]
    assert overall["all_right"]["n"] == result["samples"] > 0 and overall["task"]["n"] == result["samples"]
    assert overall["keyframe_exact"]["n"] == result["metrics"]["by_kind"]["when"]["all_right"]["n"] > 0
    assert result["flops"]["lm_prefill"] > 0 and result["flops"]["frame_encoder_per_frame"] > 0
    assert result["latency"]["median_ms"] > 0
    assert "slowfast T=6" in capsys.readouterr().err
    table = geval.render_table([result])
    assert "| slowfast |" in table and "T=6" in table


def test_a_cache_of_another_backbone_is_refused(setup, capsys):
    other = setup["root"] / "other-backbone"
    shutil.copytree(setup["backbone"], other)
    backbone = load_backbone(other)
    with torch.no_grad():
        next(backbone.encoder.parameters()).add_(0.1)
    save_checkpoint(other / "backbone", backbone.encoder, backbone.config)
    cache = setup["root"] / "other-tokens.npz"
    assert gtrain.main(["stage=cache", f"backbone={other}", f"data={setup['data']}", f"out={cache}",
                        "progress=false"]) == 0
    capsys.readouterr()
    assert train("stage=lm", f"cache={cache}", f"backbone={setup['backbone']}", "mode=fast_only", "steps=1",
                 f"out={setup['root'] / 'refused'}") == 2
    assert "was made by the backbone" in capsys.readouterr().err
    assert not (setup["root"] / "refused").exists()
    assert geval.main([f"run={setup['backbone']}", f"cache={cache}", "progress=false"]) == 2
    assert "was made by the backbone" in capsys.readouterr().err


def test_missing_inputs_name_the_command_that_makes_them(setup, capsys):
    nowhere = setup["root"] / "nowhere"
    assert train("stage=lm", f"cache={nowhere}.npz", f"backbone={setup['backbone']}", "mode=full",
                 f"out={nowhere}") == 2
    assert "python -m grounding.train stage=cache" in capsys.readouterr().err
    assert train("stage=cache", f"backbone={nowhere}", f"data={setup['data']}", f"out={nowhere}.npz") == 2
    assert "python -m grounding.train stage=backbone" in capsys.readouterr().err
    assert train("stage=backbone", f"data={nowhere}", f"out={nowhere}") == 2
    assert "python -m grounding.data" in capsys.readouterr().err
    assert geval.main([f"run={nowhere}", f"cache={setup['cache']}"]) == 2
    assert "python -m grounding.train stage=lm" in capsys.readouterr().err
    assert train("stage=backbone", f"data={setup['data']}", f"out={setup['backbone']}", "steps=1") == 2
    assert "already holds a training run" in capsys.readouterr().err
