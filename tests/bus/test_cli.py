"""bus.cli: one stderr line and an exit code for every expected failure; hydra and node-config errors alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bus.cli import (
    DEBUG_ENV,
    CommandError,
    UsageError,
    check_hydra_overrides,
    choose,
    command,
)
from bus.config import compose, override

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


def test_choose_lists_the_valid_choices() -> None:
    assert choose("task", "wipe", {"wipe", "peel"}) == "wipe"
    with pytest.raises(UsageError, match="^task=nosuch: no such task; choose one of lift, peel, wipe$"):
        choose("task", "nosuch", ("wipe", "peel", "lift"))


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


def test_compose_errors_are_one_line_naming_key_value_and_type(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("task: wipe\ninner:\n  hz: 20.0\n")
    cfg = compose(_NodeConfig, path, ["episodes=2", "inner.enabled=false"], "test", "episodes=2")
    assert cfg.episodes == 2 and cfg.inner.hz == 20.0 and cfg.inner.enabled is False
    for overrides, says in (
        (["episodes=abc"], "^episodes=abc: expected an integer$"),
        (["inner.hz=fast"], "^inner.hz=fast: expected a number$"),
        (["inner.enabled=maybe"], "^inner.enabled=maybe: expected true or false$"),
        (["latency_ms=abc"], r"^latency_ms=abc: expected a list of numbers, e.g. latency_ms=\[a,b\]$"),
        (["latency_ms={a: 1}"], r"^latency_ms=\{a: 1\}: expected a list, e.g. \[1,2\]$"),
        (["nosuch=1"], "^nosuch=1: no such test config key; the keys are episodes, inner, latency_ms, task$"),
        (["inner.nosuch=1"], "^inner.nosuch=1: no such test config key; inner has enabled, hz$"),
        (["episodes"], r"^episodes: expected a key=value override \(e.g. episodes=2\)$"),
        (["--episodes=2"], r"^--episodes=2: no such option"),
        (["--verbose"], r"^--verbose: no such option; arguments are key=value overrides"),
        (["episodes=[1,2"], r"^episodes=\[1,2: not a valid override"),
        (["task=a,b"], r"^task=a,b: a comma makes a list, and task takes no list"),
        (["+episodes=3"], r"^\+episodes=3: episodes is already in the test config"),
        (["~episodes"], r"^~episodes: a key of the test config cannot be deleted"),
        (["episodes=0"], "^bad test config: episodes=0 must be >= 1$"),
    ):
        with pytest.raises(UsageError, match=says) as err:
            compose(_NodeConfig, path, overrides, "test", "episodes=2")
        assert "\n" not in str(err.value)
    path.write_text("task: wipe\ninner: [\n")
    with pytest.raises(UsageError, match=rf"^{path}:3:1: not valid YAML"):
        compose(_NodeConfig, path, [], "test", "episodes=2")
    with pytest.raises(FileNotFoundError):
        compose(_NodeConfig, tmp_path / "missing.yaml", [], "test", "episodes=2")


def test_compose_reads_lists_groups_positionals_and_required_values(tmp_path: Path) -> None:
    @dataclass
    class _App:
        data: str
        tasks: list[str] = field(default_factory=list)
        task: dict = field(default_factory=dict)
        rate: float = 25.0

    (tmp_path / "task").mkdir()
    for name in ("wipe", "peel"):
        (tmp_path / "task" / f"{name}.yaml").write_text(f"name: {name}\n")
    path = tmp_path / "app.yaml"
    path.write_text("defaults:\n  - task: wipe\n  - _self_\n\ndata: ???\ntasks: [wipe]\nrate: 25.0\n")
    cfg = compose(_App, path, ["d", "task=peel", "tasks=wipe,peel"], "app", "data=D", positional=("data",))
    assert (cfg.data, cfg.task, cfg.tasks) == ("d", {"name": "peel"}, ["wipe", "peel"])
    assert compose(_App, path, ["data='a,b c'", "tasks=[peel]", "rate=1"], "app", "x").data == "a,b c"
    assert compose(_App, path, ["data=x", "tasks=peel"], "app", "x").tasks == ["peel"]  # one name: a list of one
    for argv, says in ((["data=x", "task=nosuch"], "^task=nosuch: no such task; choose one of peel, wipe$"),
                       ([], r"^data=\.\.\. is required"),
                       (["a", "b"], "^b: expected a key=value override .*only data may be given without a key")):
        with pytest.raises(UsageError, match=says):
            compose(_App, path, argv, "app", "data=D", positional=("data",))


def test_compose_help_and_cfg_print_and_exit_0(tmp_path: Path, capsys) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("task: wipe   # which task\n")

    @command("tool")
    def main(argv: list[str]) -> int:
        compose(_NodeConfig, path, argv, "test", "episodes=2", doc="The tool.")
        return 3

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("The tool.") and "task: wipe   # which task" in out
    assert main(["--cfg", "episodes=4"]) == 0
    assert "episodes: 4" in capsys.readouterr().out
    assert main(["episodes=4"]) == 3
    assert main(["episodes=x"]) == 2
    assert _one_line(capsys.readouterr().err, "tool") == "tool: error: episodes=x: expected an integer"


@pytest.mark.parametrize("value", ["tcp://127.0.0.1:*", "/a b/c,d", "it's", "5", "true", "null", "", "x=y", "[a]",
                                   "back\\slash\\", "~/x", 3, 2.5, True, None, ["a,b", 1]])
def test_override_reads_back_as_the_same_value(value: object) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert OverridesParser.create().parse_override(override("k", value)).value() == value


def test_real_node_configs_compose() -> None:
    from rdp.runtime.config import load_config as runtime_config
    from sim.node import load_config as robot_config
    from teleop.collect import load_config as collect_config

    assert robot_config(["addresses.pub=tcp://127.0.0.1:*"]).addresses.pub == "tcp://127.0.0.1:*"
    assert runtime_config(["task=lift"]).task == "lift"
    assert collect_config(["out=d", "lockstep_teleop=['loop_hz=250']"]).lockstep_teleop == ["loop_hz=250"]
