"""How every command line of the project fails: one line on stderr, and an exit code that says whose fault it was.

    from bus.cli import UsageError, command

    @command("sim.eval")
    def main(argv: Sequence[str] | None = None) -> int:
        ...
        raise UsageError("task=nosuch: no such task; choose one of lift, peel, wipe")

A failure prints ``<prog>: error: <message>`` as one line on stderr and exits with

* **2** -- a bad argument, config value or input file: :class:`UsageError` (and its subclasses, e.g. a corrupt
  checkpoint or dataset), a ``FileNotFoundError`` / ``FileExistsError`` / ``NotADirectoryError`` /
  ``IsADirectoryError`` (a path argument that is not what it should be).
  The message names the bad input, what was expected and, where there is a list, the valid choices;
* **1** -- an expected failure while running (:class:`CommandError`: a child process died, a disk filled up);
* **130** -- Ctrl-C.

Any other exception is a bug and keeps Python's traceback (exit 1).

**Debugging: ``SLOWFAST_DEBUG=1``** in the environment re-raises every error with its full traceback. An
environment variable, not a ``--debug`` flag, because it reaches every process a launcher starts
(``rdp.run``'s nodes, ``rdp.compare``'s ``sim.eval`` cells) and cannot collide with hydra's arguments.

Every command line is hydra overrides. Commands that want hydra's run directory (``sim.eval``, ``rdp.train``) call
:func:`run_hydra`: it checks the overrides against ``configs/`` first (group choices, keys, value types, required
values), so ``task=nosuch`` ends in one line listing the tasks instead of hydra's report, then runs the hydra
application and lets its errors out through the same path. Every other command composes its typed config with
:func:`bus.config.compose` (hydra's Compose API, the same grammar and the same one-line errors; ``--help`` and
``--cfg`` end it with :class:`EarlyExit`, exit 0).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

DEBUG_ENV = "SLOWFAST_DEBUG"
USAGE_EXIT = 2
FAILURE_EXIT = 1
INTERRUPT_EXIT = 130
_BAD_PATH = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)

F = TypeVar("F", bound=Callable[..., Any])


class CommandError(Exception):
    """An expected failure while a command runs (not a bug, not a bad argument): one line, exit 1."""

    exit_code = FAILURE_EXIT


class EarlyExit(Exception):
    """The command did all it was asked before its real work (``--help``, ``--cfg``): exit with ``code``."""

    def __init__(self, code: int = 0) -> None:
        super().__init__(code)
        self.code = code


class UsageError(CommandError, ValueError):
    """A bad argument, config value or input file: one line naming it and what was expected, exit 2.

    A ``ValueError``, so code that checks its inputs with ``except ValueError`` keeps working."""

    exit_code = USAGE_EXIT


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def exit_code(exc: BaseException) -> int | None:
    """The exit code an expected error maps to; None for anything else (a bug: keep the traceback)."""
    if isinstance(exc, CommandError):
        return exc.exit_code
    if isinstance(exc, _BAD_PATH):
        return USAGE_EXIT
    return None


def one_line(exc: BaseException) -> str:
    """The error's message on one line; an OS error as ``PATH: what happened``."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror[:1].lower()}{exc.strerror[1:]}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def report(prog: str, exc: BaseException) -> int:
    """Print ``prog: error: message`` for an expected error and return its exit code; re-raise anything else."""
    code = exit_code(exc)
    if code is None or debug_enabled():
        raise exc
    print(f"{prog}: error: {one_line(exc)}", file=sys.stderr, flush=True)
    return code


def command(prog: str) -> Callable[[F], F]:
    """Decorate a ``main(argv=None, ...) -> int``: expected errors become one stderr line and an exit code."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> int:
            try:
                return int(fn(*args, **kwargs) or 0)
            except EarlyExit as done:
                return done.code
            except KeyboardInterrupt:
                if debug_enabled():
                    raise
                print(f"{prog}: interrupted", file=sys.stderr, flush=True)
                return INTERRUPT_EXIT
            except Exception as exc:  # noqa: BLE001 -- report() re-raises what it does not know
                return report(prog, exc)

        return wrapper  # type: ignore[return-value]

    return wrap


# ----------------------------------------------------------------------------------------------- values


def choose(name: str, value: Any, choices: Iterable[Any], what: str | None = None) -> Any:
    """``value`` if it is one of ``choices``, else a UsageError: ``name=value: no such WHAT; choose one of ...``."""
    options = sorted(choices)
    if value not in options:
        raise UsageError(f"{name}={value}: no such {what or name}; choose one of {', '.join(map(str, options))}")
    return value


# ----------------------------------------------------------------------------------------------- hydra


def parse_overrides(lines: Sequence[str]) -> list[Any]:
    """Hydra's parse of each ``key=value`` override (its ``Override`` objects); one that hydra's grammar cannot
    read raises a :class:`UsageError` naming it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for line in lines:
        try:
            parsed.append(parser.parse_override(line))
        except HydraException as exc:
            raise UsageError(f"{line}: not a valid override ({one_line(exc).split(' See ')[0]})") from None
    return parsed


