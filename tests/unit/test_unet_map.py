"""Paper block names on the real LDM UNet, in the SD1, SD2 and SDXL block layouts."""
from __future__ import annotations

import re

import pytest
from torch import nn

from lib_hires.unet import (
    ALL_BLOCKS, ModelFamily, UnsupportedModel, detect_family, family_blocks, family_from_keys, family_sampler_blocks,
    format_block_values, level_size, map_unet, parse_block_list, parse_block_values,
)
from tests.host.models import LAYOUTS, build_unet

# The 50 eligible convs of the official ScaleCrafter list for SD1.5/SD2.1 (all_valid_convs.txt),
# in LDM names (methods/scalecrafter.md §1.1).
_RES = ("in_layers.2", "out_layers.3")
OFFICIAL_SD15 = (
    [f"input_blocks.{i}.0.{c}" for i in (1, 2) for c in _RES] + ["input_blocks.3.0.op"]
    + [f"input_blocks.{i}.0.{c}" for i in (4, 5) for c in _RES] + ["input_blocks.6.0.op"]
    + [f"input_blocks.{i}.0.{c}" for i in (7, 8) for c in _RES] + ["input_blocks.9.0.op"]
    + [f"input_blocks.{i}.0.{c}" for i in (10, 11) for c in _RES]
    + [f"middle_block.{i}.{c}" for i in (0, 2) for c in _RES]
    + [f"output_blocks.{i}.0.{c}" for i in (0, 1, 2) for c in _RES] + ["output_blocks.2.1.conv"]
    + [f"output_blocks.{i}.0.{c}" for i in (3, 4, 5) for c in _RES] + ["output_blocks.5.2.conv"]
    + [f"output_blocks.{i}.0.{c}" for i in (6, 7, 8) for c in _RES] + ["output_blocks.8.2.conv"]
    + [f"output_blocks.{i}.0.{c}" for i in (9, 10, 11) for c in _RES]
)


@pytest.fixture(scope="module")
def unets() -> dict[str, nn.Module]:
    return {name: build_unet(layout) for name, layout in LAYOUTS.items()}


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_sd_layout_has_exactly_the_official_50_convs(unets: dict[str, nn.Module], family: str) -> None:
    m = map_unet(unets[family])
    assert len(OFFICIAL_SD15) == 50
    assert m.eligible_convs == tuple(OFFICIAL_SD15)
    assert m.block_names == ("DB0", "DB1", "DB2", "DB3", "MB", "UB0", "UB1", "UB2", "UB3")


def test_sd_block_table(unets: dict[str, nn.Module]) -> None:
    m = map_unet(unets["sd1"])
    assert m.block("DB3").paths == ("input_blocks.10", "input_blocks.11")
    assert m.block("MB").paths == ("middle_block",)
    assert m.block("UB0").paths == ("output_blocks.0", "output_blocks.1", "output_blocks.2")
    assert m.block("DB2").sampler_convs == ("input_blocks.9.0.op",)
    assert m.block("UB0").sampler_convs == ("output_blocks.2.1.conv",)
    assert m.block("UB3").sampler_convs == ()
    assert [b.level for b in m.blocks] == [0, 1, 2, 3, 3, 3, 2, 1, 0]
    # attention: SD1 has transformers at levels 0-2 (two per down block, three per up block) and MB
    assert m.block("DB0").self_attention == ("input_blocks.1.1.transformer_blocks.0.attn1",
                                             "input_blocks.2.1.transformer_blocks.0.attn1")
    assert m.block("DB3").cross_attention == ()
    assert len(m.block("UB1").cross_attention) == 3 and len(m.block("MB").self_attention) == 1


def test_sdxl_block_table(unets: dict[str, nn.Module]) -> None:
    m = map_unet(unets["sdxl"])
    assert m.family is ModelFamily.SDXL and m.levels == 3
    assert m.block_names == ("DB0", "DB1", "DB2", "MB", "UB0", "UB1", "UB2")
    assert m.block("DB2").paths == ("input_blocks.7", "input_blocks.8")
    assert m.block("DB2").sampler_convs == ()  # SDXL's deepest down block has no downsampler
    assert m.block("DB1").sampler_convs == ("input_blocks.6.0.op",)
    assert m.block("UB0").sampler_convs == ("output_blocks.2.2.conv",)
    assert m.block("UB1").sampler_convs == ("output_blocks.5.2.conv",)
    assert m.block("DB0").self_attention == () and m.block("UB2").cross_attention == ()
    assert len(m.eligible_convs) == 38
    with pytest.raises(KeyError, match="no block 'DB3'"):
        m.block("DB3")


def test_never_eligible(unets: dict[str, nn.Module]) -> None:
    for unet in unets.values():
        convs = set(map_unet(unet).eligible_convs)
        assert "input_blocks.0.0" not in convs and "out.2" not in convs
        for path in convs:
            module = unet.get_submodule(path)
            assert isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3)
        one_by_one = {n for n, mod in unet.named_modules() if isinstance(mod, nn.Conv2d) and mod.kernel_size == (1, 1)}
        assert one_by_one and not one_by_one & convs  # skip convs and conv proj_in/out


def test_family_detection(unets: dict[str, nn.Module]) -> None:
    assert detect_family(unets["sd1"]) is ModelFamily.SD1
    assert detect_family(unets["sd2"]) is ModelFamily.SD2
    assert detect_family(unets["sdxl"]) is ModelFamily.SDXL
    with pytest.raises(UnsupportedModel, match="only SD1.x, SD2.x and SDXL"):
        detect_family(nn.Sequential(nn.Conv2d(4, 4, 3)))  # e.g. an MMDiT (SD3/Flux) has no input_blocks


