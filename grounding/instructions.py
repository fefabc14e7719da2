"""Operator instructions about a recorded episode, each with the answer a model must ground in (text, video).

An answer is a task, one value per goal field and a keyframe bin, as class indices (:data:`TASKS`, :data:`FIELDS`,
:data:`KEYFRAME_BINS`); :data:`IGNORE` marks what the instruction does not ask or the video cannot show. Kinds:

* ``explicit`` -- the text names the task and the goal ("peel the cucumber on the left half only"); a field it
  leaves out is the default, as ``Goal.parse`` reads it;
* ``repeat`` -- "do that again": the task and the goal fields the video shows (``meta["shown"]``: the half wiped or
  peeled, the height the box ended at); forces and grips cannot be seen, so they are IGNORE;
* ``modified`` -- "same task, but firmer": ``repeat`` with one field set by the text;
* ``relative`` -- "same again, but a bit higher": the shown height moved one level, so it needs the video's height;
* ``complement`` -- "now do the other side": the half the video did not show done (an episode that did all, or no
  clear half, gets none);
* ``when`` -- "when did the box slip?": the keyframe bin of a visible event recorded in the episode (only episodes
  that have it), its goal fields IGNORE.

Templates come in two splits that share none (:data:`SPLITS`): models train on ``train`` and are tested on the
``heldout`` wording. Distractor clauses (politeness, asides about objects not involved) are split the same way and
never use a word that names a task, an object worked on or a goal value. The value phrases are shared vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SPLITS = ("train", "heldout")
KINDS = ("explicit", "repeat", "modified", "relative", "complement", "when")
TASKS = ("wipe", "peel", "lift")
FIELDS: dict[str, tuple[str, ...]] = {
    "region": ("all", "left", "right"),
    "force": ("normal", "gentle", "firm"),
    "height": ("low", "normal", "high"),  # in order: ``relative`` moves one step along it
    "grip": ("normal", "gentle"),
}
TASK_FIELDS: dict[str, tuple[str, ...]] = {"wipe": ("region", "force"), "peel": ("region",), "lift": ("height", "grip")}
VISIBLE_FIELDS = ("region", "height")  # what a video shows of a goal (grounding.data.shown_goal)
KEYFRAME_BINS = 16
IGNORE = -100
TARGET_KEYS = ("task", *FIELDS, "keyframe_bin")
OTHER_SIDE = {"left": "right", "right": "left"}

# Shared vocabulary: how a task is asked for, and how each goal value is said.
ACTS: dict[str, tuple[str, ...]] = {
    "wipe": ("wipe the vase", "clean the marks off the vase", "wipe the smudges off the vase", "clean the vase"),
    "peel": ("peel the cucumber", "take the skin off the cucumber", "peel the skin off the cucumber"),
    "lift": ("lift the box", "pick up the box", "raise the box with both arms", "lift the box between the paddles"),
}
NOUNS: dict[str, dict[str, str]] = {
    "wipe": {"object": "vase", "tool": "sponge", "piece": "mark", "done": "wiped off"},
    "peel": {"object": "cucumber", "tool": "peeler", "piece": "strip", "done": "peeled"},
    "lift": {"object": "box", "tool": "paddles"},
}
VALUE_PHRASES: dict[tuple[str, str], tuple[str, ...]] = {  # "" says nothing: the default
    ("region", "all"): ("", "all over", "from end to end", "completely"),
    ("region", "left"): ("on the left half only", "on the left side only", "only on the left"),
    ("region", "right"): ("on the right half only", "on the right side only", "only on the right"),
    ("force", "normal"): ("", "with normal pressure", "with the usual force"),
    ("force", "gentle"): ("gently", "with a light touch", "softly"),
    ("force", "firm"): ("firmly", "pressing hard", "with a firm hand"),
    ("height", "normal"): ("", "to the usual height", "to a normal height"),
    ("height", "low"): ("just a little", "only a few centimetres", "to a low height"),
    ("height", "high"): ("up high", "as high as you can", "to a high position"),
    ("grip", "normal"): ("", "with a normal grip", "with the usual squeeze"),
    ("grip", "gentle"): ("gently", "with a gentle grip", "with a soft squeeze"),
}
MOD_PHRASES: dict[tuple[str, str], tuple[str, ...]] = {  # a change to what the video shows
    ("force", "gentle"): ("gentler", "more gently", "with a lighter touch"),
    ("force", "firm"): ("firmer", "press harder", "with more force"),
    ("force", "normal"): ("with normal pressure", "with the usual force"),
    ("region", "all"): ("the whole thing", "all of it", "from end to end"),
    ("region", "left"): ("only the left half", "on the left side only"),
    ("region", "right"): ("only the right half", "on the right side only"),
    ("height", "high"): ("lift it up high", "as high as you can"),
    ("height", "low"): ("only a few centimetres up", "just a little off the table"),
    ("height", "normal"): ("to the usual height",),
    ("grip", "gentle"): ("with a gentle grip", "squeeze it gently"),
    ("grip", "normal"): ("with a normal grip",),
}
REL_PHRASES: dict[int, tuple[str, ...]] = {1: ("a bit higher", "higher than that", "lift it higher"),
                                           -1: ("a bit lower", "not as high", "lift it lower")}
PIECE_EVENT = {"wipe": "mark_wiped", "peel": "strip_peeled"}
# when-question -> (event kind, or "piece" for the task's mark/strip event; which occurrence)
QUESTIONS: dict[str, tuple[str, str]] = {
    "first_touch": ("contact_onset", "first"),
    "lost_touch": ("contact_offset", "first"),
    "surface_moved": ("surface_moved", "first"),
    "first_piece": ("piece", "first"),
    "last_piece": ("piece", "last"),
    "box_lifted": ("box_lifted", "first"),
    "box_top": ("box_top", "first"),
    "box_slipped": ("box_slipped", "first"),
}

# Templates: {act}, {mod}, {rel} and the NOUNS words are filled in; train and heldout share none.
_FRAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "explicit": {
        "train": ("{act}.", "please {act}.", "could you {act}?", "I want you to {act}.", "go ahead and {act}.",
                  "can you {act} for me?", "next, {act}."),
        "heldout": ("would you {act}, please?", "your job now is to {act}.", "time to {act}.", "let's {act}.",
                    "I'd like you to {act}."),
    },
    "repeat": {
        "train": ("do that again.", "repeat what you just did.", "same again.", "do exactly what you did before.",
                  "one more time, just like that.", "again, the same way."),
        "heldout": ("redo that.", "let's have that once more.", "do it like you just did.",
                    "copy what you did a moment ago."),
    },
    "modified": {
        "train": ("same task, but {mod}.", "do that again, but {mod}.", "repeat that, {mod} this time."),
        "heldout": ("like before, except {mod}.", "once more, but {mod}."),
    },
    "relative": {
        "train": ("same again, but {rel}.", "do that again, {rel}."),
        "heldout": ("like that, except {rel}.", "once more, only {rel}."),
    },
    "complement": {
        "train": ("now do the other side.", "do the other half now.", "next, the opposite side."),
        "heldout": ("now the remaining half.", "switch to the other side."),
    },
}
_QUESTION_FRAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "first_touch": {"train": ("when did it first touch?", "when did the {tool} first touch the {object}?",
                              "at what moment did the {tool} make contact?"),
                    "heldout": ("how far in did the {tool} first reach the {object}?",
                                "at which point was contact first made?")},
    "lost_touch": {"train": ("when did the {tool} first lose contact?",
                             "when did the {tool} first come off the {object}?"),
                   "heldout": ("at which point did contact first break?",)},
    "surface_moved": {"train": ("when did the {object} move?", "at what moment did the {object} shift?"),
                      "heldout": ("at which point was the {object} moved?",)},
    "first_piece": {"train": ("when was the first {piece} {done}?", "when did the first {piece} come off?"),
                    "heldout": ("at which moment was the first {piece} gone?",)},
    "last_piece": {"train": ("when was the last {piece} {done}?",),
                   "heldout": ("at which moment was the final {piece} gone?",)},
    "box_lifted": {"train": ("when did the box leave the table?", "when did the box come off the table?"),
                   "heldout": ("at which moment did the box rise off the table?",)},
    "box_top": {"train": ("when did the box reach its highest point?", "when was the box at the top?"),
                "heldout": ("at which moment did the box stop rising?",)},
    "box_slipped": {"train": ("when did the box slip?", "when did the box start sliding?"),
                    "heldout": ("at which moment did the box begin to slide down?",)},
}
# Distractor clauses: nothing here names a task, a worked object, a tool or a goal value (a test checks).
PREFIXES: dict[str, tuple[str, ...]] = {
    "train": ("okay, ", "hey robot, ", "so, ", "um, ", "quick one: "),
    "heldout": ("hi there, ", "listen, ", "well, ", "excuse me, "),
}
SUFFIXES: dict[str, tuple[str, ...]] = {
    "train": (" Thanks.", " Cheers.", " No rush.", " Don't worry about the mug.",
              " Ignore the coffee cup next to it.", " The notebook can stay where it is.",
              " I'll check back in a minute.", " Please."),
    "heldout": (" Much appreciated.", " Never mind the screwdriver on the bench.", " The phone can wait.",
                " The plant doesn't need anything.", " Take your time."),
}
PREFIX_P = 0.3  # how often a prefix / suffix distractor is added
SUFFIX_P = 0.4


@dataclass(frozen=True)
class Template:
    """One wording of one kind of instruction; ``question`` names the moment a ``when`` template asks about."""

    kind: str
    split: str
    text: str
    question: str = ""


@dataclass(frozen=True)
class Instruction:
    """A generated instruction: its text, its answer (class indices, IGNORE where unasked), and where it came from."""

    text: str
    targets: Mapping[str, int]
    kind: str
    template: str


def _templates() -> tuple[Template, ...]:
    out = [Template(kind, split, text) for kind, splits in _FRAMES.items() for split, texts in splits.items()
           for text in texts]
    out += [Template("when", split, text, question) for question, splits in _QUESTION_FRAMES.items()
            for split, texts in splits.items() for text in texts]
    return tuple(out)


TEMPLATES = _templates()


def templates(split: str, kind: str | None = None) -> tuple[Template, ...]:
    """The templates of ``split`` (and ``kind``)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {', '.join(SPLITS)}")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {', '.join(KINDS)}")
    return tuple(t for t in TEMPLATES if t.split == split and (kind is None or t.kind == kind))


