"""Instruction generation: disjoint splits, answers consistent with the episode for every template, variety and
determinism. The metas are made up here in the recorder's format (no simulation)."""

from __future__ import annotations

import itertools
import re
from typing import Any

import numpy as np
import pytest

from grounding import instructions as ins
from grounding.instructions import (
    FIELDS,
    IGNORE,
    KINDS,
    MOD_PHRASES,
    PREFIXES,
    QUESTIONS,
    REL_PHRASES,
    SPLITS,
    SUFFIXES,
    TARGET_KEYS,
    TASK_FIELDS,
    TASKS,
    TEMPLATES,
    VALUE_PHRASES,
    decode,
    generate,
    keyframe_bin,
    make_samples,
    realise,
    templates,
)

DURATION = 8.0
# Words that would give away (or contradict) a task, an object worked on or a goal value.
LOADED = {"wipe", "peel", "lift", "vase", "cucumber", "box", "sponge", "peeler", "paddles", "mark", "strip", "left",
          "right", "all", "whole", "half", "side", "gentle", "gently", "soft", "softly", "light", "firm", "firmly",
          "hard", "harder", "force", "high", "higher", "low", "lower", "grip", "squeeze", "touch", "again", "same"}
# What each question asks about, written out again here so that a wrong mapping in the generator shows.
ASKS = {"first_touch": ("contact_onset", "first"), "lost_touch": ("contact_offset", "first"),
        "surface_moved": ("surface_moved", "first"), "first_piece": ("piece", "first"),
        "last_piece": ("piece", "last"), "box_lifted": ("box_lifted", "first"), "box_top": ("box_top", "first"),
        "box_slipped": ("box_slipped", "first")}


def meta(task: str, goal: dict[str, str], shown: dict[str, str | None], events: list[dict] | None = None) -> dict:
    return {"task": task, "goal": {"name": "-".join(goal.values()), "fields": goal}, "shown": shown,
            "duration": DURATION, "events": events or [], "seed": 0}


def all_metas() -> list[dict[str, Any]]:
    """Every goal of every task, crossed with every value the video may show (None: nothing clear), with events."""
    from sim.registry import TASKS as SIM_TASKS

    out = []
    contact = [{"kind": "contact_onset", "t": 2.9, "visible": True}, {"kind": "contact_offset", "t": 7.0,
                                                                      "visible": True}]
    surface = [{"kind": "surface_moved", "t": 1.6, "visible": True, "detail": "raise"}]
    events = {
        "wipe": [*contact, *surface, {"kind": "mark_wiped", "t": 3.5, "visible": True, "detail": 0},
                 {"kind": "mark_wiped", "t": 5.0, "visible": True, "detail": 1}],
        "peel": [*contact, *surface, {"kind": "strip_peeled", "t": 4.0, "visible": True, "detail": 2}],
        "lift": [*contact, {"kind": "box_lifted", "t": 2.2, "visible": True},
                 {"kind": "box_top", "t": 4.6, "visible": True},
                 {"kind": "box_slipped", "t": DURATION, "visible": True},
                 {"kind": "mass_added", "t": 4.0, "visible": False}],
    }
    for task in TASKS:
        visible = [k for k in TASK_FIELDS[task] if k in ins.VISIBLE_FIELDS]
        for goal in SIM_TASKS[task].goal_type.every():
            fields = {k: getattr(goal, k) for k in goal.choices()}
            for values in itertools.product(*[(*FIELDS[k], None) for k in visible]):
                out.append(meta(task, fields, dict(zip(visible, values, strict=True)), events[task]))
    return out


