"""Check our LeRobot v3 export and import against the real ``lerobot`` package (``make check-lerobot``).

Our tests read exports with a reader of our own; this script asks LeRobot itself. It runs in two interpreters:
the project's (record, export, import, rdp) and a separate Python >= 3.12 venv with ``lerobot[dataset]==0.6.1``
(the ``probe`` and ``write`` modes, which import only lerobot, torch and numpy). Steps:

1. record ``episodes`` scripted-expert episodes with cameras (``teleop.record_expert``) and export them
   (``dataset.lerobot``, default fps = the training rate), ``gripper_width`` as its own 1-wide (scalar) feature;
2. ``probe``: ``LeRobotDataset(repo_id, root=EXPORT)`` -- every frame indexed and decoded (the default video backend,
   and pyav), values equal to the parquet's, scalar features as 0-d tensors, ``delta_timestamps`` on action, state
   and a camera, a shuffled ``DataLoader`` batch, per-episode stats against LeRobot's own ``compute_episode_stats``
   and ``aggregate_stats``, and LeRobot's ``delete_episodes`` / ``split_dataset`` (their ``stats.json`` must hold
   every feature);
3. ``write``: a dataset written by LeRobot's own writer with the streams rdp.train needs, imported with
   ``dataset.lerobot_import`` and loaded by ``rdp.data.load_episodes`` into training windows;
4. the export imported back: every stream equals ``build``'s resampling of the recording at the export's fps.

    python -m benchmarks.check_lerobot [lerobot_python=outputs/check-lerobot/venv/bin/python] [episodes=3]

Prints a summary; writes ``benchmarks/results/check_lerobot.json`` (``out``); exits 1 when a check fails. The lerobot
venv's steps run as ``python -m benchmarks.check_lerobot probe|write root=DIR work=DIR`` (that venv has no hydra:
these two read their ``key=value`` arguments themselves).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bus.cli import UsageError, command
from bus.config import compose

ROOT = Path(__file__).resolve().parent.parent
REPO_ID = "local/slowfast_check"
CHILD_MODES = ("probe", "write")


@dataclass
class CheckConfig:
    """``configs/benchmarks/check_lerobot.yaml``."""

    lerobot_python: str = "outputs/check-lerobot/venv/bin/python"  # the venv with lerobot[dataset]==0.6.1
    work: str = "outputs/check-lerobot/run"  # recordings, exports and logs (emptied first)
    out: str = "benchmarks/results/check_lerobot.json"
    episodes: int = 3
    max_steps: int = 150  # control steps per episode (50 Hz)

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.max_steps < 1:
            raise UsageError(f"episodes={self.episodes} and max_steps={self.max_steps} must be >= 1")


# ----------------------------------------------------------------------------------------------- our side


def run(args: CheckConfig) -> int:
    """Steps 1-4 from the project's interpreter; the LeRobot steps in a child process of ``lerobot_python``."""
    import numpy as np

    from dataset.format import build_training_set, load_training_episode
    from dataset.lerobot import TRAINING_RATE_HZ, export_lerobot
    from dataset.lerobot_import import import_lerobot
    from rdp.data import load_episodes, make_windows
    from teleop.record_expert import RecordConfig, record_expert_episodes

    work = Path(args.work).absolute()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    report: dict = {"lerobot_python": args.lerobot_python, "fps": TRAINING_RATE_HZ}
    started = time.perf_counter()
    record_expert_episodes(RecordConfig(task="wipe", episodes=args.episodes, seed=0, out=str(work / "demo"),
                                        cameras=True, image_size=64, max_steps=args.max_steps, progress=False))
    # gripper_width outside observation.state: a 1-wide feature, the shape LeRobot stores as a plain scalar column
    report["export"] = export_lerobot(work / "demo", work / "export", state=["tcp_pos", "tcp_quat"])
    report["probe"] = _child(args, "probe", work / "export", work)
    scalar = "observation.gripper_width" in report["probe"].get("scalar_features", [])
    report["probe"].setdefault("checks", {})["observation.gripper_width is a scalar feature"] = scalar
    report["probe"]["ok"] = report["probe"]["ok"] and scalar
    report["native_write"] = _child(args, "write", work / "native", work)

    imported = import_lerobot(work / "native", work / "native_imported")
    episodes = load_episodes(work / "native_imported", float(TRAINING_RATE_HZ))
    windows = make_windows(episodes, obs_steps=2, horizon=16)
    report["native_import"] = {"streams": imported["streams"], "episodes": imported["episodes"],
                               "rdp_windows": len(windows), "rdp_num_arms": episodes.num_arms,
                               "rdp_num_pads": episodes.num_pads, "ok": len(windows) > 0}

    import_lerobot(work / "export", work / "roundtrip", require=[])
    original = build_training_set(work / "demo", float(TRAINING_RATE_HZ), work / "built_original")
    again = build_training_set(work / "roundtrip", float(TRAINING_RATE_HZ), work / "built_roundtrip",
                               streams=list(original["streams"]))
    # Low-dim: the largest difference anywhere; cameras (H.264 is lossy): the worst frame's mean absolute difference.
    cameras = [n for n, s in original["streams"].items() if s["dtype"] == "|u1"]
    worst: dict[str, float] = {}
    for a, b in zip(original["episodes"], again["episodes"], strict=True):
        x = load_training_episode(work / "built_original" / a["file"])
        y = load_training_episode(work / "built_roundtrip" / b["file"])
        for name in original["streams"]:
            if x[name].shape != y[name].shape:
                worst[name] = float("inf")
                continue
            diff = np.abs(x[name].astype(np.float64) - y[name].astype(np.float64))
            diff = diff.reshape(len(diff), -1).mean(1) if name in cameras else diff
            worst[name] = max(worst.get(name, 0.0), float(diff.max(initial=0.0)))
    report["roundtrip"] = {
        "max_abs_diff": {n: v for n, v in worst.items() if n not in cameras},
        "camera_worst_frame_mean_abs_diff": {n: round(worst[n], 2) for n in cameras},
        "ok": all(v <= (8.0 if n in cameras else 1e-5 * (1 + _scale(work, n))) for n, v in worst.items()),
    }
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["ok"] = all(report[k]["ok"] for k in ("probe", "native_write", "native_import", "roundtrip"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1).replace(f"{ROOT}/", "") + "\n")  # paths relative to the repository
    _print_summary(report, out)
    return 0 if report["ok"] else 1


