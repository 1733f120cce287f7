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

import math
from collections.abc import Iterable, Mapping
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
        methods/scalecrafter.md §6.2. `KeyError` for a block this UNet lacks (SDXL `DB3`) or a part
        that selects nothing in it (SDXL `DB2.sampler`).
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
            if not convs:
                raise KeyError(f"{key!r}: the {self.family.label} UNet's {name} has no {part or 'eligible'} convs")
            values.update(dict.fromkeys(convs, value))
        order = {conv: i for i, conv in enumerate(self.eligible_convs)}
        return dict(sorted(values.items(), key=lambda item: order[item[0]]))

    def conv_level(self, path: str) -> int:
        """The resolution level of an eligible conv's *input* (0 = the latent's size): its block's level,
        except an up block's upsampler conv, which runs on the next finer level."""
        for block in self.blocks:
            if path in block.convs:
                upsampler = block.name.startswith("UB") and path in block.sampler_convs
                return block.level - 1 if upsampler else block.level
        raise KeyError(f"{path!r} is not an eligible conv of this UNet")


def level_size(latent: int, level: int) -> int:
    """A feature map's side at `level` for a latent side of `latent` (each downsampler: ceil(n / 2))."""
    for _ in range(level):
        latent = (latent + 1) // 2
    return latent


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


def family_from_keys(keys: Iterable[str]) -> ModelFamily | None:
    """The family of an LDM-layout checkpoint from its tensor names alone (for a preview before the
    model is loaded): SDXL has a second text encoder (`conditioner.embedders.1`) and a vector embedding
    (`label_emb`), SD2.x an OpenCLIP text model (`cond_stage_model.model`), SD1.x a CLIP one
    (`cond_stage_model.transformer`). None for anything else (another architecture or layout)."""
    names = set()
    for key in keys:
        names.add(".".join(key.split(".")[:3]))
    if not any(name.startswith("model.diffusion_model.") for name in names):
        return None
    if "conditioner.embedders.1" in names or "model.diffusion_model.label_emb" in names:
        return ModelFamily.SDXL
    if "cond_stage_model.model.transformer" in names or "cond_stage_model.model.token_embedding" in names:
        return ModelFamily.SD2
    if "cond_stage_model.transformer.text_model" in names:
        return ModelFamily.SD1
    return None


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

def family_blocks(family: ModelFamily) -> tuple[str, ...]:
    """The block names of a family's UNet, in forward order (what `map_unet` finds; a test checks it)."""
    levels = 3 if family is ModelFamily.SDXL else 4
    return (*(f"DB{k}" for k in range(levels)), "MB", *(f"UB{k}" for k in range(levels)))


def family_sampler_blocks(family: ModelFamily) -> tuple[str, ...]:
    """The blocks of a family's UNet that end in a down- or upsampler conv: every down block but the
    deepest, every up block but the last."""
    levels = 3 if family is ModelFamily.SDXL else 4
    return (*(f"DB{k}" for k in range(levels - 1)), *(f"UB{k}" for k in range(levels - 1)))


ALL_BLOCKS = tuple(dict.fromkeys(name for family in ModelFamily for name in family_blocks(family)))
SAMPLER_BLOCKS = tuple(dict.fromkeys(name for family in ModelFamily for name in family_sampler_blocks(family)))
BLOCK_PARTS = ("resnets", "sampler")
BLOCK_NAMES_TEXT = ("DB0-DB3, MB, UB0-UB3 (SDXL: DB0-DB2, MB, UB0-UB2), each optionally followed by "
                    "'.resnets' or '.sampler'")


def parse_block_key(key: str) -> str:
    """A block key valid in at least one supported family: `DB2`, `DB2.resnets`, `DB2.sampler`.

    `ValueError` naming the allowed names otherwise (a block no family has, a part that is neither
    `resnets` nor `sampler`, a `.sampler` of a block that has no sampler conv in any family).
    """
    name, dot, part = key.partition(".")
    if name not in ALL_BLOCKS:
        raise ValueError(f"{key!r}: no block {name!r} in any supported model; blocks: {BLOCK_NAMES_TEXT}")
    if dot and part not in BLOCK_PARTS:
        raise ValueError(f"{key!r}: the part after the block name must be 'resnets' or 'sampler'")
    if part == "sampler" and name not in SAMPLER_BLOCKS:
        raise ValueError(f"{key!r}: {name} has no sampler conv in any supported model; blocks with one: "
                         f"{', '.join(SAMPLER_BLOCKS)}")
    return key


def _check_order(keys: list[str], key: str) -> None:
    """Refuse a repeated key, and a whole block after one of its parts (it would silently replace it)."""
    if key in keys:
        raise ValueError(f"{key!r} is given twice")
    name, _, part = key.partition(".")
    if not part:
        earlier = [k for k in keys if k.partition(".")[0] == name]
        if earlier:
            raise ValueError(f"{key!r} after {earlier[0]!r} would replace it: give the whole block first, "
                             f"then its parts (e.g. '{name}=3 {earlier[0]}=4')")


def parse_block_values(text: str, maximum: float = math.inf) -> dict[str, float]:
    """`"DB1=2 DB2=3 MB=4"` (spaces or commas between items) -> {"DB1": 2.0, ...}, strictly.

    Every item is `KEY=FACTOR` with a valid block key (`parse_block_key`) and a finite factor from 1
    to `maximum`; no key twice, no whole block after one of its parts. `ValueError` saying which item
    is wrong and what is allowed otherwise.
    """
    values: dict[str, float] = {}
    for item in text.replace(",", " ").split():
        key, sep, raw = item.partition("=")
        try:
            value = float(raw) if sep and raw else math.nan
        except ValueError:
            value = math.nan
        if not sep or not raw:
            raise ValueError(f"{item!r}: expected BLOCK=FACTOR, e.g. 'DB2=3'")
        if not 1 <= value <= maximum:  # also refuses nan
            raise ValueError(f"{item!r}: the factor must be a number from 1 to {maximum:g} (a factor f pads each "
                             "conv's input by ceil(f) pixels per side, and never beyond the feature map it pads)")
        _check_order(list(values), parse_block_key(key))
        values[key] = value
    return values


def format_block_values(values: Mapping[str, float]) -> str:
    """Inverse of `parse_block_values`: `"DB1=2 DB2=2.5"` (integers without a decimal point; others
    written with `repr`, so the text parses back to the same float)."""
    return " ".join(f"{key}={int(v) if float(v).is_integer() else repr(float(v))}" for key, v in values.items())


def parse_block_list(text: str) -> tuple[str, ...]:
    """`"DB3 MB UB0"` (spaces or commas) -> ("DB3", "MB", "UB0"), strictly: valid keys, none twice."""
    keys: list[str] = []
    for key in text.replace(",", " ").split():
        if "=" in key:
            raise ValueError(f"{key!r}: give block names only (no factors here), e.g. 'DB3 MB UB0'")
        _check_order(keys, parse_block_key(key))
        keys.append(key)
    return tuple(keys)
