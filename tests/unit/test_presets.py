"""ScaleCrafter presets (scalecrafter.md §6) and the "Auto" rule."""
from __future__ import annotations

import dataclasses
import itertools

import pytest

from lib_hires.presets import (
    PRESETS, TABLE_NATIVE, ResolvedPreset, ScaleCrafterPreset, auto_preset, get_preset, presets_for,
    resolve_preset,
)
from lib_hires.unet import ModelFamily, UNetMap, map_unet
from tests.host.models import LAYOUTS, build_unet

SD1, SD2, SDXL = ModelFamily.SD1, ModelFamily.SD2, ModelFamily.SDXL


@pytest.fixture(scope="module")
def unet_maps() -> dict[ModelFamily, UNetMap]:
    return {family: map_unet(build_unet(LAYOUTS[family.value])) for family in ModelFamily}


def test_keys_are_unique_and_labels_readable() -> None:
    keys = [p.key for p in PRESETS]
    assert len(keys) == len(set(keys)) == 24
    assert len({p.label for p in PRESETS}) == len(PRESETS)
    assert get_preset("sd15_2048x2048_code").label == "SD1.5 2048x2048 (code)"
    assert get_preset("sdxl_4096x4096_code").label == "SDXL 4096x4096 (code-effective)"
    assert get_preset("sdxl_2048x2048_intended").label == "SDXL 2048x2048 (intended)"


def test_the_sets_cover_every_shipped_resolution() -> None:
    sizes = lambda family, source: {(p.width, p.height) for p in presets_for(family, source)}  # noqa: E731
    sd_sizes = {(1024, 1024), (1280, 1280), (2048, 1024), (2048, 2048)}
    xl_sizes = {(2048, 2048), (2560, 2560), (4096, 2048), (4096, 4096)}
    assert sizes(SD1, "code") == sizes(SD2, "code") == sizes(SD1, "paper") == sd_sizes
    assert sizes(SDXL, "code") == sizes(SDXL, "code-intended") == sizes(SDXL, "paper") == xl_sizes
    assert presets_for(SD2, "paper") == () and presets_for(SD1, "code-intended") == ()


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.key)
def test_every_block_key_selects_convs_of_the_family_unet(preset: ScaleCrafterPreset,
                                                           unet_maps: dict) -> None:
    unet_map = unet_maps[preset.family]
    for key in (*preset.dilation, *preset.ndcfg_dilation, *preset.disperse):
        assert unet_map.conv_values({key: 2.0}), f"{preset.key}: {key!r} selects no conv"


def test_sdxl_code_effective_sets_have_no_deep_sd_blocks() -> None:
    for preset in presets_for(SDXL):
        assert not any(key.startswith(("DB3", "UB3")) for key in preset.dilation)
    for preset in presets_for(SDXL, "code"):
        # The official files' SD names that SDXL lacks are gone: DB2 has no sampler, DB0/DB1 untouched.
        assert not {"DB0", "DB1", "DB2.sampler"} & set(preset.dilation)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.key)
def test_preset_invariants(preset: ScaleCrafterPreset) -> None:
    assert all(value > 1 for value in (*preset.dilation.values(), *preset.ndcfg_dilation.values()))
    assert 0 < preset.tau <= 50 and 0 <= preset.ndcfg_tau <= 50
    assert bool(preset.ndcfg_dilation) == (preset.ndcfg_tau > 0)
    # A part key ("DB2.sampler") only ever raises its block's factor, so dropping it when rescaling
    # can never leave the part at a larger inherited factor.
    for key, value in preset.dilation.items():
        block, _, part = key.partition(".")
        if part:
            assert value >= preset.dilation.get(block, 0)
    # The noise-damped model is a subset of the main one, never dilated more (§4).
    for key, value in preset.ndcfg_dilation.items():
        assert value <= preset.dilation[key]
    # Dispersed layers must also be dilated (§5.1).
    dilated_blocks = {key.partition(".")[0] for key in preset.dilation}
    assert {key.partition(".")[0] for key in preset.disperse} <= dilated_blocks


def test_presets_are_immutable() -> None:
    preset = get_preset("sd15_2048x2048_code")
    with pytest.raises(TypeError):
        preset.dilation["DB1"] = 5.0  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset.tau = 10  # type: ignore[misc]


def test_sd15_2048_code_values() -> None:
    p = get_preset("sd15_2048x2048_code")
    assert dict(p.dilation) == {"DB1": 2, "DB2": 3, "DB3": 4, "MB": 4, "UB0": 4, "UB1": 3, "UB2": 2}
    assert (p.tau, p.progressive, p.ndcfg_tau) == (35, True, 35)
    assert dict(p.ndcfg_dilation) == {"DB2": 3, "DB3": 4, "MB": 4, "UB0": 4, "UB1": 3}
    assert p.disperse == ("DB2.sampler", "DB3", "MB", "UB0", "UB1")
    assert get_preset("sd15_2048x1024_code").dilation == p.dilation


