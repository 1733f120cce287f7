"""Write a random-weight Stable Diffusion 1.5 ControlNet in the original LDM layout (fp16 safetensors).

The file has the key names and shapes of a ``control_v11*_sd15`` checkpoint (the ``ControlNet`` of
lllyasviel's ``cldm``), which A1111's sd-webui-controlnet and Forge's built-in ControlNet both load:

* ``control_model.time_embed.{0,2}.*``: the timestep MLP (320 -> 1280 -> 1280);
* ``control_model.input_hint_block.{0,2,...,14}.*``: eight 3x3 convs with SiLU between them that turn
  the 3-channel hint image into 320 channels at 1/8 of its size (widths 16, 16, 32, 32, 96, 96, 256,
  320; stride 2 at the 3rd, 5th and 7th conv);
* ``control_model.input_blocks.*`` and ``control_model.middle_block.*``: a copy of the SD1.5 UNet's
  encoder (320 channels, ``channel_mult`` 1/2/4/4, 2 res blocks per level, attention at ds 4/2/1
  with 8 heads, conv ``proj_in``, context 768);
* ``control_model.zero_convs.{0..11}.0.*`` and ``control_model.middle_block_out.0.*``: the 1x1 convs
  whose outputs (12 + 1 residuals) the host adds to the UNet's skip connections and middle block.

The model is built from the LDM classes of the PyPI package ``stable-diffusion-sdkit``
(``TimestepEmbedSequential``, ``ResBlock``, ``Downsample``, ``SpatialTransformer``, ``conv_nd``); the
hyper-parameters are written here. Initialisation (a trained ControlNet's zero-initialised layers
would make it add exactly nothing):

* the 13 output convs (cldm's zero convs): weights N(0, s^2 / fan_in), biases N(0, (0.02 s)^2) with
  s = ``--residual-scale``, so each residual is about s times the RMS of the feature it is computed
  from (the ControlNet's copy of the UNet feature it is added to);
* the eight hint convs: He-normal weights (std sqrt(2 / fan_in)) and zero biases (with torch's default
  init the biases re-injected by every conv drown the image, and the hint would hardly matter), the
  last one then scaled so that the encoded probe hint (below) has the RMS of the latent's feature;
* LDM's zero-initialised ``out_layers.3`` of the res blocks and ``proj_out`` of the transformers
  (17 layers): std 1/sqrt(fan_in), biases std 0.02, as ``make_random_checkpoint.py`` does;
  the script fails if any conv/linear weight is still all zero.

The default ``--residual-scale`` 0.2 was chosen on the random SD1.5 checkpoint of
``make_random_checkpoint.py`` (seed 0; fp32 UNet, 16x16 latent, half-black half-white hint): the
residuals change the UNet's output (eps) by 23% (RMS of the change / RMS of eps), and a black hint
instead of the half-white one changes that output by 15%; 0.1 gives 12% and 8%, 0.5 gives 50% and 33%.

The probe is a 64x64 half-black half-white hint with a random 8x8 latent and context. After building,
the script runs the fp32 ControlNet on it and prints the RMS ratios residual / feature of the 13
outputs and encoded hint / latent feature, and how much the residuals change for a black hint.

The output is written to a temporary name next to ``--out`` and renamed at the end. Same ``--seed``,
same ``--residual-scale`` and same torch version -> byte-identical file; the script prints the first 10
hex digits of its sha256.

This is a developer tool (not run in CI). It needs, in a Python 3.11 venv::

    pip install torch==2.13.0+cpu        # or any CPU torch build; never a bare `pip install torch`
    pip install safetensors einops numpy
    pip install --no-deps stable-diffusion-sdkit==2.1.5

Run::

    python tools/make_random_controlnet.py --out ~/hosts/models/controlnet/cn_sd15_random.safetensors

On a 2-core CPU this takes about 20 s and ~3.3 GiB of memory (a 0.7 GB file, 340 tensors).
A1111's sd-webui-controlnet and Forge list it as ``<file stem> [<hash>]``; the API needs that full name.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn
from weights_file import write_weights  # tools/ is the script's directory

# SD1.5's UNet encoder hyper-parameters (LDM's v1-inference config), and the cldm hint encoder.
MODEL_CHANNELS = 320
IN_CHANNELS = 4
HINT_CHANNELS = 3
CHANNEL_MULT = (1, 2, 4, 4)
NUM_RES_BLOCKS = 2
ATTENTION_DS = (4, 2, 1)
NUM_HEADS = 8
CONTEXT_DIM = 768
HINT_WIDTHS = (16, 16, 32, 32, 96, 96, 256)  # the hint convs before the last one (-> MODEL_CHANNELS)
HINT_STRIDE2 = (2, 4, 6)  # which of those convs (0-based) halve the size
DEFAULT_RESIDUAL_SCALE = 0.2


class ControlNet(nn.Module):
    """The parameter layout (and forward) of cldm's ``ControlNet`` with SD1.5's hyper-parameters."""

    def __init__(self) -> None:
        super().__init__()
        from ldm.modules.attention import SpatialTransformer
        from ldm.modules.diffusionmodules.openaimodel import Downsample, ResBlock, TimestepEmbedSequential
        from ldm.modules.diffusionmodules.util import conv_nd

        emb = 4 * MODEL_CHANNELS
        self.time_embed = nn.Sequential(nn.Linear(MODEL_CHANNELS, emb), nn.SiLU(), nn.Linear(emb, emb))

        hint: list[nn.Module] = []
        width = HINT_CHANNELS
        for i, out in enumerate((*HINT_WIDTHS, MODEL_CHANNELS)):
            if i:
                hint.append(nn.SiLU())
            hint.append(conv_nd(2, width, out, 3, padding=1, stride=2 if i in HINT_STRIDE2 else 1))
            width = out
        self.input_hint_block = TimestepEmbedSequential(*hint)

        def transformer(ch: int) -> nn.Module:
            return SpatialTransformer(ch, NUM_HEADS, ch // NUM_HEADS, depth=1, context_dim=CONTEXT_DIM,
                                      use_linear=False, use_checkpoint=False)

        def res_block(ch: int, out: int) -> nn.Module:
            return ResBlock(ch, emb, 0.0, out_channels=out, dims=2, use_checkpoint=False)

        ch = MODEL_CHANNELS
        conv_in = conv_nd(2, IN_CHANNELS, ch, 3, padding=1)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(conv_in)])
        widths = [ch]  # the width of every input block's output, one zero conv each
        ds = 1
        for level, mult in enumerate(CHANNEL_MULT):
            for _ in range(NUM_RES_BLOCKS):
                layers = [res_block(ch, mult * MODEL_CHANNELS)]
                ch = mult * MODEL_CHANNELS
                if ds in ATTENTION_DS:
                    layers.append(transformer(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                widths.append(ch)
            if level != len(CHANNEL_MULT) - 1:
                downsample = Downsample(ch, True, dims=2, out_channels=ch)
                self.input_blocks.append(TimestepEmbedSequential(downsample))
                widths.append(ch)
                ds *= 2
        self.zero_convs = nn.ModuleList(TimestepEmbedSequential(conv_nd(2, w, w, 1)) for w in widths)
        self.middle_block = TimestepEmbedSequential(res_block(ch, ch), transformer(ch), res_block(ch, ch))
        self.middle_block_out = TimestepEmbedSequential(conv_nd(2, ch, ch, 1))

    def output_convs(self) -> list[nn.Conv2d]:
        """The 13 convs whose outputs are the residuals (cldm's zero convs)."""
        return [block[0] for block in self.zero_convs] + [self.middle_block_out[0]]

    def forward(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor,
                context: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """The residuals, the features they are computed from, and the encoded hint."""
        from ldm.modules.diffusionmodules.util import timestep_embedding

        emb = self.time_embed(timestep_embedding(timesteps, MODEL_CHANNELS, repeat_only=False))
        guided_hint = self.input_hint_block(hint, emb, context)
        features = []
        h = x
        for i, block in enumerate(self.input_blocks):
            h = block(h, emb, context)
            if i == 0:
                h = h + guided_hint
            features.append(h)
        features.append(self.middle_block(h, emb, context))
        residuals = [conv(f) for conv, f in zip(self.output_convs(), features, strict=True)]
        return residuals, features, guided_hint


def init_output_convs(model: ControlNet, scale: float, gen: torch.Generator) -> None:
    """Weights N(0, scale^2 / fan_in), biases N(0, (0.02 scale)^2) for the 13 residual convs."""
    with torch.no_grad():
        for conv in model.output_convs():
            fan_in = conv.weight[0].numel()
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (scale / math.sqrt(fan_in)))
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * (0.02 * scale))


