"""The instruction tokenizer: a small WordPiece model trained on the instructions themselves.

Operator instructions use a few hundred words, so a vocabulary of ~1000 pieces trained on them covers everything
(anything unseen becomes ``[UNK]`` rather than an error). Built on HuggingFace ``tokenizers`` so the whole pipeline
(lowercasing, whitespace + punctuation split, WordPiece, the ``[CLS]`` readout appended at the end) is one JSON file,
``tokenizer.json``, saved next to the model.

    tok = InstructionTokenizer.train(instructions, vocab_size=1000)
    ids, mask = tok.encode_batch(["wipe the left side gently"], max_len=32)  # (B, L) long, (B, L) bool

Each encoding ends with ``[CLS]``: the grounding model reads its answer from the hidden state there, after the causal
attention has seen the video and every word. Padding (``[PAD]``, id 0) goes on the right.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP)  # in this order: [PAD] is id 0


class InstructionTokenizer:
    """Instruction text <-> token ids; ``encode_batch`` gives right-padded (B, L) ids ending in ``[CLS]``."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer lacks the special tokens {missing}; an instruction tokenizer needs "
                             f"{list(SPECIAL_TOKENS)} (train one with InstructionTokenizer.train)")
        self.tokenizer = tokenizer
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = (tokenizer.token_to_id(t) for t in SPECIAL_TOKENS)
        if tokenizer.encode("a").ids[-1:] != [self.cls_id]:
            raise ValueError(f"tokenizer does not end its encodings with {CLS}, the model's readout token")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 1000, min_frequency: int = 1) -> InstructionTokenizer:
        """A WordPiece vocabulary of at most ``vocab_size`` pieces (fewer if the corpus runs out of merges)."""
        if vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
        tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
        tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # words and runs of punctuation
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=list(SPECIAL_TOKENS), show_progress=False)
        tokenizer.train_from_iterator(texts, trainer=trainer)
        if tokenizer.get_vocab_size() == len(SPECIAL_TOKENS):
            raise ValueError("cannot train an instruction tokenizer on an empty corpus")
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A {CLS}", special_tokens=[(CLS, tokenizer.token_to_id(CLS))]
        )
        return cls(tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode_batch(self, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """B texts -> ids (B, L) long and mask (B, L) bool (True on real tokens), L = the longest, <= max_len.

        A text that is empty or longer than ``max_len`` tokens (``[CLS]`` included) is an error: truncating would
        drop the words that say what to do.
        """
        if isinstance(texts, str):
            raise TypeError(f"encode_batch takes a sequence of texts, got one string {texts!r}; wrap it in a list")
        if not texts:
            raise ValueError("encode_batch needs at least one text, got none")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"instruction {i} is empty ({text!r}); every instruction needs at least one word")
        encodings = self.tokenizer.encode_batch(list(texts))
        lengths = [len(e.ids) for e in encodings]
        for i, n in enumerate(lengths):
            if n > max_len:
                raise ValueError(f"instruction {i} ({texts[i]!r}) is {n} tokens with [CLS], more than "
                                 f"max_len={max_len}")
        ids = torch.full((len(texts), max(lengths)), self.pad_id, dtype=torch.long)
        for i, e in enumerate(encodings):
            ids[i, : len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
        mask = torch.arange(ids.shape[1])[None, :] < torch.tensor(lengths)[:, None]
        return ids, mask

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Token ids -> normalised text, special tokens and padding dropped."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the library's JSON (``tokenizer.json``): temporary file, then rename, never a half-written one."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.tokenizer.to_str())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> InstructionTokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path} (expected a tokenizer.json written by "
                                    "InstructionTokenizer.save)")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # the library raises plain Exceptions on bad JSON
            raise ValueError(f"{path}: not a tokenizers JSON file ({e})") from e
        return cls(tokenizer)