def check_hydra_overrides(config_dir: Path, config_name: str, overrides: Sequence[str]) -> Any:
    """Compose ``config_name`` with ``overrides`` as hydra will, and raise a :class:`UsageError` naming the first
    bad override: a config group option that does not exist (listing those that do), a key the config does not
    have (listing those it has), a value whose type differs from the default's (``episodes=abc``), a value left
    ``???``, or an override hydra cannot parse. Returns the composed config (hydra's own node excluded)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    parsed = parse_overrides(overrides)
    groups = {p.name for p in Path(config_dir).iterdir() if p.is_dir()}
    chosen = []
    for o in parsed:
        if o.key_or_group in groups and not o.is_delete():
            value = o.value()
            if isinstance(value, str):
                options = {p.stem for p in (Path(config_dir) / o.key_or_group).glob("*.yaml")}
                choose(o.key_or_group, value, options, o.key_or_group)
            chosen.append(o.input_line)

    def _compose(lines: Sequence[str]) -> DictConfig:
        try:
            with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
                return compose(config_name, overrides=list(lines))
        except (HydraException, OmegaConfBaseException) as exc:
            raise UsageError(one_line(exc)) from None

    base = _compose(chosen)
    for o in parsed:
        key = o.key_or_group
        if o.input_line in chosen or o.is_add() or o.is_delete() or o.is_force_add() or key.startswith("hydra."):
            continue
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(base, parent_key) if parent_key else base
        if not isinstance(parent, DictConfig) or leaf not in parent.keys():  # `in` skips ??? values
            where = f"{parent_key} has" if parent_key and isinstance(parent, DictConfig) else "the keys are"
            keys = ", ".join(sorted(str(k) for k in parent)) if isinstance(parent, DictConfig) else ""
            raise UsageError(f"{o.input_line}: no such key; {where} {keys}".rstrip())
        node = parent._get_node(leaf)
        default = node if isinstance(node, (DictConfig, ListConfig)) else node._value()  # "???", "${..}" kept
        _check_type(o.input_line, default, o.value())
    cfg = _compose(overrides)
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not str(k).startswith("hydra"))
    if missing:
        raise UsageError(f"{missing[0]}=... is required (configs/{config_name}.yaml has no default for it)")
    return cfg


def _check_type(line: str, default: Any, value: Any) -> None:
    """An override's parsed value against the default it replaces (None, ``???`` and interpolations take any)."""
    from omegaconf import DictConfig, ListConfig

    if value is None or default is None or (isinstance(default, str) and (default == "???" or "${" in default)):
        return
    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, (list, tuple, ListConfig)):
        ok, want = isinstance(value, list), "a list, e.g. [a,b]"
    elif isinstance(default, (Mapping, DictConfig)):
        ok, want = isinstance(value, dict), "a mapping, e.g. {a: 1}"
    else:
        ok, want = not isinstance(value, (list, dict)), "a single value"
    if not ok:
        raise UsageError(f"{line}: expected {want} (the default is {_show(default)})")


def _show(value: Any) -> str:
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=False)
    return str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, str) else str(value)


def run_hydra(config_dir: Path, config_name: str, argv: Sequence[str], task: Callable[[Any], int | None]) -> int:
    """Run ``task(cfg)`` as a hydra application (run directory, logging, ``.hydra/`` as ``@hydra.main`` gives)
    over ``argv``, after :func:`check_hydra_overrides`. Hydra's own flags (``--cfg``, ``-m``, ...) skip the check.
    An exception from ``task`` leaves hydra unchanged and is raised here, so :func:`command` reports it."""
    import hydra

    args = list(argv)
    if not any(a.startswith("-") for a in args):
        check_hydra_overrides(config_dir, config_name, args)
    outcome: list[Any] = []

    @hydra.main(config_path=str(Path(config_dir).resolve()), config_name=config_name, version_base=None)
    @functools.wraps(task)  # hydra names the job (its log file) after the function it unwraps: task's module
    def _app(cfg: Any) -> None:
        try:
            outcome.append(task(cfg))
        except BaseException as exc:  # noqa: BLE001 -- handed to the caller, outside hydra's error printer
            outcome.append(exc)

    saved = sys.argv
    sys.argv = [saved[0] if saved else config_name, *args]
    try:
        _app()
    finally:
        sys.argv = saved
    result = outcome[0] if outcome else 0
    if isinstance(result, BaseException):
        raise result
    return int(result or 0)