def said(text: str, phrases: dict[tuple[str, str], tuple[str, ...]], fields: tuple[str, ...]) -> dict[str, str]:
    """{field: value} of every phrase of ``phrases`` in ``text`` (the longest match wins where one holds another)."""
    found: dict[str, set[str]] = {}
    for (field, value), options in phrases.items():
        if field in fields and any(p and re.search(rf"\b{re.escape(p)}\b", text) for p in options):
            found.setdefault(field, set()).add(value)
    out = {}
    for field, values in found.items():
        assert len(values) == 1, f"{text!r} says {field} is {values}"
        out[field] = values.pop()
    return out


def expected(template: ins.Template, m: dict, text: str) -> dict[str, int] | None:
    """The answer, worked out from the text and the episode independently of the generator."""
    task = m["task"]
    fields = TASK_FIELDS[task]
    seen = {k: m["shown"].get(k) for k in fields if k in ins.VISIBLE_FIELDS}
    want: dict[str, Any] = {k: IGNORE for k in TARGET_KEYS}
    want["task"] = TASKS.index(task)

    def put(values: dict[str, str | None]) -> None:
        for k, v in values.items():
            want[k] = IGNORE if v is None else FIELDS[k].index(v)

    if template.kind == "explicit":
        text_goal = {k: FIELDS[k][0] if k != "height" else "normal" for k in fields}  # unsaid: the default
        text_goal.update(said(text, VALUE_PHRASES, fields))
        assert text_goal == m["goal"]["fields"], text
        put(text_goal)
    elif template.kind == "repeat":
        put(seen)
    elif template.kind == "modified":
        change = said(text, MOD_PHRASES, fields)
        assert len(change) == 1, text
        put({**seen, **change})
    elif template.kind == "relative":
        if seen.get("height") is None:
            return None
        step = 1 if any(p in text for p in REL_PHRASES[1]) else -1
        assert any(p in text for p in REL_PHRASES[step]), text
        level = FIELDS["height"].index(seen["height"]) + step
        assert 0 <= level < 3, text
        put({**seen, "height": FIELDS["height"][level]})
    elif template.kind == "complement":
        if seen.get("region") not in ("left", "right"):
            return None
        put({"region": {"left": "right", "right": "left"}[seen["region"]]})
    else:
        kind, which = ASKS[template.question]
        kind = {"wipe": "mark_wiped", "peel": "strip_peeled"}.get(task, "-") if kind == "piece" else kind
        times = [e["t"] for e in m["events"] if e["kind"] == kind and e["visible"]]
        if not times:
            return None
        t = min(times) if which == "first" else max(times)
        want["keyframe_bin"] = min(int(t / DURATION * 16), 15)
    return want


def test_fields_match_the_sim_goals():
    from sim.registry import TASKS as SIM_TASKS

    assert set(SIM_TASKS) == set(TASKS)
    for task, cls in SIM_TASKS.items():
        choices = cls.goal_type.choices()
        assert tuple(choices) == TASK_FIELDS[task]
        for field, values in choices.items():
            assert set(values) == set(FIELDS[field])


def test_questions_are_the_ones_written_out():
    assert set(QUESTIONS) == set(ASKS)


def test_splits_share_no_template_or_distractor():
    for kind in KINDS:
        train = {t.text for t in templates("train", kind)}
        heldout = {t.text for t in templates("heldout", kind)}
        assert train and heldout and not train & heldout, kind
    for question in QUESTIONS:
        for split in SPLITS:
            assert any(t.question == question for t in templates(split, "when")), (question, split)
    assert not {t.text for t in templates("train")} & {t.text for t in templates("heldout")}
    assert not set(PREFIXES["train"]) & set(PREFIXES["heldout"])
    assert not set(SUFFIXES["train"]) & set(SUFFIXES["heldout"])
    assert len({(t.kind, t.split, t.text, t.question) for t in TEMPLATES}) == len(TEMPLATES)


def test_distractors_give_nothing_away():
    for clause in (*itertools.chain(*PREFIXES.values()), *itertools.chain(*SUFFIXES.values())):
        words = set(re.findall(r"[a-z]+", clause.lower()))
        assert not words & LOADED, (clause, words & LOADED)


