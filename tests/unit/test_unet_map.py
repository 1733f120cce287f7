"""Paper block names on the real LDM UNet, in the SD1, SD2 and SDXL block layouts."""
from __future__ import annotations

import pytest
from torch import nn

from lib_hires.unet import ModelFamily, UnsupportedModel, detect_family, map_unet
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
