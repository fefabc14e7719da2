"""bus.cli: one stderr line and an exit code for every expected failure; hydra and node-config errors alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bus.cli import (
    DEBUG_ENV,
    ArgumentParser,
    CommandError,
    UsageError,
    check_hydra_overrides,
    choose,
    command,
    parse_key_values,
)
from bus.config import load_node_config

ROOT = Path(__file__).resolve().parents[2]


def _one_line(err: str, prog: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)


@pytest.mark.parametrize(("exc", "code", "says"), [
    (UsageError("task=nosuch: no such task; choose one of lift, peel, wipe"), 2, "task=nosuch: no such task"),
    (CommandError("robot node exited with code 1"), 1, "robot node exited"),
    (FileNotFoundError(2, "No such file or directory", "/data/x"), 2, "/data/x: no such file or directory"),
    (FileExistsError("out=/runs/a already holds a training run"), 2, "already holds"),
    (UsageError("first line\n  second line"), 2, "first line second line"),
])
def test_expected_errors_are_one_line_with_their_exit_code(exc: Exception, code: int, says: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    @command("tool")
    def main(argv: list[str] | None = None) -> int:
        raise exc

    assert main([]) == code
    assert says in _one_line(capsys.readouterr().err, "tool")


def test_a_bug_keeps_its_traceback_and_debug_shows_every_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    @command("tool")
    def buggy(argv: list[str] | None = None) -> int:
        raise KeyError("horizon")

    @command("tool")
    def bad_input(argv: list[str] | None = None) -> int:
        raise UsageError("episodes=abc: expected an integer")

    with pytest.raises(KeyError):
        buggy([])
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(UsageError, match="episodes=abc"):
        bad_input([])


def test_success_and_ctrl_c(capsys: pytest.CaptureFixture[str]) -> None:
    @command("tool")
    def ok(argv: list[str] | None = None, extra: int = 0) -> int:
        return extra

    @command("tool")
    def interrupted(argv: list[str] | None = None) -> int:
        raise KeyboardInterrupt

    assert ok([], extra=3) == 3 and ok([]) == 0
    assert interrupted([]) == 130 and capsys.readouterr().err.strip() == "tool: interrupted"


def test_argument_parser_errors_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    @command("python -m tool")
    def main(argv: list[str] | None = None) -> int:
        parser = ArgumentParser(prog="python -m tool")
        sub = parser.add_subparsers(dest="cmd", required=True)
        sub.add_parser("fit").add_argument("--episodes", type=int, default=1)
        parser.parse_args(argv)
        return 0

    assert main(["fit", "--episodes", "abc"]) == 2
    assert "argument --episodes: invalid int value: 'abc'" in _one_line(capsys.readouterr().err, "python -m tool")
    assert main(["nosuch"]) == 2
    assert "invalid choice: 'nosuch'" in _one_line(capsys.readouterr().err, "python -m tool")


def test_choose_lists_the_valid_choices() -> None:
    assert choose("task", "wipe", {"wipe", "peel"}) == "wipe"
    with pytest.raises(UsageError, match="^task=nosuch: no such task; choose one of lift, peel, wipe$"):
        choose("task", "nosuch", ("wipe", "peel", "lift"))


@dataclass(frozen=True)
class _Options:
    tasks: tuple[str, ...] = ("wipe",)
    episodes: int = 5
    tolerance: float = 0.05
    video: bool = True
    limit: int | None = None
    out: str = "x"

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")


def test_key_values_are_typed_by_the_dataclass() -> None:
    got = parse_key_values(_Options, ["tasks=wipe,peel", "episodes=3", "tolerance=0.1", "video=false",
                                      "limit=null", "out=o"])
    assert got == _Options(("wipe", "peel"), 3, 0.1, False, None, "o")
    for argv, says in ((["episodes=abc"], "^episodes=abc: expected an integer$"),
                       (["tolerance=x"], "^tolerance=x: expected a number$"),
                       (["video=yes"], "^video=yes: expected true or false$"),
                       (["runs=3"], "^runs=3: no such key 'runs'; the keys are episodes, limit, out, tasks, "),
                       (["episodes"], "^episodes: expected key=value"),
                       (["episodes=0"], "^episodes must be >= 1, got 0$")):
        with pytest.raises(UsageError, match=says):
            parse_key_values(_Options, argv)


def _configs(tmp_path: Path) -> Path:
    (tmp_path / "task").mkdir()
    for name in ("wipe", "peel"):
        (tmp_path / "task" / f"{name}.yaml").write_text(f"name: {name}\nperturbations: null\n")
    (tmp_path / "app.yaml").write_text("defaults:\n  - task: wipe\n  - _self_\n\n"
                                       "episodes: 50\nrate_hz: 25.0\nperturb: true\ndata: ???\nout: null\n")
    return tmp_path


def test_hydra_overrides_are_checked_against_the_configs(tmp_path: Path) -> None:
    configs = _configs(tmp_path)
    cfg = check_hydra_overrides(configs, "app", ["task=peel", "episodes=3", "rate_hz=10", "data=d", "out=o"])
    assert cfg.task.name == "peel" and cfg.episodes == 3 and cfg.data == "d"
    for argv, says in (
        (["task=nosuch"], "^task=nosuch: no such task; choose one of peel, wipe$"),
        (["nosuchkey=1"], "^nosuchkey=1: no such key; the keys are data, episodes, out, perturb, rate_hz, task$"),
        (["task.nosuch=1"], "^task.nosuch=1: no such key; task has name, perturbations$"),
        (["episodes=abc"], r"^episodes=abc: expected an integer \(the default is 50\)$"),
        (["rate_hz=fast"], r"^rate_hz=fast: expected a number \(the default is 25.0\)$"),
        (["perturb=maybe"], r"^perturb=maybe: expected true or false \(the default is true\)$"),
        (["episodes=[1,2"], r"^episodes=\[1,2: not a valid override"),
        ([], r"^data=\.\.\. is required"),
    ):
        with pytest.raises(UsageError, match=says):
            check_hydra_overrides(configs, "app", argv)


def test_the_real_eval_config_names_its_tasks_and_policies() -> None:
    with pytest.raises(UsageError, match="^task=nosuch: no such task; choose one of lift, peel, wipe$"):
        check_hydra_overrides(ROOT / "configs", "eval", ["task=nosuch"])
    with pytest.raises(UsageError, match="^policy=nosuch: no such policy; choose one of dp, .*expert, .*rdp"):
        check_hydra_overrides(ROOT / "configs", "eval", ["policy=nosuch"])
    with pytest.raises(UsageError, match=r"^policy.latency_s=abc: expected a number \(the default is 0.08\)$"):
        check_hydra_overrides(ROOT / "configs", "eval", ["policy=rdp", "policy.latency_s=abc"])


@dataclass
class _Inner:
    hz: float = 10.0
    enabled: bool = True


@dataclass
class _NodeConfig:
    task: str = "wipe"
    episodes: int = 1
    latency_ms: list[float] = field(default_factory=lambda: [1.0, 2.0])
    inner: _Inner = field(default_factory=_Inner)

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"episodes={self.episodes} must be >= 1")


def test_node_config_errors_are_one_line_naming_key_value_and_type(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("task: wipe\ninner:\n  hz: 20.0\n")
    cfg = load_node_config(_NodeConfig, path, ["episodes=2", "inner.enabled=false"], "test", "episodes=2")
    assert cfg.episodes == 2 and cfg.inner.hz == 20.0 and cfg.inner.enabled is False
    for overrides, says in (
        (["episodes=abc"], "^episodes=abc: expected an integer$"),
        (["inner.hz=fast"], "^inner.hz=fast: expected a number$"),
        (["inner.enabled=maybe"], "^inner.enabled=maybe: expected true or false$"),
        (["latency_ms=abc"], r"^latency_ms=abc: expected a list, e.g. \[1,2\]$"),
        (["nosuch=1"], "^nosuch=1: no such test config key; the keys are episodes, inner, latency_ms, task$"),
        (["inner.nosuch=1"], "^inner.nosuch=1: no such test config key; inner has enabled, hz$"),
        (["episodes"], r"^episodes: expected a key=value override \(e.g. episodes=2\)$"),
        (["episodes=0"], "^bad test config: episodes=0 must be >= 1$"),
    ):
        with pytest.raises(UsageError, match=says) as err:
            load_node_config(_NodeConfig, path, overrides, "test", "episodes=2")
        assert "\n" not in str(err.value)
    path.write_text("task: wipe\ninner: [\n")
    with pytest.raises(UsageError, match=rf"^{path}:3:1: not valid YAML"):
        load_node_config(_NodeConfig, path, [], "test", "episodes=2")
    with pytest.raises(FileNotFoundError):
        load_node_config(_NodeConfig, tmp_path / "missing.yaml", [], "test", "episodes=2")
