"""The instruction tokenizer: training, padding and [CLS], round trip, JSON save/load, unknown words, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from grounding.text import InstructionTokenizer

CORPUS = [
    "Wipe the left side of the table gently.",
    "wipe the right side firmly",
    "Peel the tape, then stop when it is halfway off",
    "peel it gently",
    "Lift the box high and hold it",
    "lift the cube to a low height with a gentle grip",
    "when the arm reaches the edge, wipe everything",
] * 3


@pytest.fixture(scope="module")
def tok() -> InstructionTokenizer:
    return InstructionTokenizer.train(CORPUS, vocab_size=300)


def test_special_tokens_and_vocabulary(tok: InstructionTokenizer) -> None:
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id) == (0, 1, 2, 3)
    assert 4 < tok.vocab_size <= 300


def test_encode_batch_right_pads_and_ends_each_text_with_cls(tok: InstructionTokenizer) -> None:
    ids, mask = tok.encode_batch(["wipe the table", "peel the tape then stop when it is halfway off"], max_len=32)
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape
    lengths = mask.sum(dim=1)
    assert ids.shape[1] == int(lengths.max()) and int(lengths[0]) < int(lengths[1])
    for row, n in zip(ids, lengths.tolist(), strict=True):
        assert int(row[n - 1]) == tok.cls_id  # the readout token closes every instruction
        assert (row[n:] == tok.pad_id).all()
        assert bool(mask[0, : int(lengths[0])].all()) and not bool(mask[0, int(lengths[0]) :].any())


def test_round_trip_lowercases(tok: InstructionTokenizer) -> None:
    ids, mask = tok.encode_batch(["Wipe the LEFT side gently"], max_len=16)
    assert tok.decode(ids[0][mask[0]]) == "wipe the left side gently"


def test_save_load_json_gives_equal_ids(tok: InstructionTokenizer, tmp_path: Path) -> None:
    path = tok.save(tmp_path / "tokenizer.json")
    assert json.loads(path.read_text())["model"]["type"] == "WordPiece"
    loaded = InstructionTokenizer.load(path)
    texts = ["lift the box high", "wipe the right side firmly, then stop"]
    for a, b in zip(tok.encode_batch(texts, 32), loaded.encode_batch(texts, 32), strict=True):
        assert torch.equal(a, b)
    assert loaded.vocab_size == tok.vocab_size


def test_unknown_words_become_unk(tok: InstructionTokenizer) -> None:
    ids, mask = tok.encode_batch(["wipe the 日本 квартира"], max_len=16)
    assert tok.unk_id in ids[0].tolist()
    assert int(ids[0, int(mask[0].sum()) - 1]) == tok.cls_id


def test_bad_inputs_are_named(tok: InstructionTokenizer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="instruction 1 is empty"):
        tok.encode_batch(["wipe", "   "], max_len=8)
    with pytest.raises(ValueError, match="instruction 0 is empty"):
        tok.encode_batch([""], max_len=8)
    with pytest.raises(ValueError, match="max_len=3"):
        tok.encode_batch(["wipe the left side gently"], max_len=3)
    with pytest.raises(TypeError, match="sequence of texts"):
        tok.encode_batch("wipe the table", max_len=8)
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        InstructionTokenizer.load(tmp_path / "nothere.json")
    with pytest.raises(ValueError, match="empty corpus"):
        InstructionTokenizer.train([], vocab_size=100)
