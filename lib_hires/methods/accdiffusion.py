"""AccDiffusion (Lin et al., ECCV 2024): DemoFusion with patch-content-aware prompts for the local windows
and window interaction in the global branch (methods/accdiffusion.md; docs/demofusion.md).

* The first phase records cross-attention maps (`AttentionStore`): the conditional rows of every
  cross-attention layer of the down and up blocks whose token grid is a quarter of the latent's (the
  middle block excluded), all heads, every model call, averaged (§2).
* Each token of the prompt gets a binary mask (`ops.patch_prompts.word_masks`, §3). In an upscaling
  phase the local windows are drawn once (their jitter fixed for the phase) and each window's prompt
  keeps the tokens whose mask covers at least `threshold` of it (§4); the conditioning of each distinct
  token subset is encoded once per phase by the host (`Host.patch_prompt`: the token subset of your
  prompt with its emphasis, or the official decode-and-re-encode). Only the local branch uses patch
  prompts; the first phase and the global branch use the whole prompt.
* The local branch's CFG scale can differ from the job's (`patch_cfg`).
* Window interaction permutes the sub-lattices' elements every step (`ops.dilated_sampling`, §5).

Prompts: a prompt longer than 75 tokens works (its tokens are positions in the whole multi-chunk
context; each chunk keeps its own tokens). An image whose prompt has several AND sub-prompts keeps its
whole conditioning in every window (its rows do not share token positions), with a warning. With
prompt editing, the hosts take the prompt in effect at the last step.
"""
from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..ops.conditioning import PromptCond, with_prompts
from ..ops.patch_prompts import patch_tokens, window_coverage, word_masks
from ..ops.windows import Window
from ..params import AccDiffusionParams, DemoFusionParams
from ..patching import PatchScope
from ..sampling.driver import StageInput
from ..sampling.hooks import CallNext, ModelCall, PassHooks, PassPlan, Rows, Warn
from ..sampling.local_global import step_seed
from ..sampling.steps import Step
from ..sampling.tiled import TiledEvaluation, cropped
from .base import JobContext
from .demofusion import DemoFusion, Fusion, Phase

LOG = logging.getLogger("hires_methods")
CAPTURED = re.compile(r"^(input_blocks|output_blocks)\.\d+\.1\.transformer_blocks\.\d+\.attn2$")
"""The cross-attention layers of the down and up blocks (LDM names); those whose token grid is a quarter
of the latent's are recorded."""


class AttentionStore:
    """Per image, the sum of its first conditional row's cross-attention probabilities (queries x context
    tokens) over the recorded layers, heads and calls, and how many were added."""

    def __init__(self) -> None:
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}
        self.grid: tuple[int, int] = (0, 0)
        self.rows: Rows | None = None
        self.calls = 0

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()
        self.calls = 0

    def maps(self, image: int) -> torch.Tensor | None:
        """The image's average map, (context tokens, h, w); None if nothing was recorded."""
        if image not in self.sums:
            return None
        total = self.sums[image] / self.counts[image]
        return total.transpose(0, 1).reshape(-1, *self.grid)

    def record(self, module: nn.Module, x: torch.Tensor, context: torch.Tensor) -> None:
        """Add one layer call's probabilities, if its queries are the recorded grid."""
        rows = self.rows
        if rows is None or context is None or x.shape[0] != len(rows.image) \
                or x.shape[1] != self.grid[0] * self.grid[1]:
            return
        first: dict[int, int] = {}
        for i, (image, uncond) in enumerate(zip(rows.image, rows.uncond)):
            if not uncond:
                first.setdefault(image, i)
        if not first:
            return
        index = torch.tensor(list(first.values()), device=x.device)
        heads = int(module.heads)
        q, k = module.to_q(x.index_select(0, index)), module.to_k(context.index_select(0, index))
        b, n, width = q.shape
        dim = width // heads
        q = q.float().reshape(b, n, heads, dim).transpose(1, 2)
        k = k.float().reshape(b, -1, heads, dim).transpose(1, 2)
        probs = (q @ k.transpose(-1, -2) * dim ** -0.5).softmax(dim=-1).sum(dim=1).cpu()  # (b, n, L)
        for row, image in enumerate(first):
            self.sums[image] = self.sums.get(image, 0) + probs[row]
            self.counts[image] = self.counts.get(image, 0) + heads