def reinit_zero_layers(model: nn.Module, gen: torch.Generator) -> int:
    """Re-initialise every conv/linear whose weight is all zero; return how many there were."""
    count = 0
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.dim() < 2 or weight.any():
                continue
            weight.copy_(torch.randn(weight.shape, generator=gen) / math.sqrt(weight[0].numel()))
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor) and not bias.any():
                bias.copy_(0.02 * torch.randn(bias.shape, generator=gen))
            count += 1
    return count


def probe_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random 8x8 latent, a 64x64 half-black half-white hint and a random context (fp32)."""
    gen = torch.Generator().manual_seed(seed + 2)
    x = torch.randn(1, IN_CHANNELS, 8, 8, generator=gen)
    hint = torch.zeros(1, HINT_CHANNELS, 64, 64)
    hint[..., 32:] = 1.0
    context = torch.randn(1, 77, CONTEXT_DIM, generator=gen)
    return x, hint, context


def rms(t: torch.Tensor) -> float:
    """Root mean square of a tensor."""
    return t.float().pow(2).mean().sqrt().item()


def init_hint_block(model: ControlNet, gen: torch.Generator) -> None:
    """He-normal weights (std sqrt(2 / fan_in)) and zero biases for the eight hint convs.

    With torch's default init the random biases re-injected by every conv drown the image: the
    encoded hint would be almost the same for any hint image.
    """
    with torch.no_grad():
        for conv in model.input_hint_block:
            if isinstance(conv, nn.Conv2d):
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * math.sqrt(2 / fan_in))
                conv.bias.zero_()


def calibrate_hint(model: ControlNet, x: torch.Tensor, hint: torch.Tensor) -> float:
    """Scale the last hint conv so the encoded probe hint is as strong (RMS) as the latent's feature.

    Through eight random convs the hint's RMS shrinks or grows geometrically; a trained ControlNet's
    encoded hint is at least as strong as the latent's. Returns the factor applied.
    """
    with torch.no_grad():
        factor = rms(model.input_blocks[0](x, None, None)) / rms(model.input_hint_block(hint, None, None))
        last = model.input_hint_block[-1]
        last.weight.mul_(factor)
        last.bias.mul_(factor)
    return factor


def build_controlnet(seed: int, residual_scale: float) -> tuple[ControlNet, int]:
    """The ControlNet with random weights; also the number of re-initialised zero layers."""
    torch.manual_seed(seed)
    model = ControlNet()
    gen = torch.Generator().manual_seed(seed + 1)
    init_output_convs(model, residual_scale, gen)
    init_hint_block(model, gen)
    count = reinit_zero_layers(model, gen)
    x, hint, _ = probe_inputs(seed)
    calibrate_hint(model, x, hint)
    return model, count


def probe(model: ControlNet, seed: int) -> dict[str, object]:
    """Run the fp32 model on the probe inputs; return RMS ratios for the report."""
    x, hint, context = probe_inputs(seed)
    with torch.no_grad():
        residuals, features, guided_hint = model(x, hint, torch.tensor([500.0]), context)
        residuals_black, _, _ = model(x, torch.zeros_like(hint), torch.tensor([500.0]), context)
        latent_feature = model.input_blocks[0](x, None, None)
    ratios = [rms(r) / rms(f) for r, f in zip(residuals, features, strict=True)]
    hint_effect = [rms(r - b) / rms(r) for r, b in zip(residuals, residuals_black, strict=True)]
    return {"residual/feature RMS": f"{min(ratios):.3f}..{max(ratios):.3f}",
            "hint/latent feature RMS": round(rms(guided_hint) / rms(latent_feature), 3),
            "residual change for a black hint": f"{min(hint_effect):.2f}..{max(hint_effect):.2f}"}


def state_dict_fp16(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors under ``control_model.``, in fp16; fails on all-zero or non-finite weights."""
    state = {}
    for key, value in model.state_dict().items():
        if not torch.isfinite(value).all():
            raise ValueError(f"non-finite values in {key}")
        if key.endswith(".weight") and value.dim() >= 2 and not value.any():
            raise ValueError(f"all-zero weight left in {key}")
        state["control_model." + key] = value.detach().to(torch.float16).contiguous()
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output .safetensors path")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--residual-scale", type=float, default=DEFAULT_RESIDUAL_SCALE,
                        help="residual RMS as a fraction of the feature's RMS (default %(default)s)")
    args = parser.parse_args(argv)

    start = time.monotonic()
    model, reinit = build_controlnet(args.seed, args.residual_scale)
    model.eval()
    report = probe(model, args.seed)
    state = state_dict_fp16(model)
    out: Path = args.out.expanduser().resolve()
    sha = write_weights(state, out, "hires_methods_random_controlnet", {
        "generator": "tools/make_random_controlnet.py",
        "architecture": "controlnet sd15 (random weights)",
        "seed": args.seed,
        "residual_scale": args.residual_scale,
        "reinitialised_zero_layers": reinit,
    })
    n_params = sum(v.numel() for v in state.values())
    print(f"wrote {out} ({out.stat().st_size / 2**30:.2f} GiB, {len(state)} tensors, "
          f"{n_params / 1e6:.0f}M values, re-initialised zero layers: {reinit}, probe: {report}, "
          f"sha256 {sha}) in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
