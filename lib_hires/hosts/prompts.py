"""Patch prompts (per-window prompts) in A1111 and Forge: the tokens of a prompt, and the conditioning of a
subset of them (`Host.prompt_tokens`, `Host.patch_prompt`).

Both WebUIs encode prompts with the same "classic" text engine (A1111: the hijacked CLIP/OpenCLIP
embedders; Forge: `ClassicTextProcessingEngine`): a prompt is split into chunks of 75 tokens
(`tokenize_line`, which also parses emphasis), each chunk framed by start/end tokens to 77 and encoded
separately (`process_tokens`, which applies the emphasis), the chunks' outputs concatenated. SDXL has
two engines (CLIP-L, OpenCLIP-G) whose contexts are concatenated along the channels, the pooled
embedding taken from the last one's first chunk.

* A token's position is `77 * chunk + index in the chunk`, the position of its column in the
  cross-attention context (and in the recorded attention maps).
* Token subset (ours): each chunk keeps its chosen tokens, in order, with their emphasis multipliers,
  and is padded back to 77, so the context keeps the prompt's chunk count. Textual-inversion embeddings
  stay in every window (their vectors are not words of the prompt).
* Decoded words (the official code): the chosen tokens are decoded one by one, joined with spaces and
  the text encoded again (sub-words split: "corgi" -> "cor gi"); the chunk count is made the prompt's
  (truncated, or padded with empty chunks).
* The prompt is the one in effect at the pass's last step (prompt editing); a prompt with AND has no
  single token sequence and gets no patch prompts (the caller warns).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from ..ops.conditioning import PromptCond

CHUNK = 77


def text_engines(sd_model: Any) -> list[Any]:
    """The model's text engines, in the order their contexts are concatenated."""
    forge = [getattr(sd_model, name, None) for name in ("text_processing_engine_l", "text_processing_engine_g",
                                                          "text_processing_engine")]
    if any(engine is not None for engine in forge):
        return [engine for engine in forge if engine is not None]
    conditioner = getattr(sd_model, "conditioner", None)
    if conditioner is not None:
        return [e for e in conditioner.embedders if hasattr(e, "tokenize_line")]
    return [sd_model.cond_stage_model]


def final_prompt(text: str, steps: int) -> str | None:
    """The prompt in effect at the last step (prompt editing resolved); None for a prompt with AND."""
    from modules import prompt_parser

    _, flat, _ = prompt_parser.get_multicond_prompt_list([text])
    if len(flat) != 1:
        return None
    schedule = prompt_parser.get_learned_conditioning_prompt_schedules(flat, steps)[0]
    return schedule[-1][1]


def _decode(engine: Any, token: int) -> str:
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "decode"):
        return str(tokenizer.decode([token])).strip()
    import open_clip.tokenizer  # A1111's OpenCLIP engines use the module's tokenizer

    return str(open_clip.tokenizer._tokenizer.decode([token])).strip()


def _embedding_slots(chunk: Any) -> set[int]:
    """Indices (in the 77-token chunk) that hold textual-inversion vectors."""
    return {fix.offset + 1 + i for fix in chunk.fixes for i in range(int(fix.embedding.vectors))}


def _words(engine: Any, chunk: Any) -> list[int]:
    special = {engine.id_start, engine.id_end, getattr(engine, "id_pad", engine.id_end)}
    slots = _embedding_slots(chunk)
    return [i for i in range(1, len(chunk.tokens) - 1) if chunk.tokens[i] not in special and i not in slots]


def prompt_tokens(sd_model: Any, text: str) -> list[tuple[int, str]]:
    """(context position, text) of every token of `text` (start/end/padding and embeddings left out)."""
    engine = text_engines(sd_model)[0]
    chunks, _ = engine.tokenize_line(text)
    return [(CHUNK * c + i, _decode(engine, chunk.tokens[i])) for c, chunk in enumerate(chunks)
            for i in _words(engine, chunk)]


def _subset(engine: Any, chunks: Sequence[Any], keep: set[int]) -> list[tuple[list[int], list[float], list[Any]]]:
    """Each chunk with only its tokens at `keep` (and its embedding slots), padded back to 77."""
    out = []
    for c, chunk in enumerate(chunks):
        slots = _embedding_slots(chunk)
        kept = [i for i in range(1, len(chunk.tokens) - 1) if CHUNK * c + i in keep or i in slots]
        pad = CHUNK - 2 - len(kept)
        tokens = [engine.id_start, *(chunk.tokens[i] for i in kept), *[engine.id_end] * pad, engine.id_end]
        multipliers = [1.0, *(chunk.multipliers[i] for i in kept), *[1.0] * pad, 1.0]
        fixes = [type(fix)(kept.index(fix.offset + 1), fix.embedding) for fix in chunk.fixes]
        out.append((tokens, multipliers, fixes))
    return out


def _set_fixes(engine: Any, fixes: list[Any]) -> None:
    holder = getattr(engine, "hijack", None) or getattr(engine, "embeddings", None)
    if holder is not None:
        holder.fixes = [fixes]


@torch.no_grad()
def patch_prompt(sd_model: Any, text: str, positions: Sequence[int], mode: str) -> PromptCond:
    """The conditioning of `text` with only the tokens at `positions` (see the module docstring)."""
    clip = getattr(getattr(sd_model, "forge_objects", None), "clip", None)
    if clip is not None:  # Forge: the text encoders may have been moved off the device
        from backend import memory_management

        memory_management.load_model_gpu(clip.patcher)
    keep = set(positions)
    contexts, pooled = [], None
    for engine in text_engines(sd_model):
        chunks, _ = engine.tokenize_line(text)
        if mode == "decode":
            first = text_engines(sd_model)[0]
            words = [_decode(first, chunk.tokens[i]) for c, chunk in enumerate(chunks)
                     for i in _words(first, chunk) if CHUNK * c + i in keep]
            count = len(chunks)
            chunks, _ = engine.tokenize_line(re.sub(r"([()\[\]:\\])", r"\\\1", " ".join(words)))
            chunks = (list(chunks) + [engine.empty_chunk() for _ in range(count)])[:count]
            parts = [(chunk.tokens, chunk.multipliers, chunk.fixes) for chunk in chunks]
        else:
            parts = _subset(engine, chunks, keep)
        zs = []
        for tokens, multipliers, fixes in parts:
            _set_fixes(engine, fixes)
            zs.append(engine.process_tokens([tokens], [multipliers]))
        contexts.append(torch.cat(zs, dim=1))
        pooled = getattr(zs[0], "pooled", None) if getattr(zs[0], "pooled", None) is not None else pooled
    return PromptCond(torch.cat(contexts, dim=2), pooled)
