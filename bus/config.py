"""Typed configuration of a bus node process: a YAML file plus ``key=value`` overrides onto a dataclass."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def load_node_config(cls: type[T], path: Path, overrides: Sequence[str], what: str, example: str) -> T:
    """``path`` merged with ``key=value`` overrides into a checked ``cls`` (a dataclass): an unknown key, a wrong
    type or an argument without ``=`` raises ``ValueError`` naming ``what`` (e.g. "robot node") and the inputs;
    ``example`` shows a valid override list in that message."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"arguments must be key=value overrides (e.g. {example}), got {bad}")
    try:
        merged = OmegaConf.merge(
            OmegaConf.structured(cls), OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides))
        )
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ValueError(f"bad {what} config ({path}, overrides {list(overrides)}): {exc}") from exc