class CapturePlan:
    """The first phase of AccDiffusion: the unmodified model, recording cross-attention maps."""

    def __init__(self, store: AttentionStore) -> None:
        self.store = store

    def install(self, unet: nn.Module, scope: PatchScope, warn: Warn) -> PassHooks:
        store = self.store
        store.reset()
        for name, module in unet.named_modules():
            if CAPTURED.match(name) and hasattr(module, "to_q") and hasattr(module, "heads"):
                scope.wrap_forward(module, self._recorder(module))
        return PassHooks(call_hooks=(self._track,))

    def _recorder(self, module: nn.Module) -> Any:
        store = self.store

        def forward(original: Any, *args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            context = kwargs.get("context", args[1] if len(args) > 1 else None)
            with torch.no_grad():
                store.record(module, args[0], context)
            return out

        return forward

    def _track(self, call: ModelCall, call_next: CallNext) -> torch.Tensor:
        h, w = call.x.shape[-2:]
        self.store.rows, self.store.grid = call.rows, (-(-h // 4), -(-w // 4))
        self.store.calls += 1
        try:
            return call_next(call)
        finally:
            self.store.rows = None


class PatchPrompts:
    """The patch prompts of one phase: masks per image, fixed windows, conditioning per token subset."""

    def __init__(self, store: AttentionStore, stage: StageInput, threshold: float, mode: str, warn: Warn) -> None:
        self.host, self.threshold, self.mode, self.warn = stage.host, threshold, mode, warn
        self.tokens = {i: list(self.host.prompt_tokens(i)) for i in range(self.host.batch_size)}
        self.masks: dict[int, torch.Tensor] = {}
        for image, tokens in self.tokens.items():
            maps = store.maps(image)
            if maps is not None and tokens:
                positions = [p for p, _ in tokens if p < maps.shape[0]]
                self.masks[image] = word_masks(maps[positions])
        self.encoded: dict[tuple[int, tuple[int, ...]], PromptCond] = {}
        self.chosen: dict[tuple[int, Window], tuple[int, ...]] = {}
        self.several_warned = False

    def words(self, image: int, windows: Sequence[Window], latent: tuple[int, int], pad: int) -> list[tuple[int, ...]]:
        """Each window's token positions for `image` (cached per window); `image` must have masks."""
        missing = [w for w in windows if (image, w) not in self.chosen]
        if missing:
            coverage = window_coverage(self.masks[image], latent, pad, missing)
            tokens = self.tokens[image]
            for window, kept in zip(missing, patch_tokens(coverage, self.threshold)):
                self.chosen[(image, window)] = tuple(tokens[i][0] for i in kept)
        return [self.chosen[(image, w)] for w in windows]

    def prompt(self, image: int, positions: tuple[int, ...]) -> PromptCond:
        key = (image, positions)
        if key not in self.encoded:
            self.encoded[key] = self.host.patch_prompt(image, positions, self.mode)
        return self.encoded[key]

    def text(self, image: int, positions: tuple[int, ...]) -> str:
        texts = dict(self.tokens[image])
        return " ".join(texts[p] for p in positions)

    def report(self, phase: int, windows: Sequence[Window], latent: tuple[int, int], pad: int) -> None:
        """Log each token's mask share and each window's prompt (the WebUI console shows the log)."""
        for image, masks in self.masks.items():
            chosen = self.words(image, windows, latent, pad)
            LOG.info("AccDiffusion masks, image %d: %s", image + 1, ", ".join(
                f"{text} {float(mask.float().mean()):.0%}" for (_, text), mask in zip(self.tokens[image], masks)))
            LOG.info("AccDiffusion phase %d, image %d: %s", phase, image + 1, "; ".join(
                f"window at ({w.top - pad}, {w.left - pad}): {self.text(image, c) or '(empty)'!r}"
                for w, c in zip(windows, chosen)))

    def condition(self, pad: int) -> Any:
        """The local branch's `WindowCond`: crops and crop coordinates, then each window's patch prompt on
        the conditional rows of images with one conditional row."""
        def condition(cond: Any, windows: Sequence[Window], rows: Rows, padded: tuple[int, int]) -> Any:
            cond = cropped(cond, windows, rows, padded)
            latent = (padded[0] - 2 * pad, padded[1] - 2 * pad)
            per_image: dict[int, list[int]] = {}
            for i, (image, uncond) in enumerate(zip(rows.image, rows.uncond)):
                if not uncond:
                    per_image.setdefault(image, []).append(i)
            prompts: dict[int, PromptCond] = {}
            for image, cond_rows in per_image.items():
                if len(cond_rows) > 1:
                    if not self.several_warned:
                        self.warn("AccDiffusion: patch prompts not used for a prompt with AND (several "
                                  "sub-prompts); its windows get the whole prompt")
                        self.several_warned = True
                    continue
                if image not in self.masks:  # no tokens (an empty prompt) or no recorded maps
                    continue
                for k, positions in enumerate(self.words(image, windows, latent, pad)):
                    prompts[k * len(rows.image) + cond_rows[0]] = self.prompt(image, positions)
            return with_prompts(cond, prompts, len(rows.image) * len(windows))

        return condition


@dataclass(frozen=True)
class AccPhase(Phase):
    """An AccDiffusion upscaling phase: fixed windows with patch prompts (when on) in the local branch."""

    store: AttentionStore
    params: AccDiffusionParams

    def local_branch(self, stage: StageInput, warn: Warn) -> TiledEvaluation:
        params, fusion = self.params, self.fusion
        if not params.patch_prompts:
            return super().local_branch(stage, warn)
        patches = PatchPrompts(self.store, stage, params.threshold, params.prompt_mode, warn)
        pad = fusion.jitter
        fixed: list[Window] = []

        def windows(step: Step, padded: tuple[int, int]) -> Sequence[Window]:
            if not fixed:
                rng = random.Random(step_seed(fusion.seed, stage.index, -1))
                fixed.extend(fusion.windows(padded[0] - 2 * pad, padded[1] - 2 * pad, rng))
                patches.report(self.number, fixed, (padded[0] - 2 * pad, padded[1] - 2 * pad), pad)
            return fixed

        if fusion.local == "fstd":
            return TiledEvaluation(self.fstd_tiles(stage), "gaussian", fusion.view_batch, patches.condition(0))
        return TiledEvaluation(windows, "uniform", fusion.view_batch, patches.condition(pad))


class AccDiffusion(DemoFusion):
    """The AccDiffusion method (`methods.base.Method`)."""

    params: type[DemoFusionParams] = AccDiffusionParams

    def fusion(self, params: DemoFusionParams, job: JobContext) -> Fusion:
        assert isinstance(params, AccDiffusionParams)
        base = super().fusion(params, job)
        ratio = params.patch_cfg / job.cfg_scale if params.patch_cfg and job.cfg_scale else 1.0
        return Fusion(**{**base.__dict__, "interaction": params.interaction, "local_cfg_ratio": ratio})

    def parts(self, params: DemoFusionParams, fusion: Fusion) -> tuple[PassPlan | None, Callable[[int], Phase]]:
        assert isinstance(params, AccDiffusionParams)
        store = AttentionStore()  # one per job: filled by its first phase, read by its upscaling phases
        return (CapturePlan(store) if params.patch_prompts else None,
                lambda number: AccPhase(number, fusion, store, params))

    def extra_lines(self, params: DemoFusionParams) -> tuple[str, ...]:
        assert isinstance(params, AccDiffusionParams)
        parts = []
        if params.patch_prompts:
            text = "token subsets" if params.prompt_mode == "tokens" else "decoded words"
            parts.append(f"patch prompts from first-phase attention (threshold {params.threshold:g}, {text})")
        if params.patch_cfg:
            parts.append(f"patch CFG {params.patch_cfg:g}")
        if params.interaction != "off":
            parts.append(f"window interaction per {params.interaction}")
        return (", ".join(parts),) if parts else ()
