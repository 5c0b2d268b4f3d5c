"""The character vocabulary of the tiny tasks: pad, eos, then one id per symbol; also as a transformers tokenizer."""

from __future__ import annotations

from typing import Iterable

import numpy as np

PAD, EOS = "<pad>", "<eos>"
SYMBOLS = "0123456789+-*="


class CharTokenizer:
    """Character tokenizer: ids 0 = pad, 1 = eos, then one per symbol (default: the 14 symbols ``0-9 + - * =``)."""

    def __init__(self, symbols: str = SYMBOLS) -> None:
        self.itos = [PAD, EOS, *symbols]
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.pad_id, self.eos_id = 0, 1
        self.vocab_size = len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi[c] for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        """Text up to the first eos; pads are dropped."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i != self.pad_id:
                out.append(self.itos[i])
        return "".join(out)

    def left_pad(self, prompts: list[str], width: int) -> np.ndarray:
        """Encode prompts left-padded to one fixed width, so a batch needs no attention mask."""
        arr = np.full((len(prompts), width), self.pad_id, dtype=np.int64)
        for r, p in enumerate(prompts):
            ids = self.encode(p)
            arr[r, width - len(ids):] = ids
        return arr

    def to_hf(self):
        """The same vocabulary as a ``transformers`` fast tokenizer (for exporting the trained model)."""
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.WordLevel(vocab=dict(self.stoi), unk_token=PAD))
        tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS)
