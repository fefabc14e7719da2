"""Typed configuration of every command: a hydra config under ``configs/`` plus overrides onto a dataclass.

    cfg = compose(RobotNodeConfig, "robot_node/default", argv, "robot node", "task=wipe mode=lockstep")

One override grammar for every command line of the project, hydra's: ``key=value``, ``a.b=value``, lists
``key=[a,b]``, quoted values ``key='a,b'``, group choices (``group=option`` where the config's folder has a
sub-folder ``group/``), ``+key=value`` for a key not in the yaml (a dict entry). ``key=a,b`` (hydra's sweep
syntax) on a list key is read as the list ``[a,b]`` and ``key=a`` as ``[a]``, so comma-separated lists keep
working. Two flags:
``--help`` (the command's docstring and its yaml, every key with its default and comment) and ``--cfg`` (the
composed, checked config as yaml). Both end the command with exit code 0 (:class:`bus.cli.EarlyExit`).

Launchers build their children's command lines with :func:`override` (it quotes what hydra would misread).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bus.cli import EarlyExit, UsageError, choose, one_line, parse_overrides
from bus.resources import config_dir

T = TypeVar("T")

# OmegaConf value node -> what a value of that key must look like.
_EXPECTED = {"IntegerNode": "an integer", "FloatNode": "a number", "BooleanNode": "true or false",
             "StringNode": "a string", "ListConfig": "a list, e.g. [1,2]", "DictConfig": "a mapping"}
_PLAIN = re.compile(r"[A-Za-z0-9_\-+./:*@%$?|]+")  # hydra reads these unquoted as the same string
_KEYWORDS = {"true", "false", "null", "nan", "inf", "-inf", "+inf"}


def override(key: str, value: Any) -> str:
    """``key=value`` as hydra's grammar reads back exactly ``value``: bools and None as ``true`` / ``null``,
    lists as ``[a,b]``, and any string that would read as something else (commas, brackets, spaces, quotes, a
    number or keyword) single-quoted."""
    return f"{key}={_literal(value)}"


def _literal(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_literal(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _KEYWORDS and not _is_number(text) and "${" not in text:
        return text
    text = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text)  # a backslash before a quote or the end
    return "'" + text.replace("'", "\\'") + "'"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def split_verb(argv: Sequence[str], verbs: Iterable[str], prog: str, example: str, doc: str | None
               ) -> tuple[str, list[str]]:
    """``prog VERB [key=value ...]`` -> (VERB, the rest). ``-h`` / ``--help`` first prints ``doc`` and ends the command
    (exit 0, :class:`bus.cli.EarlyExit`); no verb, or one not in ``verbs``, is a one-line :class:`UsageError`."""
    args = list(argv)
    options = list(verbs)
    if args[:1] in (["-h"], ["--help"]):
        print(doc or f"{prog} {{{','.join(options)}}} [key=value ...]")
        raise EarlyExit(0)
    if not args:
        raise UsageError(f"expected a command ({', '.join(options)}), e.g. {example}")
    return choose("command", args[0], options, f"{prog} command"), args[1:]


def compose(cls: type[T], config_name: str | Path, argv: Sequence[str], what: str, example: str, *,
            doc: str | None = None, positional: Sequence[str] = ()) -> T:
    """``configs/<config_name>.yaml`` (or the yaml file ``config_name``, a ``Path``) composed by hydra with the
    overrides in ``argv``, checked into ``cls`` (a dataclass: its field types are the schema).

    Every bad input raises a one-line :class:`bus.cli.UsageError` (exit 2 under :func:`bus.cli.command`) naming
    it: an argument that is no override (``example`` shows valid ones), an override hydra cannot parse, a group
    option that does not exist (listing those that do), an unknown key (listing the keys at that level), a value
    of the wrong type (naming the key, the value and the type), a YAML file that does not parse (file:line), a
    required value left ``???``, and any ``ValueError`` / ``TypeError`` of ``cls``'s own checks
    (``__post_init__``). ``what`` (e.g. "robot node") names the config in those messages. ``positional``: field
    names that bare arguments (no ``=``) fill in order, the last one taking all that remain if it is a list. ``doc``
    is what ``--help`` prints above the yaml (default: the docstring of ``cls``'s module)."""
    path = config_name if isinstance(config_name, Path) else config_dir() / f"{config_name}.yaml"
    args = list(argv)
    if "-h" in args or "--help" in args:
        _print_help(cls, path, doc, positional)
        raise EarlyExit(0)
    show = "--cfg" in args
    lines = _override_lines(cls, [a for a in args if a != "--cfg"], positional, example)
    cfg = _compose_typed(cls, path, lines, what)
    if show:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)), end="", flush=True)
        raise EarlyExit(0)
    return cfg