def test_conv_values(unets: dict[str, nn.Module]) -> None:
    m = map_unet(unets["sd2"])
    values = m.conv_values({"DB2": 3, "DB2.sampler": 4, "UB3.resnets": 2})
    assert values["input_blocks.9.0.op"] == 4
    assert values["input_blocks.7.0.in_layers.2"] == 3
    assert len([v for v in values.values() if v == 2]) == 6
    assert list(values) == [c for c in m.eligible_convs if c in values]  # forward order
    with pytest.raises(KeyError, match="'resnets' or 'sampler'"):
        m.conv_values({"DB2.attn": 2})


def test_conv_values_refuses_what_this_unet_lacks(unets: dict[str, nn.Module]) -> None:
    sdxl = map_unet(unets["sdxl"])
    with pytest.raises(KeyError, match="no block 'DB3'"):
        sdxl.conv_values({"DB3": 2})
    with pytest.raises(KeyError, match="SDXL UNet's DB2 has no sampler convs"):
        sdxl.conv_values({"DB2.sampler": 2})  # valid in SD1.x/SD2.x, where DB2 ends in a downsampler


def test_family_block_tables_match_the_unets(unets: dict[str, nn.Module]) -> None:
    for name, unet in unets.items():
        m = map_unet(unet)
        assert family_blocks(m.family) == m.block_names, name
        assert family_sampler_blocks(m.family) == tuple(b.name for b in m.blocks if b.sampler_convs), name
    assert ALL_BLOCKS == ("DB0", "DB1", "DB2", "DB3", "MB", "UB0", "UB1", "UB2", "UB3")


def test_conv_levels_and_feature_map_sizes(unets: dict[str, nn.Module]) -> None:
    m = map_unet(unets["sd1"])
    assert m.conv_level("input_blocks.1.0.in_layers.2") == 0
    assert m.conv_level("input_blocks.3.0.op") == 0  # a downsampler reads its block's level
    assert m.conv_level("middle_block.0.in_layers.2") == 3
    assert m.conv_level("output_blocks.2.1.conv") == 2  # an upsampler conv runs on the finer level
    assert [level_size(64, level) for level in range(4)] == [64, 32, 16, 8]
    assert [level_size(13, level) for level in range(4)] == [13, 7, 4, 2]


@pytest.mark.parametrize("text, canonical", [
    ("", {}),
    ("DB1=2 DB2=3, MB=4", {"DB1": 2, "DB2": 3, "MB": 4}),
    ("DB2=3 DB2.sampler=4 UB3.resnets=2", {"DB2": 3, "DB2.sampler": 4, "UB3.resnets": 2}),
    ("UB0=8", {"UB0": 8}),
    ("DB0=1.25", {"DB0": 1.25}),
])
def test_block_values_accepted(text: str, canonical: dict[str, float]) -> None:
    assert parse_block_values(text, 8) == canonical
    assert parse_block_values(format_block_values(canonical), 8) == canonical


@pytest.mark.parametrize("text, message", [
    ("DB4=2", "no block 'DB4' in any supported model; blocks: DB0-DB3, MB, UB0-UB3"),
    ("XB1=2", "no block 'XB1'"),
    ("MB.sampler=2", "MB has no sampler conv in any supported model; blocks with one: DB0, DB1, DB2, UB0"),
    ("DB3.sampler=2", "DB3 has no sampler conv"),
    ("DB2.attn=2", "must be 'resnets' or 'sampler'"),
    ("DB2=3 DB2=4", "'DB2' is given twice"),
    ("DB2.sampler=4 DB2=3", "'DB2' after 'DB2.sampler' would replace it"),
    ("DB2=", "expected BLOCK=FACTOR"),
    ("DB2", "expected BLOCK=FACTOR"),
    ("=2", "no block ''"),
    ("DB2=0.5", "from 1 to 8"),
    ("DB2=9", "from 1 to 8"),
    ("DB2=1000", "from 1 to 8"),
    ("DB2=inf", "from 1 to 8"),
    ("DB2=nan", "from 1 to 8"),
    ("DB2=two", "from 1 to 8"),
])
def test_block_values_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_block_values(text, 8)


def test_block_lists() -> None:
    assert parse_block_list("DB3, MB UB0 DB2.sampler") == ("DB3", "MB", "UB0", "DB2.sampler")
    for text, message in (("DB3 DB3", "given twice"), ("DB3=2", "block names only"), ("UB9", "no block 'UB9'"),
                          ("DB2.sampler DB2", "would replace it")):
        with pytest.raises(ValueError, match=message):
            parse_block_list(text)


def test_family_from_checkpoint_keys() -> None:
    unet = ["model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.decoder.conv_in.weight"]
    sd1 = unet + ["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]
    sd2 = unet + ["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"]
    sdxl = unet + ["model.diffusion_model.label_emb.0.0.weight", "conditioner.embedders.1.model.ln_final.weight"]
    assert [family_from_keys(keys) for keys in (sd1, sd2, sdxl)] == [ModelFamily.SD1, ModelFamily.SD2, ModelFamily.SDXL]
    assert family_from_keys(["double_blocks.0.img_attn.qkv.weight"]) is None  # e.g. Flux
    assert family_from_keys(unet) is None  # no text encoder to tell SD1 from SD2
