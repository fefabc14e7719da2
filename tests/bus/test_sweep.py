"""bus.sweep: commands run side by side, failures reported not raised, and nothing left running after an error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bus.cli import CommandError, UsageError
from bus.sweep import ONE_THREAD_ENV, run_commands, split_range

PY = sys.executable


def python(code: str) -> list[str]:
    return [PY, "-c", code]


def sleeper(pid_dir: Path, name: str) -> list[str]:
    """A command that writes its pid to ``pid_dir/name`` and then sleeps far longer than any test."""
    return python(f"import os, pathlib, time; pathlib.Path({str(pid_dir / name)!r}).write_text(str(os.getpid()));"
                  " time.sleep(120)")


def wait_for_files(paths: list[Path], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(p.is_file() and p.read_text() for p in paths):
        assert time.monotonic() < deadline, f"never appeared: {[str(p) for p in paths if not p.is_file()]}"
        time.sleep(0.05)


def assert_gone(pids: list[int], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while _alive(pid):
            assert time.monotonic() < deadline, f"process {pid} still runs: an orphaned command"
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) runs no more
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def test_split_range_gives_contiguous_near_equal_shards_in_order() -> None:
    assert split_range(0, 5, 2) == [(0, 3), (3, 2)]
    assert split_range(100, 4, 4) == [(100, 1), (101, 1), (102, 1), (103, 1)]
    assert split_range(7, 2, 8) == [(7, 1), (8, 1)]  # never an empty shard
    shards = split_range(3, 50, 7)
    assert sum(n for _, n in shards) == 50 and [s for s, _ in shards] == [3, 11, 18, 25, 32, 39, 46]
    with pytest.raises(UsageError, match="cannot split 0 items"):
        split_range(0, 0, 2)


def test_commands_run_at_the_same_time_each_with_one_thread(tmp_path: Path) -> None:
    """Each command waits until both have started: they finish only if ``jobs=2`` runs them side by side."""
    both = [tmp_path / "a", tmp_path / "b"]
    code = ("import os, pathlib, sys, time; pathlib.Path(sys.argv[1]).write_text('x'); t = time.monotonic()\n"
            "while not all(pathlib.Path(p).exists() for p in sys.argv[2:]):\n"
            "    time.sleep(0.02)\n"
            "    if time.monotonic() - t > 20: sys.exit(3)\n"
            "print(os.environ['OMP_NUM_THREADS'], os.environ['EXTRA'])")
    lines: list[str] = []
    results = run_commands([[PY, "-c", code, str(p), *map(str, both)] for p in both], jobs=2,
                           env={"EXTRA": "on"}, labels=["first", "second"], progress=lines.append)
    assert [r.index for r in results] == [0, 1] and all(r.ok for r in results), [r.stderr_tail for r in results]
    assert all(r.stdout_tail == f"{ONE_THREAD_ENV['OMP_NUM_THREADS']} on" for r in results)
    assert len(lines) == 2 and {line.split()[1] for line in lines} == {"first", "second"}
    assert all(" ok in " in line for line in lines)


def test_a_failing_command_is_reported_not_raised(tmp_path: Path) -> None:
    lines: list[str] = []
    results = run_commands([python("import sys; print('half', file=sys.stderr); print('\\rnope: bad input',"
                                    " file=sys.stderr); sys.exit(3)"),
                            python("print('fine')"),
                            [str(tmp_path / "no-such-program")]], jobs=2, progress=lines.append)
    bad, good, missing = results
    assert (bad.ok, bad.returncode, bad.error_line()) == (False, 3, "nope: bad input")
    assert good.ok and good.stdout_tail == "fine" and good.error_line() == "exit code 0 and nothing on stderr"
    assert missing.returncode == 127 and "cannot start" in missing.error_line()
    assert sum("FAILED (exit 3): nope: bad input" in line for line in lines) == 1


def test_bad_arguments_are_refused_before_anything_runs() -> None:
    with pytest.raises(UsageError, match="launcher=slurm: no such launcher; choose one of local, ray"):
        run_commands([python("pass")], launcher="slurm")
    with pytest.raises(UsageError, match="jobs=0: expected an integer >= 1"):
        run_commands([python("pass")], jobs=0)
    with pytest.raises(UsageError, match="2 labels for 1 commands"):
        run_commands([python("pass")], labels=["a", "b"])
    assert run_commands([], jobs=3) == []


def test_an_error_in_the_caller_ends_every_running_command(tmp_path: Path) -> None:
    """The first command ends at once; the progress line it triggers raises (as Ctrl-C would there): the two
    sleeping commands must be stopped, not left running."""
    pid_files = [tmp_path / "one", tmp_path / "two"]

    def progress(line: str) -> None:
        wait_for_files(pid_files)
        raise KeyboardInterrupt

    commands = [sleeper(tmp_path, "one"), sleeper(tmp_path, "two"), python("import time; time.sleep(0.5)")]
    with pytest.raises(KeyboardInterrupt):
        run_commands(commands, jobs=3, progress=progress)
    assert_gone([int(p.read_text()) for p in pid_files], timeout_s=2.0)


@pytest.mark.parametrize(("launcher", "sig"), [("local", signal.SIGINT), ("local", signal.SIGTERM),
                                               ("ray", signal.SIGINT)])
def test_ctrl_c_or_sigterm_to_the_driver_leaves_no_orphans(launcher: str, sig: int, tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) or SIGTERM (``kill``, a scheduler) to the driving process alone (its children do not see
    it): it stops its commands before it exits."""
    if launcher == "ray":
        pytest.importorskip("ray")
    driver = ("import sys; from bus.sweep import run_commands\n"
              f"cmds = {[sleeper(tmp_path, 'one'), sleeper(tmp_path, 'two'), sleeper(tmp_path, 'three')]!r}\n"
              f"run_commands(cmds, jobs=2, launcher={launcher!r})\n")
    proc = subprocess.Popen([PY, "-c", driver], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        wait_for_files([tmp_path / "one", tmp_path / "two"], timeout_s=60.0)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert "KeyboardInterrupt" in err
    assert_gone([int((tmp_path / name).read_text()) for name in ("one", "two")], timeout_s=5.0)
    assert not (tmp_path / "three").exists()  # queued, never started


def test_the_ray_launcher_runs_the_same_commands() -> None:
    pytest.importorskip("ray")
    results = run_commands([python("print(6 * 7)"), python("import sys; sys.exit(4)")], jobs=2, launcher="ray",
                           progress=lambda line: None)
    assert [r.returncode for r in results] == [0, 4] and results[0].stdout_tail == "42"


def test_the_ray_launcher_without_ray_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(CommandError, match=r"launcher=ray needs Ray, which is not installed: pip install 'ray>=2\.50'"):
        run_commands([python("pass")], launcher="ray")


def test_results_cross_the_process_boundary_as_json_text() -> None:
    """What a Ray worker returns is the JSON text ``_run_one`` makes: plain strings and numbers, nothing pickled."""
    from bus.sweep import _run_one

    reply = json.loads(_run_one(json.dumps({"command": python("print('hi')"), "env": {}, "cwd": None,
                                            "python": PY})))
    assert reply["returncode"] == 0 and reply["stdout_tail"] == "hi" and isinstance(reply["wall_s"], float)
