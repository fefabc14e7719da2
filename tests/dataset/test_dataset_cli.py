"""``python -m dataset``: info, verify and build (zero-order-hold resampling and its refusals)."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from dataset.cli import main
from dataset.format import list_episodes, load_training_episode
from dataset.recorder import EpisodeRecorder


def _record(root: Path, streams: dict[str, tuple[np.ndarray, np.ndarray]], success: bool = True) -> Path:
    rec = EpisodeRecorder(root, flush_interval_s=0.25)
    rec.begin({"task": "ramp", "seed": 0})
    events = sorted((float(t[i]), n, v[i]) for n, (t, v) in streams.items() for i in range(t.size))
    for t, n, v in events:
        rec.append(n, t, v)
    return rec.commit(success=success)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out.strip().splitlines(), captured.err


def _ramp(rate: float, n: int, start: float = 0.0, width: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Samples i at t = start + i / rate, value i in every column: the value says which sample was held."""
    t = start + np.arange(n) / rate
    return t, np.repeat(np.arange(n, dtype=np.float64)[:, None], width, axis=1)


def test_info_summarises_and_ignores_in_progress(tmp_path: Path, capsys) -> None:
    _record(tmp_path, {"wrench": _ramp(200, 400, width=6), "tcp_pose": _ramp(50, 100, width=7)})
    rec = EpisodeRecorder(tmp_path)
    rec.begin({"task": "ramp"})
    rec.append("wrench", 0.0, np.zeros(6))
    rec.flush()  # left in progress, like a crash
    code, lines, _ = _run(capsys, "info", str(tmp_path))
    assert code == 0 and "1 in progress" in "\n".join(lines)
    info = json.loads(lines[-1])
    assert info["episodes"] == 1 and info["in_progress"] == 1
    assert info["seconds"] == pytest.approx(399 / 200)
    assert info["streams"]["wrench"] == {"rate_hz": 200.0, "dtype": "<f8", "shape": [6], "samples": 400}
    assert info["streams"]["tcp_pose"]["rate_hz"] == 50.0
    rec.abort()


def test_verify_detects_a_changed_byte(tmp_path: Path, capsys) -> None:
    ep = _record(tmp_path, {"wrench": _ramp(200, 100, width=6)})
    assert _run(capsys, "verify", str(tmp_path))[0] == 0
    chunk = next(ep.glob("wrench.*.npz"))
    data = bytearray(chunk.read_bytes())
    data[-100] ^= 0xFF
    chunk.write_bytes(bytes(data))
    code, lines, _ = _run(capsys, "verify", str(tmp_path))
    assert code == 1 and json.loads(lines[-1])["ok"] is False
    assert any("sha256 mismatch" in line and chunk.name in line for line in lines)


def test_build_zero_order_hold_exact_on_ramps(tmp_path: Path, capsys) -> None:
    src, out = tmp_path / "src", tmp_path / "train"
    frames = np.broadcast_to(np.arange(40, dtype=np.uint8)[:, None, None, None], (40, 4, 4, 3))  # frame i is all i
    # power-of-two rates give exact float clocks; the 20 Hz stream checks a non-dividing rate
    _record(src, {
        "wrench": _ramp(256, 512, width=6),               # 0 .. 1.996 s
        "tcp_pose": _ramp(64, 100, start=0.125, width=7),  # starts last: t0 = 0.125
        "scene_rgb": (np.arange(40) / 20, frames),
    })
    code, lines, err = _run(capsys, "build", str(src), "rate=32", "out=" + str(out))
    assert code == 0, err
    ep = load_training_episode(out / "episode_000000.npz")
    t0, t_end = 0.125, min(511 / 256, 0.125 + 99 / 64, 39 / 20)
    n = int((t_end - t0) * 32) + 1
    k = np.arange(n)
    np.testing.assert_array_equal(ep["timestamp"], t0 + k / 32)
    np.testing.assert_array_equal(ep["wrench"], np.repeat((32 + 8 * k)[:, None], 6, axis=1).astype(float))
    np.testing.assert_array_equal(ep["tcp_pose"][:, 0], 2 * k)
    # latest 20 Hz sample at or before t_k (no look-ahead), by exact rational arithmetic
    expected = [int((Fraction(1, 8) + Fraction(int(i), 32)) * 20) for i in k]
    np.testing.assert_array_equal(ep["scene_rgb"][:, 0, 0, 0], expected)
    assert ep["scene_rgb"].dtype == np.uint8 and ep["scene_rgb"].shape == (n, 4, 4, 3)
    summary = json.loads((out / "dataset.json").read_text())
    assert summary["rate_hz"] == 32 and summary["episodes"][0]["num_steps"] == n
    assert json.loads(lines[-1])["num_steps"] == n


def test_build_pools_several_recordings(tmp_path: Path, capsys) -> None:
    """Two recordings (e.g. two collection runs) build into one training set: every committed episode once, in the
    order given, numbered afresh, each naming the recording it came from; a recording named twice is refused."""
    a, b, out = tmp_path / "run-a", tmp_path / "run-b", tmp_path / "train"
    for root, offsets in ((a, (0.0, 10.0)), (b, (20.0,))):
        for off in offsets:
            t, v = _ramp(64, 64)
            _record(root, {"tcp_pos": (t, v + off), "wrench": _ramp(128, 128, width=6)})
    code, lines, err = _run(capsys, "build", str(a), str(b), "rate=32", "out=" + str(out))
    assert code == 0, err
    summary = json.loads((out / "dataset.json").read_text())
    assert [e["file"] for e in summary["episodes"]] == [f"episode_{k:06d}.npz" for k in range(3)]
    assert [e["source"].split("/")[0] for e in summary["episodes"]] == ["run-a", "run-a", "run-b"]
    assert summary["source"] == [str(a.resolve()), str(b.resolve())]
    firsts = [load_training_episode(out / e["file"])["tcp_pos"][0, 0] for e in summary["episodes"]]
    assert firsts == [0.0, 10.0, 20.0]
    code, _, err = _run(capsys, "build", str(a), str(a), "rate=32", "out=" + str(tmp_path / "twice"))
    assert code == 2 and "named twice" in err and not (tmp_path / "twice").exists()


