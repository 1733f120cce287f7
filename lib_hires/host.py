"""The host protocol: everything a method may ask of the WebUI (DESIGN.md rule 2).

A `Host` stands for one generation job in one WebUI (or the test host). Methods and the stage driver
use it instead of importing the WebUI, so the same code runs in A1111, Forge and the tests. It lives
below `sampling/` and `methods/`, which depend on it; the adapters in `hosts/` implement it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

from .ops.conditioning import PromptCond
from .sampling.hooks import PassHooks
from .unet import ModelFamily


class Host(Protocol):
    """One job's model, sampler, conditioning, VAE and progress, as the WebUI provides them."""

    @property
    def family(self) -> ModelFamily:
        """SD1.x, SD2.x or SDXL."""

    @property
    def native_size(self) -> int:
        """Training resolution in pixels (512 for SD1.x and SD2-base, 768 for SD2-v, 1024 for SDXL)."""

    @property
    def unet(self) -> nn.Module:
        """The LDM-layout diffusion model (`input_blocks`, `middle_block`, `output_blocks`)."""

    @property
    def batch_size(self) -> int:
        """Images per batch."""

    def sigmas(self, steps: int) -> torch.Tensor:
        """The user's sigma schedule for `steps` steps (decreasing, ending in 0)."""

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The model's training timestep (0 to 999, continuous) of each sigma."""

    def noise(self, shape: Sequence[int], stage: int) -> torch.Tensor:
        """Unit Gaussian noise seeded from the images' seeds; `stage` selects an independent draw."""

    def sample(self, x: torch.Tensor, sigmas: torch.Tensor, hooks: PassHooks, stage: int) -> torch.Tensor:
        """Run the user's sampler with the host's CFG and conditioning from `x` (already noised to
        `sigmas[0]`) through `sigmas`, with the method's hooks; returns the denoised latent."""

    def prompt_tokens(self, image: int) -> Sequence[tuple[int, str]]:
        """The tokens of image `image`'s prompt: each one's position in the cross-attention context and its
        text (start, end and padding tokens left out)."""

    def patch_prompt(self, image: int, positions: Sequence[int], mode: str) -> PromptCond:
        """Image `image`'s prompt with only the tokens at `positions` (from `prompt_tokens`; AccDiffusion):
        mode "tokens" keeps those tokens with their emphasis, "decode" re-encodes their decoded text (the
        official code). The context has the full prompt's length."""

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent -> image in [-1, 1] (NCHW)."""

    def encode(self, image: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Image in [-1, 1] (NCHW) -> latent: the posterior mean, or with `noise` (unit Gaussian, the
        latent's shape) the sample `mean + std * noise`."""

    def interrupted(self) -> bool:
        """Whether the user asked to stop."""

    def progress(self, done: int, total: int) -> None:
        """Report progress of work outside the sampler (e.g. VAE tiles)."""

    def begin_stages(self, steps: Sequence[int]) -> None:
        """A cascade is about to run stages of these many sampler steps: one progress bar over all."""
