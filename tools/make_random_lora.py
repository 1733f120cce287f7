"""Write a random-weight kohya-format LoRA/LoCon for the Stable Diffusion 1.5 UNet (fp16 safetensors).

Every conv and linear layer of the SD1.5 UNet gets a LoRA, named as kohya's sd-scripts name the
diffusers modules (``lora_unet_`` + the diffusers module path with ``_`` for ``.``), with the three
tensors ``<name>.lora_down.weight``, ``<name>.lora_up.weight`` and ``<name>.alpha``:

* transformers: ``..._attentions_N_proj_in`` / ``proj_out`` (1x1 convs in SD1.5),
  ``..._transformer_blocks_0_attn{1,2}_to_{q,k,v}``, ``..._attn{1,2}_to_out_0``, ``..._ff_net_0_proj``,
  ``..._ff_net_2`` (linears);
* resnets (LoCon): ``..._resnets_N_conv1`` / ``conv2`` (3x3), ``..._time_emb_proj``,
  ``..._conv_shortcut`` (1x1, where the width changes);
* ``lora_unet_down_blocks_N_downsamplers_0_conv`` / ``lora_unet_up_blocks_N_upsamplers_0_conv`` (3x3),
  ``lora_unet_conv_in`` / ``lora_unet_conv_out`` (3x3) and ``lora_unet_time_embedding_linear_{1,2}``.

So every 3x3 conv that a method re-dilates has a LoRA part. A linear's ``lora_down`` is
``(rank, in)`` and its ``lora_up`` ``(out, rank)``; a conv's ``lora_down`` is a conv with the layer's
kernel ``(rank, in, k, k)`` and its ``lora_up`` a 1x1 conv ``(out, rank, 1, 1)`` (kohya's LoCon
layout). ``alpha`` = rank (scale alpha / rank = 1). A1111's built-in Lora and Forge map every key
of the file to a UNet layer (checked with their key-mapping code; Forge logs "282 keys ... skipped 0").

The shapes come from the LDM ``UNetModel`` of the PyPI package ``stable-diffusion-sdkit`` with
SD1.5's hyper-parameters (built on the meta device: no memory, no weights), whose module names are
mapped to kohya's names here. ``lora_down`` is N(0, 1 / fan_in) and ``lora_up`` N(0, scale^2 / rank),
so the weight change up @ down of a layer has std ``--scale`` / sqrt(fan_in): ``--scale`` is the
LoRA's size relative to a unit-gain random layer. ``lora_up`` is not zero (a freshly initialised
LoRA's is), so the LoRA has an effect. The default 0.1 was chosen on the random SD1.5 checkpoint of
``make_random_checkpoint.py`` (seed 0; fp32 UNet, 16x16 latent): at LoRA weight 1 it changes the
UNet's output (eps) by 45% (RMS of the change / RMS of eps) and leaves its RMS as it was (0.69 ->
0.71); a random UNet reacts strongly to any weight change: 0.25 gives 84%, 1.0 gives 167% with the
RMS up by half.

The output is written to a temporary name next to ``--out`` and renamed at the end. Same ``--seed``,
``--rank``, ``--scale`` and torch version -> byte-identical file; the script prints the first 10 hex
digits of its sha256.

This is a developer tool (not run in CI). It needs, in a Python 3.11 venv::

    pip install torch==2.13.0+cpu        # or any CPU torch build; never a bare `pip install torch`
    pip install safetensors einops numpy
    pip install --no-deps stable-diffusion-sdkit==2.1.5

Run::

    python tools/make_random_lora.py --out ~/hosts/models/lora/lora_sd15_random.safetensors

It takes a few seconds (an 8.2 MiB file at rank 4: 282 layers, 846 tensors).
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path

import torch
from torch import nn
from weights_file import write_weights  # tools/ is the script's directory

# SD1.5's UNet (LDM's v1-inference config); the same as make_random_checkpoint.py.
SD15_UNET_KWARGS: dict[str, object] = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320, "num_res_blocks": 2,
    "attention_resolutions": [4, 2, 1], "channel_mult": [1, 2, 4, 4], "num_heads": 8,
    "use_spatial_transformer": True, "transformer_depth": 1, "context_dim": 768, "use_checkpoint": False,
    "legacy": False, "use_linear_in_transformer": False,
}
BLOCKS_PER_LEVEL = 3  # SD1.5: 2 res blocks + 1 down/upsampler per level
RESNET_PARTS = {"in_layers.2": "conv1", "out_layers.3": "conv2", "emb_layers.1": "time_emb_proj",
                "skip_connection": "conv_shortcut"}
FIXED_NAMES = {"input_blocks.0.0": "conv_in", "out.2": "conv_out",
               "time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2"}
DEFAULT_RANK = 4
DEFAULT_SCALE = 0.1


def diffusers_name(ldm_name: str) -> str:
    """The diffusers module path of an SD1.5 LDM UNet conv/linear (e.g. ``input_blocks.1.1.proj_in``
    -> ``down_blocks.0.attentions.0.proj_in``)."""
    if ldm_name in FIXED_NAMES:
        return FIXED_NAMES[ldm_name]
    m = re.fullmatch(r"(input_blocks|middle_block|output_blocks)\.(?:(\d+)\.)?(\d+)\.(.+)", ldm_name)
    if m is None:
        raise ValueError(f"no diffusers name for {ldm_name}")
    kind, block, index, rest = m[1], m[2], int(m[3]), m[4]
    if kind == "middle_block":
        # middle_block: res block 0, transformer 1, res block 2
        return resnet_or_attention("mid_block", index // 2 if index != 1 else 0, index == 1, rest)
    if kind == "input_blocks":
        level, k = divmod(int(block) - 1, BLOCKS_PER_LEVEL)
        if k == BLOCKS_PER_LEVEL - 1:  # a Downsample: its conv is "op"
            return f"down_blocks.{level}.downsamplers.0.conv"
        return resnet_or_attention(f"down_blocks.{level}", k, index == 1, rest)
    level, k = divmod(int(block), BLOCKS_PER_LEVEL)
    if index > 0 and rest == "conv":  # an Upsample (after the transformer, if the level has one)
        return f"up_blocks.{level}.upsamplers.0.conv"
    return resnet_or_attention(f"up_blocks.{level}", k, index == 1, rest)


def resnet_or_attention(prefix: str, k: int, is_attention: bool, rest: str) -> str:
    """``<prefix>.attentions.<k>.<rest>`` (names unchanged) or ``<prefix>.resnets.<k>.<diffusers part>``."""
    if is_attention:
        return f"{prefix}.attentions.{k}.{rest}"
    return f"{prefix}.resnets.{k}.{RESNET_PARTS[rest]}"


def lora_targets() -> dict[str, torch.Size]:
    """Kohya name -> weight shape of every conv/linear of the SD1.5 UNet, sorted by name."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        unet = UNetModel(**SD15_UNET_KWARGS)
    targets = {}
    for name, module in unet.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            targets["lora_unet_" + diffusers_name(name).replace(".", "_")] = module.weight.shape
    return dict(sorted(targets.items()))


