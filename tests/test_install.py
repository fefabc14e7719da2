"""A non-editable install works on its own: the wheel of this source tree, installed into a fresh venv, runs the
console scripts from an empty directory, with its configs and shipped checkpoints found inside the install
(``bus.resources``), never in the repo.

The venv reuses this environment's dependencies (a ``.pth`` naming its site-packages, added after the install so
pip sees an empty venv) and downloads nothing (``--no-index``). The wheel is built from a copy of the files git
would commit, so the build leaves no ``build/`` or ``*.egg-info`` behind in the repo.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.heavy

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def _copy_sources(dst: Path) -> None:
    """The files git would commit (tracked, and untracked but not ignored), so outputs, data and venvs stay out."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                capture_output=True, check=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"building the wheel needs the repo's file list from git: {exc}")
    for name in filter(None, listed.split("\0")):
        src = REPO / name
        if src.is_file():  # a tracked file deleted in the work tree is listed too
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)


@pytest.fixture(scope="module")
def venv() -> Iterator[Path]:
    """A venv holding only the installed wheel, plus this environment's site-packages for the dependencies."""
    with tempfile.TemporaryDirectory(prefix="slowfast-install-") as tmp:
        root = Path(tmp)
        _copy_sources(root / "src")
        _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
              "-w", root / "dist", "."], cwd=root / "src")
        (wheel,) = (root / "dist").glob("slowfast-*.whl")
        shipped = set(zipfile.ZipFile(wheel).namelist())
        for name in ("configs/eval.yaml", "configs/task/wipe.yaml", "configs/rdp/compare.yaml",
                     "configs/dataset/build.yaml", "configs/robot_node/default.yaml", "checkpoints/wipe/rdp/run.json",
                     "checkpoints/wipe/rdp/policy/model.safetensors", "sensors/embeddings/default.npz",
                     "teleop/web/index.html"):
            assert name in shipped, f"{name} is not in {wheel.name}"
        env_dir = root / "venv"
        _run([sys.executable, "-m", "venv", "--without-pip", env_dir], cwd=root)
        python = env_dir / "bin" / "python"
        _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel],
             cwd=root)
        site = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=root).stdout
        deps = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
        (Path(site.strip()) / "slowfast-dependencies.pth").write_text("".join(f"{p}\n" for p in deps))
        shutil.rmtree(root / "src")  # nothing of the source tree is left to import from
        yield env_dir


@pytest.fixture
def empty_dir(venv: Path) -> Path:
    """A fresh empty working directory, removed with the venv."""
    return Path(tempfile.mkdtemp(prefix="cwd-", dir=venv.parent))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "MUJOCO_GL": env.get("MUJOCO_GL", "egl"), "PYOPENGL_PLATFORM": env.get("PYOPENGL_PLATFORM", "egl")}


def test_the_installed_package_finds_its_data_inside_the_install(venv: Path, empty_dir: Path) -> None:
    probe = ("import json, sim; from bus.resources import config_dir; from rdp.inference import shipped_run; "
             "print(json.dumps([sim.__file__, str(config_dir()), str(shipped_run('wipe', 'rdp'))]))")
    out = _run([venv / "bin" / "python", "-c", probe], cwd=empty_dir, env=_env()).stdout
    for path in json.loads(out.splitlines()[-1]):
        assert Path(path).resolve().is_relative_to(venv.resolve()), f"{path} is outside the installed venv {venv}"
        assert not Path(path).resolve().is_relative_to(REPO), f"{path} comes from the source tree"


def test_eval_runs_from_an_empty_directory_with_configs_and_a_shipped_checkpoint(venv: Path, empty_dir: Path) -> None:
    sf_eval = venv / "bin" / "sf-eval"
    _run([sf_eval, "task=wipe", "policy=expert", "episodes=1", "video=false"], cwd=empty_dir, env=_env())
    (expert,) = (empty_dir / "outputs" / "eval").glob("wipe-expert-*/results.json")  # hydra's run dir, under cwd
    assert json.loads(expert.read_text())["episodes"] == 1

    _run([sf_eval, "task=wipe", "policy=rdp", "episodes=1", "video=false", "out=rdp"], cwd=empty_dir, env=_env())
    result = json.loads((empty_dir / "rdp" / "results.json").read_text())
    assert (result["task"], result["policy"], result["episodes"]) == ("wipe", "rdp", 1)


def test_commands_compose_their_installed_configs(venv: Path, empty_dir: Path) -> None:
    """Every other command reads its yaml from the install too (bus.config.compose over bus.resources)."""
    robot = _run([venv / "bin" / "sf-robot", "--cfg", "task=peel", "seed=3"], cwd=empty_dir, env=_env()).stdout
    assert "task: peel" in robot and "seed: 3" in robot
    compare = _run([venv / "bin" / "sf-compare", "--cfg", "tasks=wipe,lift"], cwd=empty_dir, env=_env()).stdout
    assert "tasks:\n- wipe\n- lift" in compare