def test_build_refuses_empty_dataset(tmp_path: Path, capsys) -> None:
    rec = EpisodeRecorder(tmp_path / "src")
    rec.begin({"task": "ramp"})
    rec.abort()
    code, _, err = _run(capsys, "build", str(tmp_path / "src"), "rate=24", "out=" + str(tmp_path / "o"))
    assert code == 2 and "empty dataset" in err and not (tmp_path / "o").exists()


def test_build_refuses_mis_rated_stream(tmp_path: Path, capsys) -> None:
    _record(tmp_path / "src", {"wrench": _ramp(200, 400, width=6), "slow_cam": _ramp(8, 16)})
    code, _, err = _run(capsys, "build", str(tmp_path / "src"), "rate=24", "out=" + str(tmp_path / "o"))
    assert code == 2 and "'slow_cam' is mis-rated" in err and "8 Hz" in err and not (tmp_path / "o").exists()
    assert not list(tmp_path.glob(".o.building-*"))
    # 12 Hz is within 2x of 24 Hz; dropping the slow stream also works
    code, _, err = _run(capsys, "build", str(tmp_path / "src"), "rate=16", "out=" + str(tmp_path / "o16"))
    assert code == 0, err
    code, _, err = _run(capsys, "build", str(tmp_path / "src"), "rate=24", "out=" + str(tmp_path / "o24"),
                        "streams=[wrench]")
    assert code == 0, err


def test_build_refuses_zero_length_episode(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    _record(src, {"wrench": _ramp(200, 400, width=6)})
    _record(src, {"wrench": _ramp(200, 1, width=6)})  # a single sample: no time span
    code, _, err = _run(capsys, "build", str(src), "rate=24", "out=" + str(tmp_path / "o"))
    assert code == 2 and "episode_000001: episode of zero length" in err and not (tmp_path / "o").exists()
    assert len(list_episodes(src)) == 2


@pytest.mark.parametrize(("damage", "says"), [
    (lambda meta: meta.pop("streams"), "field 'streams' is missing, expected dict"),
    (lambda meta: meta["streams"]["wrench"].pop("chunks"), "streams.wrench.chunks is missing, expected list"),
    (lambda meta: meta["streams"]["wrench"].update(shape="6"), "streams.wrench.shape is a str, expected list"),
])
def test_a_damaged_meta_json_is_refused_in_one_line(damage, says: str, tmp_path: Path, capsys) -> None:
    episode = _record(tmp_path, {"wrench": _ramp(200, 40, width=6)})
    meta = json.loads((episode / "meta.json").read_text())
    damage(meta)
    (episode / "meta.json").write_text(json.dumps(meta))
    for argv in (("info", str(tmp_path)), ("build", str(tmp_path), "rate=50", "out=" + str(tmp_path / "o"))):
        code, _, err = _run(capsys, *argv)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        damaged = f"{episode / 'meta.json'}: {says}; the file is damaged (run `verify`)"
        assert err.strip() == f"dataset: error: {damaged}"
    code, lines, _ = _run(capsys, "verify", str(tmp_path))
    assert code == 1 and says in json.loads(lines[-1])["problems"][0]


def test_bad_arguments_are_one_line(tmp_path: Path, capsys) -> None:
    code, _, err = _run(capsys, "build", str(tmp_path), "rate=abc", "out=" + str(tmp_path / "o"))
    assert code == 2 and err.strip() == "dataset: error: rate=abc: expected a number"
    code, _, err = _run(capsys, "export", str(tmp_path), "format=nosuch", "out=" + str(tmp_path / "o"))
    assert code == 2 and err.strip() == "dataset: error: format=nosuch: no such export format; choose one of lerobot"
    code, _, err = _run(capsys, "nosuch", str(tmp_path))
    assert code == 2 and err.strip().startswith("dataset: error: command=nosuch: no such dataset command; choose one")
    code, _, err = _run(capsys, "info", str(tmp_path / "missing"))
    assert code == 2 and err.strip() == f"dataset: error: {tmp_path / 'missing'}: not a directory"


@pytest.mark.parametrize("module", ["dataset", "dataset.cli", "teleop.dataset"])
def test_every_entry_point_runs_the_same_cli(tmp_path: Path, module: str) -> None:
    """``python -m dataset`` is the command; ``dataset.cli`` and the former ``teleop.dataset`` run the same one."""
    ramp = np.arange(4) / 10.0
    _record(tmp_path / "ds", {"action": (ramp, ramp[:, None].repeat(2, axis=1))})
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", module, "info", str(tmp_path / "ds")], cwd=repo,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["episodes"] == 1
    bad = subprocess.run([sys.executable, "-m", module, "info", str(tmp_path / "missing")], cwd=repo,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip() == f"dataset: error: {tmp_path / 'missing'}: not a directory"