def test_sd15_small_code_values() -> None:
    inner = {"DB1", "DB2", "DB3", "MB", "UB0", "UB1", "UB2"}
    p1024, p1280 = get_preset("sd15_1024x1024_code"), get_preset("sd15_1280x1280_code")
    assert dict(p1024.dilation) == dict.fromkeys(inner, 2.0) and p1024.tau == 30
    assert dict(p1280.dilation) == dict.fromkeys(inner, 2.5) and p1280.tau == 35
    assert not p1024.progressive and not p1024.ndcfg_dilation and p1024.disperse == ()


def test_sd21_code_values(unet_maps: dict) -> None:
    p = get_preset("sd21_2048x2048_code")
    assert p.family is SD2 and (p.tau, p.ndcfg_tau, p.progressive) == (37, 37, True)
    convs = unet_maps[SD2].conv_values(p.dilation)
    db2 = unet_maps[SD2].block("DB2")
    assert [convs[c] for c in db2.sampler_convs] == [4.0]
    assert {convs[c] for c in db2.convs if c not in db2.sampler_convs} == {3.0}
    assert not set(unet_maps[SD2].block("DB1").convs) & set(convs)
    assert dict(p.dilation)["UB3"] == 2 and dict(p.dilation)["UB2"] == 3 and dict(p.dilation)["UB1"] == 4
    wide = get_preset("sd21_2048x1024_code")
    assert wide.tau == 37 and not wide.ndcfg_dilation and wide.ndcfg_tau == 0 and "unused" in wide.note
    assert get_preset("sd21_1024x1024_code").tau == 20 and get_preset("sd21_1280x1280_code").tau == 30


def test_sdxl_code_effective_and_intended_values() -> None:
    p = get_preset("sdxl_4096x4096_code")
    assert dict(p.dilation) == {"DB2": 4, "MB": 4, "UB0": 4, "UB1": 3, "UB2": 2}
    assert dict(p.ndcfg_dilation) == {"MB": 2, "UB0": 2}
    assert (p.tau, p.ndcfg_tau, p.progressive) == (35, 35, True)
    assert dict(get_preset("sdxl_4096x2048_code").dilation)["DB2"] == 3
    assert dict(get_preset("sdxl_2048x2048_code").dilation) == {"MB": 2, "UB0": 2}
    assert dict(get_preset("sdxl_2048x2048_intended").dilation) == {"DB2": 2, "MB": 2, "UB0": 2}
    intended = get_preset("sdxl_4096x4096_intended")
    assert dict(intended.dilation) == {"DB1": 4, "DB2": 4, "MB": 4, "UB0": 4, "UB1": 3, "UB2": 2}
    assert dict(intended.ndcfg_dilation) == {"DB2": 2, "MB": 2, "UB0": 2}
    assert "inference" in intended.note


def test_paper_values_turn_noise_damped_blocks_back() -> None:
    p = get_preset("sd15_2048x2048_paper")
    assert dict(p.dilation) == {"DB0": 2, "DB1": 4, "DB2": 4, "DB3": 4, "MB": 4, "UB0": 4, "UB1": 4, "UB2": 4,
                                "UB3": 2}
    assert p.disperse == ("DB2", "DB3", "MB", "UB0", "UB1")
    assert set(p.ndcfg_dilation) == set(p.dilation) - {"DB0", "DB1", "UB2", "UB3"}
    assert (p.tau, p.progressive) == (35, True)
    wide = get_preset("sd15_2048x1024_paper")
    assert len(wide.dilation) == 9 and set(wide.ndcfg_dilation) == {"DB3", "MB", "UB0"}
    assert (wide.tau, wide.progressive) == (30, False)
    assert dict(get_preset("sd15_1024x1024_paper").dilation) == {"DB3": 2, "MB": 2, "UB0": 2}
    xl = get_preset("sdxl_2560x2560_paper")
    assert dict(xl.dilation) == {"DB0": 2, "DB1": 2, "DB2": 2.5, "MB": 2.5, "UB0": 2.5, "UB1": 2, "UB2": 2}
    assert dict(xl.ndcfg_dilation) == {"DB2": 2.5, "MB": 2.5, "UB0": 2.5}
    xl4k = get_preset("sdxl_4096x4096_paper")
    assert dict(xl4k.ndcfg_dilation) == {"DB2": 4, "MB": 4, "UB0": 4}
    assert xl4k.disperse == ("DB2", "MB", "UB0")


def test_unknown_key_lists_the_valid_ones() -> None:
    with pytest.raises(KeyError, match="sd15_2048x2048_code") as info:
        get_preset("sd15_4096x4096_code")
    assert "sd15_4096x4096_code" in str(info.value) and "sdxl_4096x4096_intended" in str(info.value)
    with pytest.raises(KeyError):
        resolve_preset("nope")


def test_resolve_named_preset_is_unscaled() -> None:
    resolved = resolve_preset("sd21_2048x2048_code")
    preset = get_preset("sd21_2048x2048_code")
    assert resolved == ResolvedPreset(preset.key, 1.0, preset.dilation, preset.ndcfg_dilation, preset.tau,
                                      preset.ndcfg_tau, True, preset.disperse, "SD2.1 2048x2048 (code)")
    assert list(resolved.dilation) == list(preset.dilation)  # override order kept


