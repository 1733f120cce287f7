"""A tiny random-weight text encoder whose tokens are words.

It stands in for CLIP in the test host: a prompt is split into lower-case words, each word is one
token (its id a stable hash of the word), framed by BOS/EOS and padded to 77 positions, embedded and
passed through one transformer layer. `encode(prompt, words)` keeps only the listed word positions,
which is what AccDiffusion's patch prompts need from a host.
"""
from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import torch
from torch import nn

PAD, BOS, EOS = 0, 1, 2
LENGTH = 77


def words(prompt: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", prompt.lower())


class WordEncoder(nn.Module):
    def __init__(self, dim: int = 32, vocab: int = 4096, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.vocab = vocab
        self.token = nn.Embedding(vocab, dim)
        self.position = nn.Embedding(LENGTH, dim)
        self.layer = nn.TransformerEncoderLayer(dim, nhead=2, dim_feedforward=2 * dim, dropout=0.0,
                                                batch_first=True)
        self.eval().requires_grad_(False)

    def token_id(self, word: str) -> int:
        return 3 + zlib.crc32(word.encode()) % (self.vocab - 3)

    def tokens(self, prompt: str, keep: Sequence[int] | None = None) -> list[int]:
        ws = words(prompt)
        if keep is not None:
            ws = [ws[i] for i in keep]
        ids = [BOS] + [self.token_id(w) for w in ws][: LENGTH - 2] + [EOS]
        return ids + [PAD] * (LENGTH - len(ids))

    @torch.no_grad()
    def encode(self, prompt: str, keep: Sequence[int] | None = None) -> torch.Tensor:
        """(1, 77, dim) context for `prompt`, or for only its words at positions `keep`."""
        ids = torch.tensor([self.tokens(prompt, keep)])
        return self.layer(self.token(ids) + self.position.weight[None])
