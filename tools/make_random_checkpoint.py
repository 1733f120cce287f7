"""Write a random-weight Stable Diffusion 1.5 checkpoint in the LDM layout (fp16 safetensors).

The file has the key names that AUTOMATIC1111 and Forge load for an SD1.5 model:

* ``model.diffusion_model.*``: the LDM ``UNetModel`` with SD1.5's hyper-parameters (320 channels,
  ``channel_mult`` 1/2/4/4, attention at ds 4/2/1, 8 heads, conv ``proj_in``, context 768);
* ``first_stage_model.{encoder,decoder,quant_conv,post_quant_conv}.*``: the LDM ``Encoder`` /
  ``Decoder`` of the KL-f8 VAE (128 channels, ``ch_mult`` 1/2/4/4, z 4 channels) and its two 1x1
  convs, named as in ``ldm.models.autoencoder.AutoencoderKL``;
* ``cond_stage_model.transformer.text_model.*``: a CLIP ViT-L/14 text model (768 hidden, 12 layers,
  12 heads, 3072 MLP, 77 positions, vocab 49408, quick_gelu), including ``embeddings.position_ids``;
* the DDPM schedule buffers that ``LatentDiffusion`` registers (``betas``, ``alphas_cumprod``, ...;
  linear schedule 0.00085..0.012 over 1000 steps), from which the hosts derive their sigmas.

The UNet and VAE are built from the LDM classes of the PyPI package ``stable-diffusion-sdkit``; the
hyper-parameters are written here (no host yaml is read). The text model is ``transformers``'
``CLIPTextModel`` built from a ``CLIPTextConfig`` made in code. LDM zero-initialises the last conv of
every residual branch, the ``proj_out`` of every transformer and the UNet's output conv (39 layers in
SD1.5); left at zero the UNet would output exactly 0 and no UNet patch could ever show, so every
all-zero conv/linear weight is re-initialised (normal, std 1/sqrt(fan_in)) together with its all-zero
bias (normal, std 0.02). The script fails if any conv/linear weight is still all zero.

Network weights are stored in fp16; the DDPM schedule buffers are stored in fp32 (as LDM computes
them: casting them to fp16 would shift the hosts' sigmas for no gain); ``position_ids`` stays int64.
The output is written to a temporary name next to ``--out`` and renamed at the end, so a reader
never sees a partial file. Same ``--seed`` and same torch/transformers versions -> byte-identical file;
the script prints the first 10 hex digits of its sha256 (what A1111 shows as "Model hash").

This is a developer tool (not run in CI). It needs, in a Python 3.11 venv::

    pip install torch==2.13.0+cpu        # or any CPU torch build; never a bare `pip install torch`
    pip install transformers==4.30.2 safetensors omegaconf einops numpy pillow
    pip install --no-deps stable-diffusion-sdkit==2.1.5

Run::

    python tools/make_random_checkpoint.py --out ~/hosts/models/sd15-random.safetensors --seed 0

It takes about 90 s and ~5 GiB of memory on a 2-core CPU; the file is about 2.1 GB (1143 tensors).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

# SD1.5 hyper-parameters (those of LDM's v1-inference config).
UNET_KWARGS: dict[str, object] = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=2,
    attention_resolutions=[4, 2, 1], channel_mult=[1, 2, 4, 4], num_heads=8,
    use_spatial_transformer=True, transformer_depth=1, context_dim=768, use_checkpoint=False,
    legacy=False, use_linear_in_transformer=False,
)
Z_CHANNELS = 4
MAX_POSITIONS = 77
VAE_DDCONFIG: dict[str, object] = dict(
    double_z=True, z_channels=Z_CHANNELS, resolution=256, in_channels=3, out_ch=3, ch=128,
    ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0,
)
VAE_EMBED_DIM = 4
CLIP_TEXT_KWARGS: dict[str, object] = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, projection_dim=768, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=MAX_POSITIONS, hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    attention_dropout=0.0, initializer_range=0.02, initializer_factor=1.0,
    pad_token_id=1, bos_token_id=0, eos_token_id=2,
)
TIMESTEPS, LINEAR_START, LINEAR_END = 1000, 0.00085, 0.0120  # LDM's "linear" beta schedule


def reinit_zero_layers(model: nn.Module, gen: torch.Generator) -> int:
    """Re-initialise every conv/linear whose weight is all zero; return how many there were."""
    count = 0
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.dim() < 2 or weight.any():
                continue
            fan_in = weight[0].numel()
            weight.copy_(torch.randn(weight.shape, generator=gen) / math.sqrt(fan_in))
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor) and not bias.any():
                bias.copy_(0.02 * torch.randn(bias.shape, generator=gen))
            count += 1
    return count


def build_unet(seed: int) -> tuple[nn.Module, int]:
    """The LDM SD1.5 UNet with random weights and its re-initialised zero layers."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(seed)
    unet = UNetModel(**UNET_KWARGS)
    return unet, reinit_zero_layers(unet, torch.Generator().manual_seed(seed + 1))