def _scale(work: Path, stream: str) -> float:
    """Largest magnitude of a stream in the original recording (float32 rounding is relative to it)."""
    import numpy as np

    from dataset.format import list_episodes, load_stream

    return max(float(np.abs(load_stream(ep, stream)[1]).max(initial=0.0)) for ep in list_episodes(work / "demo"))


def _child(args: CheckConfig, mode: str, root: Path, work: Path) -> dict:
    """Run ``mode`` in the lerobot venv (offline, caches under ``work``); its last stdout line is JSON."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(work / "hf"),
                        "HF_LEROBOT_HOME": str(work / "hf_lerobot"), "PYTHONPATH": str(ROOT)}
    python = str(Path(args.lerobot_python).absolute())  # not resolve(): a venv's python is a symlink
    cmd = [python, "-m", "benchmarks.check_lerobot", mode, f"root={root}", f"work={work}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    (work / f"{mode}.log").write_text(proc.stdout + proc.stderr)
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        result = {"ok": False, "error": f"{mode} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    return result


def _print_summary(report: dict, out: Path) -> None:
    probe = report["probe"]
    print(f"lerobot {probe.get('lerobot_version')} / torch {probe.get('torch_version')}"
          f" (video backend {probe.get('video_backend')}), fps {report['fps']}")
    for name in ("probe", "native_write", "native_import", "roundtrip"):
        part = report[name]
        print(f"  {name:<14} {'ok' if part['ok'] else 'FAILED'}  {part.get('error', '')}")
        for check, passed in part.get("checks", {}).items():
            print(f"      {'ok    ' if passed is True else 'FAILED'} {check}")
    print(f"{'PASS' if report['ok'] else 'FAIL'} in {report['seconds']} s -> {out}")


# ----------------------------------------------------------------------------------------------- lerobot side


def probe(root: Path, work: Path) -> dict:
    """Load our export with LeRobot 0.6.1 and use it the way a LeRobot user would."""
    import lerobot
    import numpy as np
    import pandas as pd
    import torch
    from lerobot.datasets.compute_stats import aggregate_stats, compute_episode_stats
    from lerobot.datasets.dataset_tools import delete_episodes, split_dataset
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
    from lerobot.utils.import_utils import get_safe_default_video_backend

    checks: dict[str, bool | str] = {}
    facts: dict = {"lerobot_version": lerobot.__version__, "torch_version": torch.__version__,
                   "video_backend": get_safe_default_video_backend()}

    def check(name: str, fn) -> None:  # noqa: ANN001 - a zero-argument callable returning bool
        try:
            checks[name] = bool(fn())
        except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the other checks
            checks[name] = f"{type(e).__name__}: {e}"[:500]

    meta = LeRobotDatasetMetadata(REPO_ID, root=root)
    fps, features = meta.fps, meta.features
    scalars = [k for k, f in features.items() if f["dtype"] not in ("video", "image") and tuple(f["shape"]) == (1,)]
    cameras = meta.video_keys
    facts |= {"fps": fps, "total_frames": meta.total_frames, "total_episodes": meta.total_episodes,
              "scalar_features": scalars, "video_keys": cameras}
    check("stats.json has every feature with q01..q99",
          lambda: all(set(meta.stats[k]) >= {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
                      for k in features))

    data = pd.concat([pd.read_parquet(p) for p in sorted((root / "data").glob("*/*.parquet"))])
    timings: dict[str, float] = {}
    for backend in dict.fromkeys([facts["video_backend"], "pyav"]):
        def every_frame(backend: str = backend) -> bool:
            t0 = time.perf_counter()
            ds = LeRobotDataset(REPO_ID, root=root, video_backend=backend)
            assert len(ds) == meta.total_frames, (len(ds), meta.total_frames)
            for i in range(len(ds)):
                item = ds[i]
                for key in scalars:
                    assert item[key].shape == (), (key, item[key].shape)
                for key in cameras:
                    h, w, c = features[key]["shape"]
                    assert item[key].shape == (c, h, w), (key, item[key].shape)
                row = data.iloc[i]
                np.testing.assert_array_equal(item["action"].numpy(), np.asarray(row["action"], np.float32))
                np.testing.assert_array_equal(item["observation.state"].numpy(),
                                              np.asarray(row["observation.state"], np.float32))
            timings[backend] = round(time.perf_counter() - t0, 2)
            return True
        check(f"every frame indexed and decoded ({backend})", every_frame)
    facts["seconds_all_frames"] = timings

    horizon = 16
    delta = {"action": [k / fps for k in range(horizon)], "observation.state": [-1 / fps, 0.0],
             **{key: [-1 / fps, 0.0] for key in cameras}}

    def with_deltas() -> bool:
        ds = LeRobotDataset(REPO_ID, root=root, delta_timestamps=delta)
        item = ds[len(ds) - 1]  # the last frame: action steps past the end are padding
        assert item["action"].shape == (horizon, features["action"]["shape"][0]), item["action"].shape
        assert item["observation.state"].shape == (2, features["observation.state"]["shape"][0])
        assert bool(item["action_is_pad"][1:].all()) and not bool(item["action_is_pad"][0])
        for key in cameras:
            assert item[key].shape[0] == 2, item[key].shape
        loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True, num_workers=0)
        batch = next(iter(loader))
        facts["batch_shapes"] = {k: list(v.shape) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        return batch["action"].shape == (8, horizon, features["action"]["shape"][0])
    check("delta_timestamps (action 16 steps, state and cameras 2) and a DataLoader batch", with_deltas)

    episodes = pd.concat([pd.read_parquet(p) for p in sorted((root / "meta" / "episodes").glob("*/*.parquet"))])

    def stats_match() -> bool:
        per_episode = []
        for _, ep in episodes.iterrows():
            rows = data[data["episode_index"] == ep["episode_index"]]
            buffer = {k: np.stack(rows[k].to_numpy()) if features[k]["shape"] != (1,) else rows[k].to_numpy()
                      for k in features if features[k]["dtype"] not in ("video", "image")}
            theirs = compute_episode_stats(buffer, {k: features[k] for k in buffer})
            ours = {k: {s: np.asarray(ep[f"stats/{k}/{s}"].tolist(), dtype=np.float64) for s in theirs[k]}
                    for k in theirs}
            for k in theirs:
                # Quantiles: ours interpolate order statistics (numpy), LeRobot's a 5000-bin histogram at q * N;
                # both lie within one gap between neighbouring sorted values (plus a bin) of each other.
                x = np.sort(np.asarray(buffer[k], np.float64).reshape(len(rows), -1), axis=0)
                gap = (np.diff(x, axis=0).max(0) if len(x) > 1 else 0) + (x[-1] - x[0]) / 5000
                for s, value in theirs[k].items():
                    if s.startswith("q"):
                        tol = gap.reshape(value.shape) + 1e-6
                    elif s == "std":  # theirs is sqrt(E[x^2] - E[x]^2) in float32 for float32 data: a constant
                        # column of mean m comes out as up to ~sqrt(eps32) * |m| (ours, in float64, as 0)
                        tol = 4e-3 * np.abs(theirs[k]["mean"]) + 1e-4 * value + 1e-9
                    else:
                        tol = 1e-5 * np.abs(value) + 1e-9
                    diff = np.abs(ours[k][s] - value)
                    assert np.all(diff <= tol), f"{k}/{s}: ours {ours[k][s]}, lerobot's {value}"
            per_episode.append({k: {s: np.atleast_1d(v) for s, v in ours[k].items()} for k in ours})
        pooled = aggregate_stats(per_episode)
        for k, s in pooled.items():
            for name, value in s.items():
                np.testing.assert_allclose(meta.stats[k][name], value, rtol=1e-6, atol=1e-9, err_msg=f"{k}/{name}")
        return True
    check("per-episode stats equal lerobot's compute_episode_stats; stats.json its aggregate_stats", stats_match)

    def tools() -> bool:
        ds = LeRobotDataset(REPO_ID, root=root)
        kept = delete_episodes(ds, episode_indices=[0], output_dir=work / "lerobot_deleted",
                               repo_id=f"{REPO_ID}_deleted")
        expected = meta.total_frames - int(episodes.iloc[0]["length"])
        assert kept.meta.total_frames == expected, (kept.meta.total_frames, expected)
        assert set(kept.meta.stats) >= set(features), sorted(set(features) - set(kept.meta.stats))
        assert int(kept.meta.stats["action"]["count"][0]) == expected
        _ = kept[0]
        last = meta.total_episodes - 1
        parts = split_dataset(ds, splits={"train": list(range(last)), "val": [last]}, output_dir=work / "lerobot_split")
        for part in parts.values():
            assert set(part.meta.stats) >= set(features)
            _ = part[len(part) - 1]
        facts["split_frames"] = {name: len(part) for name, part in parts.items()}
        return True
    check("lerobot delete_episodes and split_dataset keep full stats.json", tools)

    return facts | {"checks": checks, "ok": all(v is True for v in checks.values())}


def write_native(root: Path, work: Path) -> dict:
    """A dataset written by LeRobot's own writer with the streams rdp.train reads (one arm, two tactile pads)."""
    import numpy as np
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from sensors.types import MARKER_COLS, MARKER_ROWS

    fps, size = 25, 64
    offsets = 2 * MARKER_ROWS * MARKER_COLS * 2  # 2 pads x R x C markers x 2-D
    features = {
        "observation.tcp_pos": {"dtype": "float32", "shape": (3,), "names": ["x", "y", "z"]},
        "observation.tcp_quat": {"dtype": "float32", "shape": (4,), "names": ["w", "x", "y", "z"]},
        "observation.gripper_width": {"dtype": "float32", "shape": (1,), "names": ["width"]},
        "observation.wrench": {"dtype": "float32", "shape": (6,), "names": None},
        "observation.marker_offset": {"dtype": "float32", "shape": (offsets,), "names": None},
        "action": {"dtype": "float32", "shape": (7,), "names": None},
        "observation.images.scene_rgb": {"dtype": "video", "shape": (size, size, 3),
                                         "names": ["height", "width", "channels"]},
    }
    ds = LeRobotDataset.create(REPO_ID, fps=fps, root=root, features=features, use_videos=True, robot_type="sim")
    rng = np.random.default_rng(0)
    lengths = [60, 45]
    for n in lengths:
        for k in range(n):
            s = k / n
            angle = np.pi - 0.2 * s
            pos = np.array([0.4 + 0.1 * s, 0.05 * np.sin(4 * s), 0.2], np.float32)
            frame = {
                "observation.tcp_pos": pos,
                "observation.tcp_quat": np.array([np.cos(angle / 2), np.sin(angle / 2), 0, 0], np.float32),
                "observation.gripper_width": np.array([0.04], np.float32),
                "observation.wrench": rng.normal(size=6).astype(np.float32),
                "observation.marker_offset": rng.normal(scale=1e-4, size=offsets).astype(np.float32),
                "action": np.array([*pos, np.pi, 0, 0, 0.04], np.float32),
                "observation.images.scene_rgb": np.full((size, size, 3), 40 + 3 * k, np.uint8),
                "task": "wipe",
            }
            ds.add_frame(frame)
        ds.save_episode()
    ds.finalize()
    back = LeRobotDataset(REPO_ID, root=root)
    return {"frames": len(back), "episodes": back.meta.total_episodes, "lengths": lengths,
            "video_codec": back.meta.features["observation.images.scene_rgb"]["info"].get("video.codec"),
            "ok": len(back) == sum(lengths)}


@command("benchmarks.check_lerobot")
def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] and args[0] in CHILD_MODES:
        return _child_main(args[0], args[1:])
    cfg = compose(CheckConfig, "benchmarks/check_lerobot", args, "check_lerobot", "episodes=2 max_steps=100")
    return run(cfg)


def _child_main(mode: str, args: Sequence[str]) -> int:
    """``probe`` / ``write`` in the lerobot venv: ``root=DIR work=DIR``, read without hydra (that venv lacks it)."""
    paths = dict(a.split("=", 1) for a in args if "=" in a)
    if sorted(paths) != ["root", "work"] or len(args) != 2:
        raise UsageError(f"{mode} takes root=DIR work=DIR, got {' '.join(args) or 'nothing'}")
    fn = probe if mode == "probe" else write_native
    print(json.dumps(fn(Path(paths["root"]), Path(paths["work"])), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
