"""Random-weight LDM models for tests and benchmarks.

The classes are the real LDM ones (`ldm.modules.diffusionmodules.openaimodel.UNetModel`,
`ldm.modules.diffusionmodules.model.Decoder/Encoder`, from the PyPI package
`stable-diffusion-sdkit`), built at tiny channel widths for tests or at SD widths for benchmarks.

LDM zero-initialises the last layer of every residual branch and the UNet's output conv. Left at
zero, the UNet would output exactly 0 and no UNet patch could ever show, so every all-zero weight is
re-initialised. GroupNorm affine parameters are randomised too, so code that applies them (the
tiled VAE) is tested with values other than 1 and 0.
"""
from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass

import torch
from torch import nn

from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.diffusionmodules.openaimodel import UNetModel


@dataclass(frozen=True)
class UNetLayout:
    """Hyper-parameters of one UNet block layout (the LDM constructor arguments that differ)."""

    channel_mult: tuple[int, ...]
    attention_resolutions: tuple[int, ...]
    linear_transformer: bool
    num_heads: int = -1
    num_head_channels: int = -1
    vector_dim: int | None = None  # SDXL's vector conditioning `y` (pooled text + size/crop embeddings)


# SD1.x: 4 levels, attention at ds 1/2/4, conv proj_in, fixed head count.
SD1 = UNetLayout(channel_mult=(1, 2, 4, 4), attention_resolutions=(4, 2, 1), linear_transformer=False,
                 num_heads=8)
# SD2.x: as SD1 with linear proj_in and fixed head width.
SD2 = UNetLayout(channel_mult=(1, 2, 4, 4), attention_resolutions=(4, 2, 1), linear_transformer=True,
                 num_head_channels=8)
# SDXL: 3 levels, attention only at levels 1 and 2 (ds 2 and 4), downsamplers after levels 0 and 1.
# The SD2-era LDM UNet has no vector conditioning: SDXL's `label_emb` (linear, SiLU, linear over the 2816-d
# vector, added to the time embedding) is attached after construction.
SDXL = UNetLayout(channel_mult=(1, 2, 4), attention_resolutions=(2, 4), linear_transformer=True,
                  num_head_channels=8, vector_dim=2816)

LAYOUTS = {"sd1": SD1, "sd2": SD2, "sdxl": SDXL}


def build_unet(layout: UNetLayout, *, model_channels: int = 32, context_dim: int = 32,
               seed: int = 0) -> UNetModel:
    """A real LDM `UNetModel` in `layout` with random weights (eval mode, fp32).

    `model_channels` must be a multiple of 32 (LDM's GroupNorm has 32 groups). SD1.5's real width is
    320 with `context_dim` 768.
    """
    torch.manual_seed(seed)
    unet = UNetModel(
        image_size=32, in_channels=4, out_channels=4, model_channels=model_channels, num_res_blocks=2,
        attention_resolutions=list(layout.attention_resolutions), channel_mult=list(layout.channel_mult),
        num_heads=layout.num_heads, num_head_channels=layout.num_head_channels,
        use_spatial_transformer=True, transformer_depth=1, context_dim=context_dim, legacy=False,
        use_linear_in_transformer=layout.linear_transformer,
    )
    if layout.vector_dim is not None:
        width = model_channels * 4  # LDM's time embedding width
        unet.num_classes = "sequential"  # LDM's forward then requires `y` and adds label_emb(y)
        unet.label_emb = nn.Sequential(nn.Linear(layout.vector_dim, width), nn.SiLU(), nn.Linear(width, width))
    randomize_zero_and_norm_weights(unet, seed)
    return unet.eval().requires_grad_(False)


def build_vae(*, ch: int = 32, ch_mult: tuple[int, ...] = (1, 2, 2, 4), num_res_blocks: int = 2,
              seed: int = 0) -> tuple[Decoder, Encoder]:
    """A real LDM `Decoder` and `Encoder` pair (z 4 channels, x8 spatial factor, fp32, eval mode).

    SD's VAE is `ch=128, ch_mult=(1, 2, 4, 4)`; the default here is a tiny width for tests. The
    decoder has the mid-block attention; the encoder outputs mean and log-variance (8 channels).
    """
    torch.manual_seed(seed)
    kwargs = dict(ch=ch, out_ch=3, ch_mult=ch_mult, num_res_blocks=num_res_blocks, attn_resolutions=[],
                  in_channels=3, resolution=256, z_channels=4)
    with contextlib.redirect_stdout(io.StringIO()):  # LDM prints the z shape on construction
        decoder = Decoder(**kwargs)
        encoder = Encoder(double_z=True, **kwargs)
    for module, offset in ((decoder, 1), (encoder, 2)):
        randomize_zero_and_norm_weights(module, seed + offset)
        module.eval().requires_grad_(False)
    return decoder, encoder


def randomize_zero_and_norm_weights(model: nn.Module, seed: int) -> None:
    """Re-initialise all-zero weights and biases of convs/linears; randomise GroupNorm affines."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.GroupNorm) and module.affine:
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                if not module.weight.any():
                    fan_in = module.weight[0].numel()
                    std = 1 / math.sqrt(fan_in)
                    module.weight.copy_(std * torch.randn(module.weight.shape, generator=gen))
                if module.bias is not None and not module.bias.any():
                    module.bias.copy_(0.02 * torch.randn(module.bias.shape, generator=gen))