def test_every_template_gives_the_answer_of_its_text_and_video():
    metas = all_metas()
    answered = {t: 0 for t in TEMPLATES}
    for template in TEMPLATES:
        for i, m in enumerate(metas):
            rng = np.random.default_rng(i)
            made = realise(template, m, rng)
            want = expected(template, m, made.text if made else "")
            if made is None:
                assert want is None, (template, m["task"], m["shown"])
                continue
            answered[template] += 1
            assert made.kind == template.kind and made.template == template.text
            assert dict(made.targets) == want, (made.text, decode(made.targets), decode(want))
            assert made.text[0].isupper() and made.text.rstrip()[-1] in ".?"
    unused = [t for t, n in answered.items() if n == 0]
    assert not unused, unused  # every template applies to some episode


def test_complement_needs_a_clear_half():
    template = templates("train", "complement")[0]
    rng = np.random.default_rng(0)
    goal = {"region": "left", "force": "gentle"}
    made = realise(template, meta("wipe", goal, {"region": "left"}), rng)
    assert decode(made.targets)["region"] == "right" and decode(made.targets)["force"] is None
    assert decode(realise(template, meta("peel", {"region": "all"}, {"region": "right"}), rng).targets)["region"] \
        == "left"
    assert realise(template, meta("wipe", goal, {"region": "all"}), rng) is None
    assert realise(template, meta("wipe", goal, {"region": None}), rng) is None
    assert realise(template, meta("lift", {"height": "low", "grip": "normal"}, {"height": "low"}), rng) is None


def test_when_questions_only_with_their_event():
    rng = np.random.default_rng(0)
    m = meta("lift", {"height": "normal", "grip": "normal"}, {"height": "normal"},
             [{"kind": "box_slipped", "t": 3.0, "visible": True}, {"kind": "friction_dropped", "t": 2.0,
                                                                   "visible": False}])
    asked = generate(m, "train", rng, ["when"])
    assert len(asked) == 1 and "slip" in asked[0].text and asked[0].targets["keyframe_bin"] == 6
    assert all(asked[0].targets[k] == IGNORE for k in FIELDS)
    assert generate(meta("lift", m["goal"]["fields"], m["shown"]), "train", rng, ["when"]) == []
    assert keyframe_bin(DURATION, DURATION) == 15 and keyframe_bin(0.0, DURATION) == 0
    with pytest.raises(ValueError, match="outside the episode"):
        keyframe_bin(9.0, DURATION)


def test_paraphrase_variety():
    m = meta("wipe", {"region": "left", "force": "firm"}, {"region": "left"})
    for split in SPLITS:
        for kind, least in (("explicit", 30), ("repeat", 8), ("modified", 20), ("complement", 6)):
            texts = {i.text for s in range(300) for i in generate(m, split, np.random.default_rng(s), [kind])}
            assert len(texts) >= least, (split, kind, len(texts))


def test_heldout_wording_never_seen_in_training():
    m = all_metas()[5]
    def cores(split: str) -> set[str]:
        return {i.template for s in range(200) for i in generate(m, split, np.random.default_rng(s))}
    assert cores("train") and cores("heldout") and not cores("train") & cores("heldout")


def test_generation_is_deterministic():
    metas = all_metas()[::7]
    for m in metas:
        a = make_samples(m, "train", np.random.default_rng(3))
        b = make_samples(m, "train", np.random.default_rng(3))
        assert a == b
        assert all(isinstance(t, str) and set(y) == set(TARGET_KEYS) for t, y in a)
    draws = {tuple(t for t, _ in make_samples(metas[0], "train", np.random.default_rng(s))) for s in range(10)}
    assert len(draws) > 1


def test_bad_split_or_kind():
    with pytest.raises(ValueError, match="split='test'"):
        templates("test")
    with pytest.raises(ValueError, match="kind='why'"):
        templates("train", "why")