def keyframe_bin(t: float, duration: float) -> int:
    """The bin of normalised episode time [0, 1) that time ``t`` (s) falls in; the episode's end is the last bin."""
    if duration <= 0 or not 0 <= t <= duration:
        raise ValueError(f"event time {t} s outside the episode's [0, {duration}] s")
    return min(int(t / duration * KEYFRAME_BINS), KEYFRAME_BINS - 1)


def encode(task: str, values: Mapping[str, str | None], keyframe: int = IGNORE) -> dict[str, int]:
    """Targets as class indices: ``values`` {field: value or None}; fields not given, or None, are IGNORE."""
    targets = {k: IGNORE for k in TARGET_KEYS}
    targets["task"] = TASKS.index(task)
    for name, value in values.items():
        if name not in TASK_FIELDS[task]:
            raise ValueError(f"{task} has no goal field {name!r}; its fields: {', '.join(TASK_FIELDS[task])}")
        if value is not None:
            targets[name] = FIELDS[name].index(value)
    targets["keyframe_bin"] = keyframe
    return targets


def decode(targets: Mapping[str, int]) -> dict[str, str | int | None]:
    """Class indices back to names (None for IGNORE): for reading samples."""
    out: dict[str, str | int | None] = {"task": TASKS[targets["task"]] if targets["task"] != IGNORE else None}
    for name, values in FIELDS.items():
        out[name] = values[targets[name]] if targets[name] != IGNORE else None
    out["keyframe_bin"] = None if targets["keyframe_bin"] == IGNORE else targets["keyframe_bin"]
    return out


