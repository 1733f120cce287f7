"""Write a random-weight Stable Diffusion 1.5 or SDXL base checkpoint in the LDM layout (fp16 safetensors).

The file has the key names that AUTOMATIC1111 and Forge load. Both families share:

* ``model.diffusion_model.*``: the LDM ``UNetModel``;
* ``first_stage_model.{encoder,decoder,quant_conv,post_quant_conv}.*``: the LDM ``Encoder`` /
  ``Decoder`` of the KL-f8 VAE (128 channels, ``ch_mult`` 1/2/4/4, z 4 channels) and its two 1x1
  convs, named as in ``ldm.models.autoencoder.AutoencoderKL`` (sgm's autoencoder uses the same names);
* a CLIP ViT-L/14 text model (768 hidden, 12 layers, 12 heads, 3072 MLP, 77 positions, vocab 49408,
  quick_gelu), including ``embeddings.position_ids``.

``--family sd15`` (the default) adds, as LDM's v1-inference config:

* the UNet with 320 channels, ``channel_mult`` 1/2/4/4, attention at ds 4/2/1, 8 heads, conv
  ``proj_in``, context 768; the CLIP model under ``cond_stage_model.transformer.``;
* the DDPM schedule buffers that ``LatentDiffusion`` registers (``betas``, ``alphas_cumprod``, ...;
  linear schedule 0.00085..0.012 over 1000 steps), from which the hosts derive their sigmas.

``--family sdxl`` follows sgm's ``sd_xl_base.yaml`` (the full-width base model):

* the UNet with 320 channels, ``channel_mult`` 1/2/4, attention at ds 4/2 with transformer depth 2
  (level 1) and 10 (level 2 and the middle block), 64-channel heads, linear ``proj_in``, context 2048,
  and the ``label_emb`` of the 2816-d vector conditioning;
* ``conditioner.embedders.0.transformer.``: the CLIP ViT-L/14 text model;
* ``conditioner.embedders.1.model.``: the OpenCLIP ViT-bigG/14 text tower (1280 wide, 32 layers,
  20 heads, 5120 MLP, projection 1280, ``logit_scale``), as sgm's ``FrozenOpenCLIPEmbedder2`` keeps it;
* no schedule buffers (sgm derives the sigmas itself; SDXL checkpoints have none).

The UNet and VAE are built from the LDM classes of the PyPI package ``stable-diffusion-sdkit``; its
SD2-era ``UNetModel`` takes one transformer depth for all levels and has no vector conditioning, so for
SDXL it is built with depth 1, its transformers are deepened with more ``BasicTransformerBlock`` and the
``label_emb`` is attached (sgm's key names and shapes). The CLIP model is ``transformers``'
``CLIPTextModel`` built from a ``CLIPTextConfig`` made in code; the OpenCLIP tower is a few plain torch
modules with open_clip's parameter names. The hyper-parameters are written here (no host yaml is read).
LDM zero-initialises the last conv of every residual branch, the ``proj_out`` of every transformer and
the UNet's output conv (39 layers in SD1.5, 29 in SDXL); left at zero the UNet would output exactly 0
and no UNet patch could ever show, so every all-zero conv/linear weight is re-initialised (normal, std
1/sqrt(fan_in)) together with its all-zero bias (normal, std 0.02). The script fails if any
conv/linear weight is still all zero.

Network weights are stored in fp16 (SD1.5 builds them in fp32 and casts, as it always has, so its file
keeps its hash; SDXL builds them in fp16, as fp32 would need 14 GB of memory); the DDPM schedule
buffers are stored in fp32 (as LDM computes them: casting them to fp16 would shift the hosts' sigmas
for no gain); ``position_ids`` stays int64.
The output is written to a temporary name next to ``--out`` and renamed at the end, so a reader
never sees a partial file. Same ``--family``, same ``--seed`` and same torch/transformers versions ->
byte-identical file; the script prints the first 10 hex digits of its sha256 (what A1111 shows as
"Model hash").

This is a developer tool (not run in CI). It needs, in a Python 3.11 venv::

    pip install torch==2.13.0+cpu        # or any CPU torch build; never a bare `pip install torch`
    pip install transformers==4.30.2 safetensors omegaconf einops numpy pillow
    pip install --no-deps stable-diffusion-sdkit==2.1.5

Run::

    python tools/make_random_checkpoint.py --out ~/hosts/models/sd15-random.safetensors --seed 0
    python tools/make_random_checkpoint.py --family sdxl --out ~/hosts/models/sdxl-random.safetensors

On a 2-core CPU, SD1.5 takes about 90 s and ~5 GiB of memory (a 2.1 GB file, 1143 tensors); SDXL
takes about 3 min and ~7 GiB of memory (a 6.9 GB file, 2515 tensors). These peaks hold with
safetensors 0.8, whose ``save_file`` writes from the tensors' memory; a version that copies every tensor
to bytes first needs twice as much.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import math
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from weights_file import write_weights  # tools/ is the script's directory

# SD1.5 hyper-parameters (those of LDM's v1-inference config).
SD15_UNET_KWARGS: dict[str, object] = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=2,
    attention_resolutions=[4, 2, 1], channel_mult=[1, 2, 4, 4], num_heads=8,
    use_spatial_transformer=True, transformer_depth=1, context_dim=768, use_checkpoint=False,
    legacy=False, use_linear_in_transformer=False,
)
# SDXL base hyper-parameters (those of sgm's sd_xl_base.yaml). The LDM UNet is built with transformer
# depth 1 and deepened to SDXL_TRANSFORMER_DEPTH per level (the middle block takes the last level's;
# level 0 has no attention, so its 1 is unused, as in the yaml).
SDXL_UNET_KWARGS: dict[str, object] = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=2,
    attention_resolutions=[4, 2], channel_mult=[1, 2, 4], num_head_channels=64,
    use_spatial_transformer=True, transformer_depth=1, context_dim=2048, use_checkpoint=False,
    legacy=False, use_linear_in_transformer=True,
)
SDXL_TRANSFORMER_DEPTH = [1, 2, 10]
SDXL_ADM_IN_CHANNELS = 2816  # pooled OpenCLIP text (1280) + 6 size/crop Fourier embeddings (6 x 256)
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
# OpenCLIP ViT-bigG/14's text tower (SDXL's second text encoder).
OPENCLIP_BIGG_KWARGS: dict[str, int] = dict(
    width=1280, layers=32, heads=20, mlp_width=5120, context_length=MAX_POSITIONS, vocab_size=49408,
    projection_dim=1280,
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


def randomise_layer_norms(model: nn.Module, gen: torch.Generator) -> None:
    """Give every LayerNorm of a text model a random affine (weight 1 + 0.1 N, bias 0.1 N).

    With the default weight 1 and bias 0 the final LayerNorm's output has mean exactly 0, and the
    WebUIs' default emphasis mode ("Original") divides by that mean, turning every prompt into NaN
    (black images in Forge).
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))


