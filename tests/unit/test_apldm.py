"""AP-LDM's pure parts: PFSA against its formula, the guidance schedule, stage sizes and start indices,
and the plan for both entries (sizes, steps, warnings for sizes it cannot serve)."""
from __future__ import annotations

import math

import pytest
import torch

from lib_hires.job import PassSize, plan_job
from lib_hires.methods.apldm import PRESETS, auto_strengths, base_size, resolve, stage_sizes, start_index
from lib_hires.methods.base import CascadePlan
from lib_hires.ops.attentive_guidance import guidance_scales, guide, guided_steps, pfsa
from lib_hires.params import GROUPS, APLDMParams, validate_api_dict
from lib_hires.unet import ModelFamily


def test_pfsa_is_the_formula_per_image() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 5, generator=gen, dtype=torch.float64) * 3
    out = pfsa(x, chunk=4)  # several query blocks, one partial
    for n in range(2):
        tokens = x[n].reshape(4, 15).T  # (HW, C)
        weights = torch.softmax(tokens @ tokens.T / math.sqrt(4), dim=-1)
        expected = (weights @ tokens).T.reshape(4, 3, 5)
        assert torch.allclose(out[n], expected, atol=1e-6)
    # rows of the attention sum to one: a constant latent is a fixed point, and gamma 0 changes nothing
    flat = torch.full((1, 4, 4, 4), 2.5)
    assert torch.allclose(pfsa(flat), flat)
    assert torch.equal(guide(x, 0.0), x)
    assert torch.allclose(guide(x, 0.5), x + 0.5 * (out - x))