def shown(meta: Mapping[str, Any]) -> dict[str, str | None]:
    """The goal fields of the episode's task the video shows (None: not shown, or not visible at all)."""
    seen = meta.get("shown") or {}
    return {k: seen.get(k) if k in VISIBLE_FIELDS else None for k in TASK_FIELDS[meta["task"]]}


def event_time(meta: Mapping[str, Any], question: str) -> float | None:
    """When the moment ``question`` asks about happened in the episode (s), or None if it did not (or unseen)."""
    kind, which = QUESTIONS[question]
    if kind == "piece":
        kind = PIECE_EVENT.get(meta["task"], "")
    times = [float(e["t"]) for e in meta.get("events", ())
             if e["kind"] == kind and e.get("visible", True) and 0 <= float(e["t"]) <= float(meta["duration"])]
    if not times:
        return None
    return min(times) if which == "first" else max(times)


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _fill(text: str, task: str, **slots: str) -> str:
    return text.format(**NOUNS[task], **slots)


def realise(template: Template, meta: Mapping[str, Any], rng: np.random.Generator) -> Instruction | None:
    """``template`` made into an instruction about the episode ``meta``, with its answer; None where the episode
    cannot answer it (no clear half for ``complement``, no such event for ``when``, ...)."""
    task = meta["task"]
    fields = TASK_FIELDS[task]
    seen = shown(meta)
    if template.kind == "explicit":
        goal = {k: meta["goal"]["fields"][k] for k in fields}
        phrases = [p for p in (_pick(rng, VALUE_PHRASES[k, v]) for k, v in goal.items()) if p]
        order = rng.permutation(len(phrases))
        said = ", ".join(phrases[i] for i in order)
        core = _fill(template.text, task, act=_pick(rng, ACTS[task]) + (f" {said}" if said else ""))
        targets = encode(task, goal)
    elif template.kind == "repeat":
        core, targets = _fill(template.text, task), encode(task, seen)
    elif template.kind == "modified":
        field, value = _pick(rng, [(k, v) for k, v in MOD_PHRASES if k in fields])
        core = _fill(template.text, task, mod=_pick(rng, MOD_PHRASES[field, value]))
        targets = encode(task, {**seen, field: value})
    elif template.kind == "relative":
        if seen.get("height") is None:
            return None
        level = FIELDS["height"].index(seen["height"])
        steps = [s for s in (1, -1) if 0 <= level + s < len(FIELDS["height"])]
        step = _pick(rng, steps)
        core = _fill(template.text, task, rel=_pick(rng, REL_PHRASES[step]))
        targets = encode(task, {**seen, "height": FIELDS["height"][level + step]})
    elif template.kind == "complement":
        if seen.get("region") not in OTHER_SIDE:
            return None
        core, targets = _fill(template.text, task), encode(task, {"region": OTHER_SIDE[seen["region"]]})
    elif template.kind == "when":
        t = event_time(meta, template.question)
        if t is None:
            return None
        core = _fill(template.text, task)
        targets = encode(task, {}, keyframe_bin(t, float(meta["duration"])))
    else:
        raise ValueError(f"template kind {template.kind!r}: expected one of {', '.join(KINDS)}")
    return Instruction(_dress(core, template.split, rng), targets, template.kind, template.text)