# --- Auto --------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", [p for p in PRESETS if p.source == "code"], ids=lambda p: p.key)
def test_auto_at_a_table_size_returns_the_entry_unscaled(preset: ScaleCrafterPreset) -> None:
    resolved = auto_preset(preset.family, preset.width, preset.height, TABLE_NATIVE[preset.family])
    assert resolved == resolve_preset(preset.key)


def test_auto_in_between_square() -> None:
    # s = 3: |log 3 - log 2.5| < |log 4 - log 3|, so SD1.5 1280² scaled by 3/2.5, 2.5 -> 3.
    resolved = auto_preset(SD1, 1536, 1536, 512)
    assert resolved.preset == "sd15_1280x1280_code" and resolved.rescale == pytest.approx(1.2)
    assert dict(resolved.dilation) == dict.fromkeys(("DB1", "DB2", "DB3", "MB", "UB0", "UB1", "UB2"), 3.0)
    assert (resolved.tau, resolved.progressive, resolved.ndcfg_tau) == (35, False, 0)
    assert resolved.description == "SD1.5 1280x1280 (code) scaled x1.2"


def test_auto_in_between_wide_rounds_halves_up() -> None:
    # Wide (1.75): only the 2048x1024 entry; s = 3.5, x0.875: 2 -> 1.75 -> 2, 3 -> 2.625 -> 2.5, 4 -> 3.5.
    resolved = auto_preset(SD1, 1792, 1024, 512)
    assert resolved.preset == "sd15_2048x1024_code" and resolved.rescale == 0.875
    assert dict(resolved.dilation) == {"DB1": 2, "DB2": 2.5, "DB3": 3.5, "MB": 3.5, "UB0": 3.5, "UB1": 2.5,
                                       "UB2": 2}
    assert dict(resolved.ndcfg_dilation) == {"DB2": 2.5, "DB3": 3.5, "MB": 3.5, "UB0": 3.5, "UB1": 2.5}
    assert (resolved.tau, resolved.ndcfg_tau, resolved.progressive) == (35, 35, True)
    assert resolved.description == "SD1.5 2048x1024 (code) scaled x0.875"
    # Portrait sizes are wide too, and pick the same entry.
    assert auto_preset(SD1, 1024, 1792, 512) == resolved


def test_auto_below_the_smallest_entry() -> None:
    resolved = auto_preset(SD1, 768, 768, 512)
    assert resolved.preset == "sd15_1024x1024_code" and resolved.rescale == 0.75
    assert set(resolved.dilation.values()) == {1.5} and len(resolved.dilation) == 7


def test_auto_drops_factors_that_round_to_one() -> None:
    # s = 1.5 on the wide entry (x0.375): 2 -> 0.75 and 3 -> 1.125 -> 1.0 are dropped, 4 -> 1.5 stays.
    resolved = auto_preset(SD1, 768, 512, 512)
    assert dict(resolved.dilation) == {"DB3": 1.5, "MB": 1.5, "UB0": 1.5}
    assert dict(resolved.ndcfg_dilation) == {"DB3": 1.5, "MB": 1.5, "UB0": 1.5}
    nothing = auto_preset(SD1, 520, 256, 512)
    assert nothing.empty and nothing.ndcfg_tau == 0 and "rounds to 1" in nothing.description


def test_auto_uses_the_model_native_size() -> None:
    # SD2.1-v (768): 1536² is s = 2, the SD2.1-base 1024² entry, unscaled.
    assert auto_preset(SD2, 1536, 1536, 768) == resolve_preset("sd21_1024x1024_code")
    xl = auto_preset(SDXL, 3072, 3072, 1024)
    assert xl.preset == "sdxl_2560x2560_code" and dict(xl.dilation) == {"MB": 3.0, "UB0": 3.0}


@pytest.mark.parametrize(("width", "height"), [(512, 512), (512, 384), (384, 256), (64, 64)])
def test_auto_at_or_below_native_is_empty(width: int, height: int) -> None:
    resolved = auto_preset(SD1, width, height, 512)
    assert resolved.empty and resolved.preset is None
    assert not resolved.ndcfg_dilation and resolved.disperse == () and resolved.tau == 0
    assert "at or below the model's native size" in resolved.description


def test_auto_rejects_non_positive_sizes() -> None:
    with pytest.raises(ValueError):
        auto_preset(SD1, 0, 512, 512)


@pytest.mark.parametrize("family", list(ModelFamily))
def test_auto_keeps_dispersed_blocks_dilated_and_ndcfg_consistent(family: ModelFamily) -> None:
    native = TABLE_NATIVE[family]
    for width, height in itertools.product(range(native, 9 * native, native // 4), repeat=2):
        resolved = auto_preset(family, width, height, native)
        dilated = {key.partition(".")[0] for key in resolved.dilation}
        assert {key.partition(".")[0] for key in resolved.disperse} <= dilated
        assert bool(resolved.ndcfg_dilation) == (resolved.ndcfg_tau > 0)
        assert all(value > 1 and value * 2 == int(value * 2) for value in resolved.dilation.values())