def _override_lines(cls: type, args: Sequence[str], positional: Sequence[str], example: str) -> list[str]:
    """``args`` as override lines: flags refused, bare arguments turned into ``name=value`` of ``positional``."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    lines: list[str] = []
    bare: list[str] = []
    for arg in args:
        if arg.startswith("--") or arg.startswith("-") and "=" not in arg:
            raise UsageError(f"{arg}: no such option; arguments are key=value overrides (e.g. {example}), --help "
                             "or --cfg")
        if "=" in arg or arg.startswith("~"):
            lines.append(arg)
        else:
            bare.append(arg)
    if bare:
        names = list(positional)
        if not names:
            raise UsageError(f"{bare[0]}: expected a key=value override (e.g. {example})")
        for i, name in enumerate(names):
            if i >= len(bare):
                break
            is_list = fields.get(name, "").startswith(("list", "tuple")) and i == len(names) - 1
            lines.insert(i, override(name, bare[i:] if is_list else bare[i]))
        if len(bare) > len(names) and not fields.get(names[-1], "").startswith(("list", "tuple")):
            raise UsageError(f"{bare[len(names)]}: expected a key=value override (e.g. {example}); only "
                             f"{', '.join(names)} may be given without a key")
    return lines


def _compose_typed(cls: type[T], path: Path, lines: Sequence[str], what: str) -> T:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    parsed = parse_overrides(lines)
    folder = path.parent
    groups = {p.name for p in folder.iterdir() if p.is_dir() and any(p.glob("*.yaml"))}
    chosen = [o for o in parsed if o.key_or_group in groups and not isinstance(o.value(), dict)]
    for o in chosen:
        if not o.is_delete() and isinstance(o.value(), str):
            choose(o.key_or_group, o.value(), {p.stem for p in (folder / o.key_or_group).glob("*.yaml")})
    loaded = _hydra_compose(path, [o.input_line for o in chosen])
    schema = OmegaConf.structured(cls)
    try:
        merged = OmegaConf.merge(schema, loaded)
    except OmegaConfBaseException as exc:
        raise UsageError(f"{path}: {_describe(exc, schema, {}, what)}") from None
    OmegaConf.set_readonly(merged, False)  # a frozen dataclass still takes its overrides; to_object freezes it
    given = {o.key_or_group: o.input_line.split("=", 1)[-1] for o in parsed}
    for o in parsed:
        if o in chosen:
            continue
        _apply(merged, o, schema, given, what)
    try:
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise UsageError(_describe(exc, schema, given, what)) from None
    except (ValueError, TypeError) as exc:  # the dataclass's own checks
        if isinstance(exc, UsageError):
            raise
        raise UsageError(f"bad {what} config: {exc}") from exc


def _hydra_compose(path: Path, group_lines: Sequence[str]) -> Any:
    """The yaml at ``path`` (with its defaults list and the group choices) as hydra composes it."""
    import yaml
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if not path.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    try:
        with initialize_config_dir(config_dir=str(path.parent.resolve()), version_base=None):
            return hydra_compose(path.stem, overrides=list(group_lines))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{mark.name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise UsageError(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    except (HydraException, OmegaConfBaseException) as exc:
        raise UsageError(f"{path}: {one_line(exc)}") from None


def _apply(cfg: Any, o: Any, schema: Any, given: dict[str, str], what: str) -> None:
    """One value override onto the typed config, as hydra applies it (``OmegaConf.update``, merging dicts)."""
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    key, line = o.key_or_group, o.input_line
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, throw_on_missing=False) if parent_key else cfg
    node = _node(parent, leaf)
    exists = node is not None
    if o.is_delete():
        raise UsageError(f"{line}: a key of the {what} config cannot be deleted; set it instead")
    if o.is_add() and exists:
        raise UsageError(f"{line}: {key} is already in the {what} config; set it without the +")
    value = o.value()
    is_list = type(node).__name__ == "ListConfig"
    if o.is_sweep_override():
        if not is_list or type(value).__name__ != "ChoiceSweep":
            raise UsageError(f"{line}: a comma makes a list, and {key} takes no list (quote it: {key}='a,b')")
        value = [getattr(v, "text", v) for v in value.list]
    wrapped = is_list and isinstance(value, (str, int, float))
    if wrapped:
        value = [value]  # key=a on a list key: the list [a], as key=a,b is [a,b]
    try:
        entry = _mapping_entry(cfg, key)
        if entry is not None:  # merged, so that the new entry takes the mapping's value type
            mapping, rest = entry
            nested: Any = value
            for part in reversed(rest):
                nested = {part: nested}
            with open_dict(mapping):
                mapping.merge_with(nested)
        else:
            OmegaConf.update(cfg, key, value, merge=True, force_add=o.is_force_add())
    except OmegaConfBaseException as exc:
        if wrapped:
            kind = {int: "integers", float: "numbers", bool: "true/false values"}.get(
                getattr(node._metadata, "element_type", None), "values")
            raise UsageError(f"{line}: expected a list of {kind}, e.g. {key}=[a,b]") from None
        raise UsageError(_describe(exc, schema, given, what)) from None


def _mapping_entry(cfg: Any, key: str) -> tuple[Any, list[str]] | None:
    """(mapping, rest of the key) when ``key`` is a new entry of a mapping field (``dict[str, X]``, not a dataclass):
    such a field takes new entries without a ``+`` (``restart.fast.max_restarts=1``), and its own checks judge
    them; None otherwise."""
    from omegaconf import DictConfig, OmegaConf

    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        node = OmegaConf.select(cfg, ".".join(parts[:i]), throw_on_missing=False)
        if node is not None:
            new = isinstance(node, DictConfig) and node._metadata.object_type in (dict, None) and \
                _node(node, parts[i]) is None
            return (node, parts[i:]) if new else None
    return None


def _node(parent: Any, leaf: str) -> Any:
    """The value node ``leaf`` of ``parent`` (also one left ``???``), None if there is none."""
    from omegaconf import DictConfig

    if not isinstance(parent, DictConfig):
        return None
    try:
        return parent._get_node(leaf, validate_access=False)
    except Exception:  # noqa: BLE001 -- any lookup failure means: no such node
        return None


def _describe(exc: Any, schema: Any, given: dict[str, str], what: str) -> str:
    """One line for an OmegaConf error: the key, the value given, and what was expected there."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue

    key = str(getattr(exc, "full_key", "") or "")
    shown = f"{key}={given.get(key, getattr(exc, 'value', None))}" if key else "a value"
    if isinstance(exc, MissingMandatoryValue):
        return f"{key}=... is required (the {what} config has no default for it)"
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(schema, parent_key, throw_on_missing=False) if parent_key else schema
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        keys = ", ".join(sorted(str(k) for k in parent)) if isinstance(parent, DictConfig) else "?"
        return f"{shown}: no such {what} config key; {parent_key + ' has' if parent_key else 'the keys are'} {keys}"
    expected = _EXPECTED.get(type(_node(parent, leaf)).__name__)
    reason = str(getattr(exc, "msg", "") or exc).splitlines()[0]
    return f"{shown}: expected {expected}" if expected else f"{shown}: {reason}"


def _print_help(cls: type, path: Path, doc: str | None, positional: Sequence[str]) -> None:
    """The command's docstring, then its yaml: every key with its default and the comment saying what it does."""
    text = doc if doc is not None else (sys.modules[cls.__module__].__doc__ or "")
    print(text.rstrip() + "\n")
    bare = f"; {', '.join(positional)} may also be given without a key" if positional else ""
    print(f"Config {path} (override any key: key=value, a.b=value, key=[a,b]; --cfg prints the result{bare}):\n")
    print(path.read_text() if path.is_file() else "(missing)", end="", flush=True)
