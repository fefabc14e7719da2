"""Checkpoints: exact round trip with config and normaliser; clear errors for missing, corrupt, mismatched files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rdp.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    load_checkpoint,
    load_config,
    load_run_info,
    main,
    save_checkpoint,
)
from rdp.tokenizer import AsymmetricTokenizer, TokenizerConfig

CFG = TokenizerConfig(action_dim=7, cond_dim=6, encoder_hidden=16, decoder_hidden=32)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, AsymmetricTokenizer]:
    model = AsymmetricTokenizer(CFG)
    normalizer = {"action.mean": np.arange(7, dtype=np.float32), "action.std": torch.ones(7, dtype=torch.float64)}
    return save_checkpoint(tmp_path / "ckpt", model, CFG, normalizer), model


def test_round_trip_is_exact(saved: tuple[Path, AsymmetricTokenizer]) -> None:
    path, model = saved
    name, config = load_config(path)
    assert name == "AsymmetricTokenizer" and config == CFG.to_dict()
    restored = AsymmetricTokenizer(TokenizerConfig(**config))
    ckpt = load_checkpoint(path, restored)
    for key, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    assert torch.equal(ckpt.normalizer["action.mean"], torch.arange(7, dtype=torch.float32))
    assert ckpt.normalizer["action.std"].dtype == torch.float64
    z = torch.randn(2, 8, 16)
    cond = torch.randn(2, 32, 6)
    assert torch.equal(model.eval().decode(z, cond), restored.eval().decode(z, cond))


def test_files_are_readable_and_no_temporaries_remain(saved: tuple[Path, AsymmetricTokenizer]) -> None:
    path, model = saved
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    assert json.loads((path / CONFIG_FILE).read_text())["config"]["action_dim"] == 7
    save_checkpoint(path, model, CFG)  # overwrite in place
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    assert load_checkpoint(path, AsymmetricTokenizer(CFG)).normalizer == {}


def test_no_pickle() -> None:
    source = (Path(__file__).parents[2] / "rdp" / "checkpoint.py").read_text()
    assert not re.search(r"(?<![\w.])torch\.(save|load)\b", source)  # safetensors.torch.save is fine
    assert not re.search(r"^\s*(import|from)\s+(pickle|dill|cloudpickle)\b", source, re.MULTILINE)


@pytest.mark.parametrize("name", [WEIGHTS_FILE, CONFIG_FILE])
def test_missing_file(saved: tuple[Path, AsymmetricTokenizer], name: str) -> None:
    path, _ = saved
    (path / name).unlink()
    with pytest.raises(FileNotFoundError, match=f"checkpoint file not found: .*{name}"):
        load_checkpoint(path, AsymmetricTokenizer(CFG))


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        load_checkpoint(tmp_path / "nope", AsymmetricTokenizer(CFG))


@pytest.mark.parametrize("keep", [0, 5, 100, -200, -1])
def test_truncated_weights(saved: tuple[Path, AsymmetricTokenizer], keep: int) -> None:
    path, _ = saved
    weights = path / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:keep])
    with pytest.raises(CheckpointError, match=f"corrupt or truncated checkpoint: {weights}"):
        load_checkpoint(path, AsymmetricTokenizer(CFG))


@pytest.mark.parametrize("where", ["header", "payload"])
def test_corrupt_weights(saved: tuple[Path, AsymmetricTokenizer], where: str) -> None:
    path, _ = saved
    weights = path / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    index = 20 if where == "header" else len(data) - 10  # a byte of the JSON header, or of the last tensor
    data[index] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"corrupt or truncated checkpoint: {weights}"):
        load_checkpoint(path, AsymmetricTokenizer(CFG))


def test_corrupt_config(saved: tuple[Path, AsymmetricTokenizer]) -> None:
    path, _ = saved
    config = path / CONFIG_FILE
    config.write_text(config.read_text()[:30])
    with pytest.raises(CheckpointError, match=f"corrupt or truncated checkpoint: {config}"):
        load_checkpoint(path, AsymmetricTokenizer(CFG))


def test_truncated_config_names_line_and_column(saved: tuple[Path, AsymmetricTokenizer]) -> None:
    path, _ = saved
    config = path / CONFIG_FILE
    config.write_text('{\n  "format": "slowfast-checkpoint-v1",\n  "model": ')
    with pytest.raises(CheckpointError, match=f"{config}: not valid JSON at line 3 column 12"):
        load_config(path)


def test_shape_mismatch_names_both_shapes(saved: tuple[Path, AsymmetricTokenizer]) -> None:
    path, _ = saved
    other = AsymmetricTokenizer(TokenizerConfig(action_dim=7, cond_dim=15, encoder_hidden=16, decoder_hidden=32))
    with pytest.raises(CheckpointError, match=r"checkpoint has gru.weight_ih_l0 \[96, 22\], model expects \[96, 31\]"):
        load_checkpoint(path, other)


def test_missing_keys_are_named(saved: tuple[Path, AsymmetricTokenizer]) -> None:
    path, _ = saved
    other = AsymmetricTokenizer(CFG)
    other.register_buffer("extra", torch.zeros(3))
    with pytest.raises(CheckpointError, match=r"missing keys \['extra'\]"):
        load_checkpoint(path, other)


def test_a_failed_save_leaves_the_old_checkpoint(saved: tuple[Path, AsymmetricTokenizer]) -> None:
    path, model = saved
    before = (path / WEIGHTS_FILE).read_bytes()
    with pytest.raises(TypeError):
        save_checkpoint(path, model, {"bad": object()})  # not JSON-serialisable: fails before any rename
    assert (path / WEIGHTS_FILE).read_bytes() == before
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]


# --------------------------------------------------------------------------------------------------- training runs

SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints" / "wipe" / "rdp"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return Path(shutil.copytree(SHIPPED, tmp_path / "rdp"))


def _edit(run: Path, **changes: object) -> Path:
    info = json.loads((run / "run.json").read_text())
    info.update(changes)
    (run / "run.json").write_text(json.dumps({k: v for k, v in info.items() if v is not None}, indent=1))
    return run


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("rdp.checkpoint: error: ") and "Traceback" not in err, err
    return err


def test_the_shipped_runs_pass_every_check(capsys: pytest.CaptureFixture[str]) -> None:
    shipped = SHIPPED.parent.parent
    runs = sorted(str(p.parent) for t in ("wipe", "peel", "lift") for p in shipped.glob(f"{t}/*/run.json"))
    assert main(runs) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == len(runs) and all(r["ok"] for r in rows)


def test_run_json_that_disagrees_with_the_weights_is_refused(run_dir: Path, capsys) -> None:
    _edit(run_dir, horizon=64, action_dim=7)
    err = _refused([str(run_dir)], capsys)
    assert err.endswith(f"{run_dir / 'run.json'}: horizon is 64 but the tokenizer's weights (tokenizer/) were "
                        "trained for 32")
    _edit(run_dir, horizon=32, action_dim=10, obs_dims=[10, 30])
    assert "obs_dims is [10, 30] but the policy's weights (policy/) were trained for [10, 45]" in _refused(
        [str(run_dir)], capsys)
    _edit(run_dir, obs_dims=[10, 45], tokenizer={**json.loads((SHIPPED / "run.json").read_text())["tokenizer"],
                                                 "latent_channels": 8})
    assert "tokenizer.latent_channels is 8 but the tokenizer's weights" in _refused([str(run_dir)], capsys)


@pytest.mark.parametrize(("field", "value", "says"), [
    ("horizon", None, "missing field 'horizon' (an integer >= 1: action steps per chunk T)"),
    ("horizon", "32", 'horizon is "32", expected an integer >= 1: action steps per chunk T'),
    ("method", "ddpm", "method is \"ddpm\", expected a registered method (rdp.methods)"),
    ("obs_dims", [10], "obs_dims [10] and obs_keys ['proprio', 'tactile'] differ in length"),
    ("format", "v0", "format is \"v0\", expected 'slowfast-rdp-run-v1'"),
])
def test_run_json_schema_names_the_file_and_the_field(run_dir: Path, field: str, value: object, says: str) -> None:
    _edit(run_dir, **{field: value})
    with pytest.raises(CheckpointError) as err:
        load_run_info(run_dir)
    assert str(err.value) == f"{run_dir / 'run.json'}: {says}"


def test_truncated_missing_and_absent_runs_name_the_path(run_dir: Path, tmp_path: Path, capsys) -> None:
    text = (run_dir / "run.json").read_text()
    (run_dir / "run.json").write_text(text[: len(text) // 2])
    err = _refused([str(run_dir)], capsys)
    assert re.search(rf"{run_dir / 'run.json'}: not valid JSON at line \d+ column \d+ ", err)
    (run_dir / "run.json").unlink()
    assert f"{run_dir / 'run.json'}: no such file; a training run" in _refused([str(run_dir)], capsys)
    assert f"{tmp_path / 'nope'}: no such directory; a training run" in _refused([str(tmp_path / "nope")], capsys)
    (run_dir / "run.json").write_text(text)
    shutil.rmtree(run_dir / "tokenizer")
    assert f"{run_dir / 'tokenizer'}: no such directory" in _refused([str(run_dir)], capsys)
