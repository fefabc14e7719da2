"""Typed configuration of a bus node process: a YAML file plus ``key=value`` overrides onto a dataclass."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from bus.cli import UsageError

T = TypeVar("T")

# OmegaConf value node -> what a value of that key must look like.
_EXPECTED = {"IntegerNode": "an integer", "FloatNode": "a number", "BooleanNode": "true or false",
             "StringNode": "a string", "ListConfig": "a list, e.g. [1,2]", "DictConfig": "a mapping"}


def load_node_config(cls: type[T], path: Path, overrides: Sequence[str], what: str, example: str) -> T:
    """``path`` merged with ``key=value`` overrides into a checked ``cls`` (a dataclass).

    Every bad input raises a one-line :class:`bus.cli.UsageError` (a ``ValueError``) naming it: an argument
    without ``=`` (``example`` shows valid ones), an unknown key (listing the keys at that level), a value of the
    wrong type (naming the key, the value and the type), a YAML file that does not parse (file and line), and any
    ``ValueError`` / ``TypeError`` of ``cls``'s own checks (``__post_init__``). ``what`` (e.g. "robot node")
    names the config in those messages. A missing YAML file stays a ``FileNotFoundError`` naming the path."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise UsageError(f"{bad[0]}: expected a key=value override (e.g. {example})")
    schema = OmegaConf.structured(cls)
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise UsageError(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    try:
        merged = OmegaConf.merge(schema, loaded)
    except OmegaConfBaseException as exc:
        raise UsageError(f"{path}: {_describe(exc, schema, {}, what)}") from None
    try:
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        given = dict(o.split("=", 1) for o in overrides)
        raise UsageError(_describe(exc, schema, given, what)) from None
    except (ValueError, TypeError) as exc:  # the dataclass's own checks
        if isinstance(exc, UsageError):
            raise
        raise UsageError(f"bad {what} config: {exc}") from exc


def _describe(exc: Any, schema: Any, given: dict[str, str], what: str) -> str:
    """One line for an OmegaConf error: the key, the value given, and what was expected there."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    key = str(getattr(exc, "full_key", "") or "")
    shown = f"{key}={given.get(key, getattr(exc, 'value', None))}" if key else "a value"
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(schema, parent_key, throw_on_missing=False) if parent_key else schema
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        keys = ", ".join(sorted(str(k) for k in parent)) if isinstance(parent, DictConfig) else "?"
        return f"{shown}: no such {what} config key; {parent_key + ' has' if parent_key else 'the keys are'} {keys}"
    node = parent._get_node(leaf) if isinstance(parent, DictConfig) and leaf in parent else None
    expected = _EXPECTED.get(type(node).__name__)
    reason = str(getattr(exc, "msg", "") or exc).splitlines()[0]
    return f"{shown}: expected {expected}" if expected else f"{shown}: {reason}"
