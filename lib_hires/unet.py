"""The papers' UNet block names mapped onto LDM module paths, per model family.

ScaleCrafter (appendix, Fig. 1) names the UNet's blocks after the diffusers indices: `DBk` =
`down_blocks.k`, `MB` = `mid_block`, `UBk` = `up_blocks.k`. A1111 and Forge keep the LDM tree
(`input_blocks.*`, `middle_block.*`, `output_blocks.*`), so this module derives the mapping from the
tree itself (methods/scalecrafter.md §1.1 for SD1.x/SD2.x, §1.2 for SDXL):

* `input_blocks.0` is `conv_in` and belongs to no block; every later input block belongs to the
  resolution level it runs at, and a level's downsampler closes its `DBk`.
* `middle_block` is `MB`.
* output blocks are counted from the deepest level, `UB0` first; a level's upsampler closes its `UBk`.

For each block the *eligible* convolutions are the 3x3 convs that ScaleCrafter and FreeScale may
re-dilate: ResBlock `in_layers.2` / `out_layers.3`, Downsample `op`, Upsample `conv`. Never
`input_blocks.0.0`, `out.2`, 1x1 skip convs or attention projections. For SD1.5 that is exactly the
50 convs of the official `all_valid_convs.txt`.

Modules are recognised by class name (`ResBlock`, `Downsample`, `Upsample`, `SpatialTransformer`),
which the LDM, SGM and Forge UNets share, so nothing here imports a WebUI.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from torch import nn


class ModelFamily(str, Enum):
    """Model families with an LDM-layout UNet. The value is the name used in the API and infotext."""

    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"

    @property
    def label(self) -> str:
        return {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}[self.value]


class UnsupportedModel(ValueError):
    """The UNet is not an LDM-layout SD1.x/SD2.x/SDXL UNet (e.g. SD3 or Flux in Forge)."""


@dataclass(frozen=True)
class Block:
    """One paper block: its LDM paths and the modules methods act on (all paths relative to the UNet)."""

    name: str
    level: int  # resolution level; 0 = full latent resolution
    paths: tuple[str, ...]
    convs: tuple[str, ...]  # eligible 3x3 convs, in module order
    sampler_convs: tuple[str, ...]  # the subset that is a down-/up-sampler conv
    self_attention: tuple[str, ...]
    cross_attention: tuple[str, ...]


@dataclass(frozen=True)
class UNetMap:
    """All paper blocks of one UNet, in forward order (DB0.., MB, UB0..)."""

    family: ModelFamily
    levels: int
    blocks: tuple[Block, ...]

    @property
    def block_names(self) -> tuple[str, ...]:
        return tuple(block.name for block in self.blocks)

    def block(self, name: str) -> Block:
        for block in self.blocks:
            if block.name == name:
                return block
        raise KeyError(f"{self.family.label} UNet has no block {name!r}; blocks: {', '.join(self.block_names)}")

    @property
    def eligible_convs(self) -> tuple[str, ...]:
        return tuple(conv for block in self.blocks for conv in block.convs)

    def conv_values(self, spec: Mapping[str, float]) -> dict[str, float]:
        """Per-conv values from per-block ones, in forward order.

        Keys are a block name (`"DB2"`: all its eligible convs), `"<block>.resnets"` (its ResBlock
        convs only) or `"<block>.sampler"` (its down-/up-sampler conv only). Later keys override
        earlier ones, so `{"DB2": 3, "DB2.sampler": 4}` gives the SD2.1 2048² setting of
        methods/scalecrafter.md §6.2. A key naming a part the block lacks (SDXL `DB2.sampler`)
        selects nothing.
        """
        values: dict[str, float] = {}
        for key, value in spec.items():
            name, _, part = key.partition(".")
            block = self.block(name)
            if part == "":
                convs = block.convs
            elif part == "sampler":
                convs = block.sampler_convs
            elif part == "resnets":
                convs = tuple(c for c in block.convs if c not in block.sampler_convs)
            else:
                raise KeyError(f"{key!r}: the part after the block name must be 'resnets' or 'sampler'")
            values.update(dict.fromkeys(convs, value))
        order = {conv: i for i, conv in enumerate(self.eligible_convs)}
        return dict(sorted(values.items(), key=lambda item: order[item[0]]))


def _is(module: nn.Module, class_name: str) -> bool:
    return any(cls.__name__ == class_name for cls in type(module).__mro__)


def _is_conv3x3(module: nn.Module | None) -> bool:
    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (3, 3)


def _block_contents(path: str, block: nn.Module) -> tuple[list[str], list[str], list[str], list[str]]:
    """Eligible convs, sampler convs, self- and cross-attention paths inside one LDM block."""
    convs: list[str] = []
    samplers: list[str] = []
    self_attn: list[str] = []
    cross_attn: list[str] = []
    for name, module in block.named_modules(prefix=path):
        if _is(module, "ResBlock"):
            for sub in ("in_layers.2", "out_layers.3"):
                if _is_conv3x3(module.get_submodule(sub)):
                    convs.append(f"{name}.{sub}")
        elif _is(module, "Downsample") or _is(module, "Upsample"):
            sub = "op" if _is(module, "Downsample") else "conv"
            if _is_conv3x3(getattr(module, sub, None)):
                convs.append(f"{name}.{sub}")
                samplers.append(f"{name}.{sub}")
        elif name.endswith(".attn1"):
            self_attn.append(name)
        elif name.endswith(".attn2"):
            cross_attn.append(name)
    return convs, samplers, self_attn, cross_attn


def _has(block: nn.Module, class_name: str) -> bool:
    return any(_is(module, class_name) for module in block.modules())


def detect_family(unet: nn.Module) -> ModelFamily:
    """SD1.x, SD2.x or SDXL from the module tree alone.

    Three resolution levels is SDXL; four is SD1.x or SD2.x, told apart by the spatial transformers'
    input projection (a 1x1 conv in SD1.x, a linear layer in SD2.x).
    """
    for attr in ("input_blocks", "middle_block", "output_blocks"):
        if not isinstance(getattr(unet, attr, None), nn.Module):
            raise UnsupportedModel(
                f"not an LDM-layout UNet (no {attr}): only SD1.x, SD2.x and SDXL are supported"
            )
    levels = 1 + sum(_has(block, "Downsample") for block in unet.input_blocks)
    if levels == 3:
        return ModelFamily.SDXL
    if levels == 4:
        transformers = [m for m in unet.modules() if _is(m, "SpatialTransformer")]
        if not transformers:
            raise UnsupportedModel("UNet without spatial transformers: not SD1.x/SD2.x")
        return ModelFamily.SD2 if isinstance(transformers[0].proj_in, nn.Linear) else ModelFamily.SD1
    raise UnsupportedModel(f"UNet with {levels} resolution levels: only SD1.x/SD2.x (4) and SDXL (3) are supported")


def map_unet(unet: nn.Module) -> UNetMap:
    """The paper blocks of an LDM-layout UNet (see the module docstring for the rule)."""
    family = detect_family(unet)
    levels = 1 + sum(_has(block, "Downsample") for block in unet.input_blocks)

    def make(name: str, level: int, paths: list[str]) -> Block:
        parts = [_block_contents(path, unet.get_submodule(path)) for path in paths]
        convs, samplers, self_attn, cross_attn = (tuple(x for part in parts for x in part[k]) for k in range(4))
        return Block(name, level, tuple(paths), convs, samplers, self_attn, cross_attn)

    down: list[list[str]] = [[] for _ in range(levels)]
    level = 0
    for index, block in enumerate(unet.input_blocks):
        if index == 0:
            continue  # conv_in
        down[level].append(f"input_blocks.{index}")
        if _has(block, "Downsample"):
            level += 1
    up: list[list[str]] = [[] for _ in range(levels)]
    depth = 0  # 0 = deepest level
    for index, block in enumerate(unet.output_blocks):
        up[depth].append(f"output_blocks.{index}")
        if _has(block, "Upsample"):
            depth += 1

    blocks = [make(f"DB{k}", k, paths) for k, paths in enumerate(down)]
    blocks.append(make("MB", levels - 1, ["middle_block"]))
    blocks += [make(f"UB{k}", levels - 1 - k, paths) for k, paths in enumerate(up)]
    return UNetMap(family, levels, tuple(blocks))


# --- block-key text, as users type it: "DB1=2 DB2=3 DB2.sampler=4 MB=4" ---

_BLOCK_KEY = re.compile(r"^(DB\d|MB|UB\d)(\.(resnets|sampler))?$")


def parse_block_key(key: str) -> str:
    if not _BLOCK_KEY.match(key):
        raise ValueError(f"{key!r} is not a block key (DB0-DB3, MB, UB0-UB3, optionally .resnets or .sampler)")
    return key


def parse_block_values(text: str) -> dict[str, float]:
    """`"DB1=2 DB2=3 MB=4"` (spaces or commas between items) -> {"DB1": 2.0, ...}; values >= 1."""
    values: dict[str, float] = {}
    for item in text.replace(",", " ").split():
        key, sep, raw = item.partition("=")
        try:
            value = float(raw) if sep else float("nan")
        except ValueError:
            value = float("nan")
        if not value >= 1:
            raise ValueError(f"{item!r}: expected BLOCK=FACTOR with a factor >= 1, e.g. 'DB2=3'")
        values[parse_block_key(key)] = value
    return values


def format_block_values(values: Mapping[str, float]) -> str:
    """Inverse of `parse_block_values`: `"DB1=2 DB2=2.5"` (integers without a decimal point)."""
    return " ".join(f"{key}={int(v) if float(v).is_integer() else v}" for key, v in values.items())


def parse_block_list(text: str) -> tuple[str, ...]:
    """`"DB3 MB UB0"` (spaces or commas) -> ("DB3", "MB", "UB0")."""
    return tuple(parse_block_key(key) for key in text.replace(",", " ").split())