def build_lora(seed: int, rank: int, scale: float) -> dict[str, torch.Tensor]:
    """The LoRA's tensors (fp16): ``lora_down`` N(0, 1/fan_in), ``lora_up`` N(0, scale^2/rank), ``alpha``."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in lora_targets().items():
        out_dim, in_dim, *kernel = shape
        fan_in = in_dim * math.prod(kernel)
        down = torch.randn((rank, in_dim, *kernel), generator=gen) / math.sqrt(fan_in)
        up = torch.randn((out_dim, rank, *([1] * len(kernel))), generator=gen) * (scale / math.sqrt(rank))
        state[f"{name}.lora_down.weight"] = down.to(torch.float16)
        state[f"{name}.lora_up.weight"] = up.to(torch.float16)
        state[f"{name}.alpha"] = torch.tensor(float(rank), dtype=torch.float16)
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output .safetensors path")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--rank", type=int, default=DEFAULT_RANK, help="LoRA rank (default %(default)s)")
    parser.add_argument("--scale", type=float, default=DEFAULT_SCALE,
                        help="std of a layer's weight change x sqrt(fan_in) (default %(default)s)")
    args = parser.parse_args(argv)

    start = time.monotonic()
    state = build_lora(args.seed, args.rank, args.scale)
    out: Path = args.out.expanduser().resolve()
    # Any metadata makes A1111 list the LoRA as SD1 (kohya's ss_* keys would say more, but are several).
    sha = write_weights(state, out, "hires_methods_random_lora", {
        "generator": "tools/make_random_lora.py",
        "architecture": "lora/locon for stable-diffusion-v1 unet (random weights)",
        "seed": args.seed,
        "rank": args.rank,
        "alpha": args.rank,
        "scale": args.scale,
    })
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {len(state) // 3} layers, "
          f"{len(state)} tensors, rank {args.rank}, scale {args.scale}, sha256 {sha}) "
          f"in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