def test_pfsa_chunking_does_not_change_the_result() -> None:
    x = torch.randn(1, 4, 16, 12, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(pfsa(x, chunk=7), pfsa(x, chunk=4096), atol=1e-6)


def test_guided_steps_and_scales_match_the_official_settings() -> None:
    # the paper: delay 0.06 of 50 steps -> steps 3..49 (official density [1]*47 + [0]*3)
    assert guided_steps(50, 0.06, 1.0) == range(3, 50)
    # the official notebook: [0]*31 + [1]*16 + [0]*3 -> steps 3..18
    assert guided_steps(50, 0.06, 0.38) == range(3, 19)
    assert guided_steps(20, 0.06, 1.0) == range(1, 20)
    assert not guided_steps(10, 0.5, 0.5)
    scales = guidance_scales(0.004, 47, 3.0)
    assert scales[0] == pytest.approx(0.004) and scales[-1] == pytest.approx(0.0, abs=1e-18)
    assert all(a >= b for a, b in zip(scales, scales[1:]))
    assert scales[23] == pytest.approx(0.004 * 0.5**3)  # the middle: cos(pi/2) = 0
    assert guidance_scales(0.005, 16, 0.0) == [0.005] * 16
    assert guidance_scales(0.004, 1, 3.0) == [0.004]


def test_presets_and_explicit_values() -> None:
    params = APLDMParams()
    assert resolve(params, frozenset()) == PRESETS["paper"]
    code = APLDMParams(preset="code", gamma=0.01)
    assert resolve(code, frozenset()) == PRESETS["code"]
    assert resolve(code, frozenset({"apldm_gamma"})).gamma == 0.01
    custom = APLDMParams(preset="custom", gamma=0.02, delay=0.1, end=0.5, decay=1.0)
    assert resolve(custom, frozenset()).gamma == 0.02


@pytest.mark.parametrize(("width", "height", "native", "multiple", "expected"), [
    (1024, 1024, 512, 64, (512, 512)),
    (768, 1024, 512, 64, (448, 576)),
    (2048, 1024, 512, 64, (704, 384)),
    (1000, 1500, 1024, 32, (832, 1248)),  # odd target: sides on the 32 px grid
    (4096, 1024, 1024, 32, (2048, 512)),
])
def test_base_size_keeps_the_native_pixel_count(width: int, height: int, native: int, multiple: int,
                                                expected: tuple[int, int]) -> None:
    base = base_size(width, height, native, multiple)
    assert base == expected
    assert base[0] % multiple == 0 and base[1] % multiple == 0
    assert abs(base[0] * base[1] / native**2 - 1) < 0.12
    assert abs(math.log((base[1] / base[0]) / (height / width))) < 0.15


def test_stage_sizes_are_area_linear_and_end_at_the_target() -> None:
    # SDXL 1024² -> 4096² in two stages: areas 1024²+(4096²-1024²)/2 then 4096²
    sizes = stage_sizes((1024, 1024), (4096, 4096), 2, 32)
    assert sizes[-1] == (4096, 4096)
    assert sizes[0] == (int(math.sqrt((1024**2 + 4096**2) / 2) / 32) * 32,) * 2 == (2976, 2976)
    assert stage_sizes((448, 576), (770, 1030), 1, 64) == [(770, 1030)]  # the last is exactly the target
    three = stage_sizes((512, 512), (1536, 1536), 3, 64)
    assert [w for w, _ in three] == sorted(w for w, _ in three) and all(w % 64 == 0 for w, _ in three[:-1])


def test_start_indices_and_automatic_strengths() -> None:
    # official: N = 50, init_rate 0.8 -> timesteps[40:] (10 steps); 0.9 -> [45:]
    assert start_index(50, 0.2) == 40 and start_index(50, 0.1) == 45
    assert start_index(20, 0.2) == 16 and start_index(3, 0.01) == 2 and start_index(10, 1.0) == 0
    assert auto_strengths(2.0) == (0.2,) and auto_strengths(1.5) == (0.2,)
    assert auto_strengths(3.0) == (0.2, 0.2) and auto_strengths(4.0) == (0.1, 0.2)


def _plan(data: dict[str, object], first: PassSize, hires: PassSize | None, family: str = "sd1"):  # type: ignore[no-untyped-def]
    settings = validate_api_dict(GROUPS, {"enabled": True, "method": "apldm", **data})
    return plan_job(settings, None, None, first, hires, family=ModelFamily(family))


def test_direct_entry_plans_base_then_refinement() -> None:
    from lib_hires.unet import map_unet
    from tests.host.host import build_models

    unet = build_models("sd1").unet
    settings = validate_api_dict(GROUPS, {"enabled": True, "method": "apldm"})
    plan = plan_job(settings, unet, None, PassSize("first", 768, 1024, 20), None)
    cascade = plan.cascade("first")
    assert isinstance(cascade, CascadePlan) and cascade.from_noise and map_unet(unet).family is ModelFamily.SD1
    assert [(s.size, s.steps, s.start, s.upscale) for s in cascade.stages] == [
        ((72, 56), 20, 0, "latent"), ((128, 96), 20, 16, "rgb")]
    assert cascade.steps == 24
    assert plan.infotext["AP-LDM refinement strengths"] == "0.2"
    assert "base 448x576" in plan.summary and "768x1024 from step 17 of 20" in plan.summary


def test_hires_entry_guides_the_first_pass_and_replaces_the_hires_pass() -> None:
    from tests.host.host import build_models

    unet = build_models("sd1").unet
    settings = validate_api_dict(GROUPS, {"enabled": True, "method": "apldm", "apldm_refine": "0.3 0.2"})
    plan = plan_job(settings, unet, None, PassSize("first", 512, 512, 20), PassSize("hires", 1536, 1536, 10))
    assert not isinstance(plan.passes["first"], CascadePlan)
    cascade = plan.cascade("hires")
    assert cascade is not None and not cascade.from_noise
    # areas 512², (512² + 1536²) / 2 -> side 1144.9 floored to 1088 px, then 1536²; N = the hires steps
    assert [(s.size, s.steps, s.start) for s in cascade.stages] == [((136, 136), 10, 7), ((192, 192), 10, 8)]
    assert "hires upscaler and denoising strength not used" in plan.summary


@pytest.mark.parametrize(("first", "hires", "words"), [
    (PassSize("first", 512, 512, 20), None, "Width and Height 512x512 must have more pixels"),
    (PassSize("first", 2048, 256, 20), None, "aspect of 8.00:1; allowed: up to 4:1"),
    (PassSize("first", 4608, 4608, 20), None, "9.0x the base side"),
    (PassSize("first", 512, 512, 20), PassSize("hires", 512, 512, 20), "Hires upscale / Resize width and height"),
])
def test_sizes_it_cannot_serve_are_named(first: PassSize, hires: PassSize | None, words: str) -> None:
    plan = _plan({}, first, hires)
    assert not plan.passes and words in plan.infotext["Hires Methods warning"]
    assert plan.infotext["Hires Methods warning"].startswith("AP-LDM not applied")

