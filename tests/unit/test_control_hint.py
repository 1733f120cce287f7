"""A ControlNet hint through every geometry a method evaluates the UNet on (ops.control_hint and the hooks).

The probe: a latent whose pixels carry their own coordinates (channel 0 the row + 1, channel 1 the
column + 1, channel 2 one inside the image) and a hint whose 8x8 blocks carry the same numbers. At the
end of the hook chain, where a host runs its ControlNet, every row's hint (through the call's
`pixels`) must have, block for block, the numbers its latent input has: each tile, window, padded
margin, sub-lattice and permuted composite gets the hint of its own pixels, whatever the method did.
"""
from __future__ import annotations

import random

import pytest
import torch

from lib_hires.methods.demofusion import Fusion
from lib_hires.ops import control_hint
from lib_hires.ops.windows import Window, fstd_offsets, offset_grid, overlap_grid
from lib_hires.sampling.hooks import ModelCall, Rows
from lib_hires.sampling.local_global import GlobalBranch, LocalGlobal
from lib_hires.sampling.steps import Step
from lib_hires.sampling.tiled import TiledEvaluation

ROWS = Rows((0, 1, 0, 1), (False, False, True, True))


def probe_latent(height: int, width: int, rows: int = 4) -> torch.Tensor:
    x = torch.zeros(rows, 4, height, width)
    x[:, 0] = torch.arange(1, height + 1, dtype=torch.float32)[:, None]
    x[:, 1] = torch.arange(1, width + 1, dtype=torch.float32)[None, :]
    x[:, 2] = 1
    return x


def probe_hint(x: torch.Tensor) -> torch.Tensor:
    return x[:, :3].repeat_interleave(8, dim=-2).repeat_interleave(8, dim=-1)


class Probe:
    """A model call that checks its rows' hints against their inputs and returns its input."""

    def __init__(self, hint: torch.Tensor) -> None:
        self.hint = hint
        self.calls = 0

    def __call__(self, call: ModelCall) -> torch.Tensor:
        seen = call.pixel_map()(self.hint)
        assert seen.shape[0] == call.x.shape[0] and tuple(seen.shape[-2:]) == (8 * call.x.shape[-2], 8 * call.x.shape[-1])
        assert torch.equal(seen, seen[..., ::8, ::8].repeat_interleave(8, dim=-2).repeat_interleave(8, dim=-1))
        assert torch.allclose(seen[..., ::8, ::8], call.x[:, :3], atol=1e-3), "a row got another pixel's hint"
        self.calls += 1
        return call.x


def call_of(x: torch.Tensor, controlled: bool = True) -> ModelCall:
    return ModelCall(x, torch.ones(x.shape[0]), None, ROWS, Step(1, 4), lambda c, idx: c, controlled=controlled)


def test_the_pass_call_and_row_subsets_get_their_rows_hints() -> None:
    x = probe_latent(12, 16)
    x[1, :2] += 100  # rows differ
    probe = Probe(probe_hint(x))
    probe(call_of(x))
    probe(call_of(x).subset([3, 1, 1]))
    assert probe.calls == 2


@pytest.mark.parametrize("kind", ["overlap", "fstd"])
def test_every_tile_gets_the_hint_of_its_own_pixels(kind: str) -> None:
    x = probe_latent(40, 56)
    offsets = fstd_offsets(3, 4, 16, 2)

    def windows(step: Step, latent: tuple[int, int]) -> list[Window]:
        if kind == "overlap":
            return overlap_grid(*latent, 32, 16)
        return offset_grid(*latent, 32, offsets[step.index])

    probe = Probe(probe_hint(x))
    out = TiledEvaluation(windows, "gaussian" if kind == "fstd" else "uniform", tile_batch=3)(call_of(x), probe)
    assert probe.calls >= 2
    covered = out != 0
    assert torch.allclose(out[covered], x[covered])


@pytest.mark.parametrize("interaction", ["off", "position", "element"])
def test_every_window_and_sub_lattice_gets_the_hint_of_its_own_pixels(interaction: str) -> None:
    """DemoFusion's jittered windows on the padded latent and the sub-lattices (with top/left padding to a
    multiple, and AccDiffusion's permutations between the lattices of a batch); blur ~0 so the latent
    input keeps its coordinates."""
    x = probe_latent(30, 45)
    fusion = Fusion(window=16, stride=8, view_batch=4, local="overlap", residual_decay=3.0, global_decay=1.0,
                    blur_decay=1.0, sigma=1e-6, multiple=2, seed=2)
    pad = fusion.jitter
    local = TiledEvaluation(lambda step, padded: fusion.windows(padded[0] - 2 * pad, padded[1] - 2 * pad,
                                                                random.Random(0)), "uniform", 3)
    warnings: list[str] = []
    hook = LocalGlobal(local, pad, GlobalBranch(3, 1e-6, 1.0, 4, 2, interaction, seed=5), 1.0,
                       lambda sigma: torch.full_like(sigma, 600.0), stage=1, warn=warnings.append)
    probe = Probe(probe_hint(x))
    hook(call_of(x), probe)
    assert hook.lattice_evaluations == 9 and probe.calls > 3
    assert len(warnings) == (1 if interaction == "element" else 0)
    if warnings:
        assert "per position" in warnings[0] and "ControlNet" in warnings[0]