class FirstStage(nn.Module):
    """The parameter layout of LDM's ``AutoencoderKL`` (without its Lightning/loss machinery)."""

    def __init__(self) -> None:
        super().__init__()
        from ldm.modules.diffusionmodules.model import Decoder, Encoder

        with contextlib.redirect_stdout(io.StringIO()):  # LDM prints the z shape on construction
            self.encoder = Encoder(**VAE_DDCONFIG)
            self.decoder = Decoder(**VAE_DDCONFIG)
        self.quant_conv = nn.Conv2d(2 * Z_CHANNELS, 2 * VAE_EMBED_DIM, 1)
        self.post_quant_conv = nn.Conv2d(VAE_EMBED_DIM, Z_CHANNELS, 1)


def build_vae(seed: int) -> tuple[nn.Module, int]:
    """The SD KL-f8 VAE with random weights."""
    torch.manual_seed(seed + 2)
    vae = FirstStage()
    return vae, reinit_zero_layers(vae, torch.Generator().manual_seed(seed + 3))


def build_text_model(seed: int) -> tuple[nn.Module, int]:
    """A CLIP ViT-L/14 text model (transformers ``CLIPTextModel``) with random weights.

    Its LayerNorms get random affines (weight 1 + 0.1 N, bias 0.1 N): with the default weight 1 and
    bias 0 the final LayerNorm's output has mean exactly 0, and the WebUIs' default emphasis mode
    ("Original") divides by that mean, turning every prompt into NaN (black images in Forge).
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed + 4)
    model = CLIPTextModel(CLIPTextConfig(**CLIP_TEXT_KWARGS))
    gen = torch.Generator().manual_seed(seed + 5)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
    return model, reinit_zero_layers(model, gen)


def schedule_buffers() -> dict[str, torch.Tensor]:
    """The buffers ``ldm.models.diffusion.ddpm.DDPM.register_schedule`` stores (fp32, eps model)."""
    betas = np.linspace(LINEAR_START ** 0.5, LINEAR_END ** 0.5, TIMESTEPS, dtype=np.float64) ** 2
    alphas = 1.0 - betas
    ac = np.cumprod(alphas, axis=0)
    ac_prev = np.append(1.0, ac[:-1])
    posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
    values = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    }
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in values.items()}


def build_state_dict(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The whole checkpoint as a flat LDM state dict, and the number of re-initialised layers per part."""
    state: dict[str, torch.Tensor] = {}
    reinit: dict[str, int] = {}

    def add(prefix: str, tensors: dict[str, torch.Tensor]) -> None:
        for key, value in tensors.items():
            value = value.detach().contiguous()
            state[prefix + key] = value.to(torch.float16) if value.is_floating_point() else value

    for name, prefix, builder in (
        ("unet", "model.diffusion_model.", build_unet),
        ("vae", "first_stage_model.", build_vae),
        ("clip", "cond_stage_model.transformer.", build_text_model),
    ):
        model, count = builder(seed)
        reinit[name] = count
        add(prefix, model.state_dict())
        del model

    pos_key = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    if pos_key not in state:  # transformers >= 4.31 no longer saves this buffer; LDM checkpoints have it
        state[pos_key] = torch.arange(MAX_POSITIONS, dtype=torch.int64).unsqueeze(0)
    state.update(schedule_buffers())
    return state, reinit


def check_state_dict(state: dict[str, torch.Tensor]) -> None:
    """Fail on any all-zero conv/linear weight or non-finite value."""
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"non-finite values in {key}")
        if key.endswith(".weight") and value.dim() >= 2 and not value.any():
            raise ValueError(f"all-zero weight left in {key}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output .safetensors path")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    args = parser.parse_args(argv)

    from safetensors.torch import save_file

    start = time.monotonic()
    state, reinit = build_state_dict(args.seed)
    check_state_dict(state)
    out: Path = args.out.expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    # One metadata key only: safetensors writes several keys in a random order, which would make the
    # file's bytes (and so the hosts' "Model hash") differ between runs with the same seed.
    metadata = {"hires_methods_random_checkpoint": json.dumps({
        "generator": "tools/make_random_checkpoint.py",
        "architecture": "stable-diffusion-v1 (random weights)",
        "seed": args.seed,
        "reinitialised_zero_layers": reinit,
    }, sort_keys=True)}
    try:
        save_file(state, str(tmp), metadata=metadata)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    n_params = sum(v.numel() for v in state.values())
    digest = hashlib.sha256()
    with open(out, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    print(f"wrote {out} ({out.stat().st_size / 2**30:.2f} GiB, {len(state)} tensors, "
          f"{n_params / 1e6:.0f}M values, re-initialised zero layers: {reinit}, "
          f"sha256 {digest.hexdigest()[:10]}) in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