def build_unet(seed: int, kwargs: dict[str, object], transformer_depth: list[int] | None = None,
               adm_in_channels: int | None = None) -> tuple[nn.Module, int]:
    """The LDM UNet with random weights and its re-initialised zero layers.

    ``transformer_depth`` (one per level; the middle block takes the last) appends transformer blocks
    to those LDM built with depth 1, found by their width (``model_channels`` x the level's
    multiplier). ``adm_in_channels`` adds sgm's "sequential" ``label_emb`` (linear, SiLU, linear, in a
    nested ``Sequential``), whose output the forward adds to the time embedding.
    """
    from ldm.modules.attention import BasicTransformerBlock, SpatialTransformer
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(seed)
    unet = UNetModel(**kwargs)
    if transformer_depth is not None:
        widths = [kwargs["model_channels"] * mult for mult in kwargs["channel_mult"]]
        depth_by_width = dict(zip(widths, transformer_depth, strict=True))
        if len(depth_by_width) != len(widths):
            raise ValueError("per-level transformer depths need a distinct width per level")
        head_channels = kwargs["num_head_channels"]
        for transformer in [m for m in unet.modules() if isinstance(m, SpatialTransformer)]:
            width = transformer.in_channels
            transformer.transformer_blocks.extend(
                BasicTransformerBlock(width, width // head_channels, head_channels,
                                      context_dim=kwargs["context_dim"], checkpoint=False)
                for _ in range(depth_by_width[width] - len(transformer.transformer_blocks))
            )
    if adm_in_channels is not None:
        width = 4 * kwargs["model_channels"]  # LDM's time embedding width
        unet.num_classes = "sequential"  # LDM's forward then requires `y` and adds label_emb(y)
        unet.label_emb = nn.Sequential(
            nn.Sequential(nn.Linear(adm_in_channels, width), nn.SiLU(), nn.Linear(width, width)))
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
    """A CLIP ViT-L/14 text model (transformers ``CLIPTextModel``) with random weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed + 4)
    model = CLIPTextModel(CLIPTextConfig(**CLIP_TEXT_KWARGS))
    gen = torch.Generator().manual_seed(seed + 5)
    randomise_layer_norms(model, gen)
    return model, reinit_zero_layers(model, gen)


class OpenCLIPResidualBlock(nn.Module):
    """The parameter layout of one open_clip text ``ResidualAttentionBlock`` (pre-LayerNorm, GELU MLP)."""

    def __init__(self, width: int, heads: int, mlp_width: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)  # in_proj_weight/bias, out_proj
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, mlp_width), gelu=nn.GELU(), c_proj=nn.Linear(mlp_width, width)))


class OpenCLIPTextTower(nn.Module):
    """The parameter layout of an open_clip ``CLIP`` without its ``visual`` tower (what sgm's
    ``FrozenOpenCLIPEmbedder2`` keeps as ``model``). Embeddings and projection are initialised with
    open_clip's standard deviations; the rest keeps torch's defaults."""

    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, context_length: int,
                 vocab_size: int, projection_dim: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(
            OpenCLIPResidualBlock(width, heads, mlp_width) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, projection_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width ** -0.5)


def build_openclip_text_tower(seed: int) -> tuple[nn.Module, int]:
    """The OpenCLIP ViT-bigG/14 text tower with random weights."""
    torch.manual_seed(seed + 6)
    model = OpenCLIPTextTower(**OPENCLIP_BIGG_KWARGS)
    gen = torch.Generator().manual_seed(seed + 7)
    randomise_layer_norms(model, gen)
    return model, reinit_zero_layers(model, gen)


@dataclass(frozen=True)
class Family:
    """What one model family's checkpoint holds."""

    architecture: str  # written into the file's metadata
    build_dtype: torch.dtype  # the dtype modules are built in (all weights are stored in fp16)
    parts: tuple[tuple[str, str, Callable[[int], tuple[nn.Module, int]]], ...]  # name, key prefix, builder
    schedule_buffers: bool  # whether the checkpoint has LDM's DDPM schedule buffers