def _dress(core: str, split: str, rng: np.random.Generator) -> str:
    """The instruction with the split's distractor clauses (sometimes), capitalised."""
    if rng.random() < PREFIX_P:
        core = _pick(rng, PREFIXES[split]) + core
    if rng.random() < SUFFIX_P:
        core += _pick(rng, SUFFIXES[split])
    return core[0].upper() + core[1:]


def generate(meta: Mapping[str, Any], split: str, rng: np.random.Generator,
             kinds: Sequence[str] = KINDS) -> list[Instruction]:
    """One instruction of each kind in ``kinds`` the episode can answer (for ``when``, one per moment it has), in
    a template of ``split`` drawn from ``rng``: the same ``rng`` state gives the same list."""
    out: list[Instruction] = []
    for kind in kinds:
        if kind == "when":
            for question in QUESTIONS:
                options = [t for t in templates(split, "when") if t.question == question]
                made = realise(_pick(rng, options), meta, rng) if options else None
                if made is not None:
                    out.append(made)
            continue
        made = realise(_pick(rng, templates(split, kind)), meta, rng)
        if made is not None:
            out.append(made)
    return out


def make_samples(meta: Mapping[str, Any], split: str, rng: np.random.Generator) -> list[tuple[str, dict[str, int]]]:
    """(text, targets) of every instruction :func:`generate` makes for the episode ``meta``."""
    return [(i.text, dict(i.targets)) for i in generate(meta, split, rng)]