def test_element_wise_interaction_stays_element_wise_without_a_controlnet() -> None:
    """Without a ControlNet the official element-wise permutations are kept; no hint can follow them, so
    asking for one is an error rather than the wrong pixels (a host with no ControlNet never asks)."""
    x = probe_latent(24, 24)
    hook = LocalGlobal(TiledEvaluation(lambda s, l: [Window(0, 0, *l)], "uniform", 1), 0,
                       GlobalBranch(2, 1e-6, 1.0, 4, 1, "element", seed=5), 1.0,
                       lambda sigma: torch.full_like(sigma, 600.0), stage=1)
    with pytest.raises(ValueError, match="positions, not one per channel"):
        hook(call_of(x, controlled=False), Probe(probe_hint(x)))


def blocks(values: torch.Tensor) -> torch.Tensor:
    return values.repeat_interleave(8, dim=-2).repeat_interleave(8, dim=-1)


def test_pixel_operations_on_blocks() -> None:
    latent = torch.randn(2, 3, 6, 9, generator=torch.Generator().manual_seed(0))
    hint = blocks(latent)
    window = Window(1, 2, 4, 5)
    assert torch.equal(control_hint.crop(hint, window), blocks(latent[..., 1:5, 2:7]))
    assert torch.equal(control_hint.pad(hint, 1, 2, 3, 0), blocks(torch.nn.functional.pad(latent, (3, 0, 1, 2))))
    assert torch.equal(control_hint.lattice(hint, 3, 2, 1), blocks(latent[..., 2::3, 1::3]))
    assert torch.equal(control_hint.blur(hint, 3, 0.0), hint)
    assert torch.equal(control_hint.resize(hint, 48, 72), hint)
    assert control_hint.resize(hint, 24, 36).shape == (2, 3, 24, 36)


def test_blur_is_the_latent_blur_in_hint_pixels() -> None:
    """A hint that is one value per block blurred in hint pixels, then read at the block centres, is
    close to the latent blurred with the latent kernel (the same Gaussian, 8 times finer)."""
    from lib_hires.ops.dilated_sampling import gaussian_blur

    latent = torch.zeros(1, 1, 15, 15)
    latent[..., 7, 7] = 1
    blurred = control_hint.blur(blocks(latent), 5, 1.2)
    centres = torch.nn.functional.avg_pool2d(blurred, 8)
    expected = gaussian_blur(latent, 5, 1.2)
    assert torch.allclose(centres, expected, atol=0.01)
    assert float(blurred.sum()) == pytest.approx(64.0, rel=1e-4)


def test_block_permutation_follows_position_wise_orders_only() -> None:
    views = blocks(torch.arange(3.0).reshape(3, 1, 1, 1, 1).expand(3, 2, 3, 4, 5).clone())
    order = torch.stack([torch.randperm(3, generator=torch.Generator().manual_seed(i)) for i in range(2 * 4 * 5)], -1)
    order = order.reshape(3, 2, 1, 4, 5).expand(3, 2, 4, 4, 5)
    moved = control_hint.permute_blocks(views, order)
    assert torch.equal(moved[..., ::8, ::8], order[:, :, :3].float())
    per_element = order.clone()
    per_element[0, 0, 1, 0, 0], per_element[1, 0, 1, 0, 0] = order[1, 0, 1, 0, 0], order[0, 0, 1, 0, 0]
    with pytest.raises(ValueError, match="positions"):
        control_hint.permute_blocks(views, per_element)




def test_patch_prompts_keep_the_controlnet_mark_token() -> None:
    """sd-webui-controlnet adds a first token to every context row (its cond/uncond mark); a patch
    prompt replaces the prompt's tokens after it and keeps the mark."""
    from lib_hires.ops.conditioning import PromptCond, with_prompts

    marked = torch.randn(2, 78, 8)
    prompt = torch.randn(1, 77, 8)
    out = with_prompts({"c_crossattn": [marked]}, {1: PromptCond(prompt)}, rows=2)["c_crossattn"][0]
    assert torch.equal(out[0], marked[0]) and torch.equal(out[1, 0], marked[1, 0]) and torch.equal(out[1, 1:], prompt[0])
    with pytest.raises(ValueError, match="does not match"):
        with_prompts(torch.randn(2, 79, 8), {0: PromptCond(prompt)}, rows=2)