FAMILIES: dict[str, Family] = {
    "sd15": Family(
        architecture="stable-diffusion-v1 (random weights)",
        build_dtype=torch.float32,
        parts=(
            ("unet", "model.diffusion_model.", functools.partial(build_unet, kwargs=SD15_UNET_KWARGS)),
            ("vae", "first_stage_model.", build_vae),
            ("clip", "cond_stage_model.transformer.", build_text_model),
        ),
        schedule_buffers=True,
    ),
    "sdxl": Family(
        architecture="stable-diffusion-xl-v1-base (random weights)",
        build_dtype=torch.float16,  # fp32 would need 14 GB of memory
        parts=(
            ("unet", "model.diffusion_model.", functools.partial(
                build_unet, kwargs=SDXL_UNET_KWARGS, transformer_depth=SDXL_TRANSFORMER_DEPTH,
                adm_in_channels=SDXL_ADM_IN_CHANNELS)),
            ("vae", "first_stage_model.", build_vae),
            ("clip", "conditioner.embedders.0.transformer.", build_text_model),
            ("openclip", "conditioner.embedders.1.model.", build_openclip_text_tower),
        ),
        schedule_buffers=False,
    ),
}


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build modules in ``dtype`` (their parameters are created in torch's default dtype)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


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


def build_state_dict(family: Family, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The whole checkpoint as a flat LDM state dict, and the number of re-initialised layers per part."""
    state: dict[str, torch.Tensor] = {}
    reinit: dict[str, int] = {}

    def add(prefix: str, tensors: dict[str, torch.Tensor]) -> None:
        for key, value in tensors.items():
            value = value.detach().contiguous()
            state[prefix + key] = value.to(torch.float16) if value.is_floating_point() else value

    with default_dtype(family.build_dtype):
        for name, prefix, builder in family.parts:
            model, count = builder(seed)
            reinit[name] = count
            add(prefix, model.state_dict())
            del model

    clip_prefix = next(prefix for name, prefix, _ in family.parts if name == "clip")
    pos_key = clip_prefix + "text_model.embeddings.position_ids"
    if pos_key not in state:  # transformers >= 4.31 no longer saves this buffer; LDM checkpoints have it
        state[pos_key] = torch.arange(MAX_POSITIONS, dtype=torch.int64).unsqueeze(0)
    if family.schedule_buffers:
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
    parser.add_argument("--family", choices=sorted(FAMILIES), default="sd15",
                        help="model family: SD1.5 or the SDXL base model (default sd15)")
    parser.add_argument("--out", type=Path, required=True, help="output .safetensors path")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    args = parser.parse_args(argv)

    start = time.monotonic()
    family = FAMILIES[args.family]
    state, reinit = build_state_dict(family, args.seed)
    check_state_dict(state)
    out: Path = args.out.expanduser().resolve()
    sha = write_weights(state, out, "hires_methods_random_checkpoint", {
        "generator": "tools/make_random_checkpoint.py",
        "architecture": family.architecture,
        "seed": args.seed,
        "reinitialised_zero_layers": reinit,
    })
    n_params = sum(v.numel() for v in state.values())
    print(f"wrote {out} ({out.stat().st_size / 2**30:.2f} GiB, {len(state)} tensors, "
          f"{n_params / 1e6:.0f}M values, re-initialised zero layers: {reinit}, "
          f"sha256 {sha}) in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
