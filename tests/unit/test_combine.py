"""Combinations, planned (`methods.combine`): which methods each switch combines with and what is refused
(naming the fields, before sampling), the summary lines before and after the model is loaded, infotext
that reproduces the job, the preset-decided fields, and values given but not used."""
from __future__ import annotations

import pytest

from lib_hires.job import PassSize, plan_job, preview
from lib_hires.methods.combine import COMBINATIONS
from lib_hires.params import (
    COMBINATION_GROUPS,
    GROUPS,
    AttentiveBaseParams,
    ParamError,
    Settings,
    from_infotext,
    validate_api_dict,
)
from lib_hires.ui import UiModel, panel
from lib_hires.unet import ModelFamily
from tests.host.host import Models
from tests.unit.test_ui import controls, lines

FIRST = PassSize("first", 512, 512, 20)
HIRES = PassSize("hires", 1024, 1024, 10)
DIRECT = PassSize("first", 1024, 1024, 20)


def settings(**data: object) -> Settings:
    return validate_api_dict(GROUPS, {"enabled": True, **data})


def refused(**data: object) -> dict[str, str]:
    with pytest.raises(ParamError) as error:
        settings(**data)
    return error.value.problems


def test_every_combination_group_has_its_combination() -> None:
    assert set(COMBINATIONS) == set(COMBINATION_GROUPS)


@pytest.mark.parametrize("method", ["scalecrafter", "apldm", "none"])
def test_attentive_base_is_refused_without_a_base_pass_to_guide(method: str) -> None:
    problems = refused(method=method, attentive_base_enabled=True)
    assert list(problems) == ["attentive_base_enabled"]
    assert problems["attentive_base_enabled"].startswith(
        "Attentive base combines with DemoFusion, AccDiffusion, FreeScale, FSTD, MultiDiffusion; the method is ")


@pytest.mark.parametrize("method", ["fstd", "multidiffusion"])
@pytest.mark.parametrize("apply_to", ["first", "both"])
def test_attentive_base_is_refused_when_the_tiled_pass_is_the_first(method: str, apply_to: str) -> None:
    problems = refused(method=method, attentive_base_enabled=True, **{f"{method}_apply_to": apply_to})
    assert set(problems) == {"attentive_base_enabled", f"{method}_apply_to"}
    assert "set it to Auto or Hires pass" in problems["attentive_base_enabled"]
    settings(method=method, attentive_base_enabled=True, **{f"{method}_apply_to": "hires"})


@pytest.mark.parametrize("method", ["scalecrafter", "demofusion", "accdiffusion", "fstd", "multidiffusion", "none"])
def test_scalecrafter_in_stages_is_refused_outside_apldm_and_freescale(method: str) -> None:
    assert list(refused(method=method, stage_dilation_enabled=True)) == ["stage_dilation_enabled"]


def test_scalecrafter_in_stages_is_refused_beside_freescale_restrained_dilation() -> None:
    problems = refused(method="freescale", stage_dilation_enabled=True)
    assert set(problems) == {"stage_dilation_enabled", "freescale_dilation"}
    assert settings(method="freescale", stage_dilation_enabled=True, freescale_dilation=False)
    assert settings(method="apldm", stage_dilation_enabled=True)


def test_nothing_is_refused_while_the_extension_is_off() -> None:
    assert settings(enabled=False, method="apldm", attentive_base_enabled=True, stage_dilation_enabled=True)


def test_lines_with_and_without_the_model(sd1: Models) -> None:
    data = {"method": "demofusion", "attentive_base_enabled": True}
    loaded = plan_job(settings(**data), sd1.unet, None, DIRECT, None)
    early = plan_job(settings(**data), None, None, DIRECT, None, family=ModelFamily.SD1)
    assert loaded.lines == early.lines and not early.passes and loaded.runs
    assert loaded.lines[-1] == ("Attentive base, base 512x512 of the first pass: attentive guidance 0.004 after steps "
                                "2-20 of 20, cosine decay 3")
    stages = plan_job(settings(method="apldm", stage_dilation_enabled=True), None, None, PassSize("first", 1024, 1024, 50),
                      None, family=ModelFamily.SD1)
    assert stages.lines[-1] == ("ScaleCrafter in stages, first pass stage 1024x1024: Auto: SD1.5 1024x1024 (code) | "
                                "DB1 2, DB2 2, DB3 2, MB 2, UB0 2, UB1 2, UB2 2 | first 6 of 10 steps")


def test_stages_the_setting_leaves_alone_are_named(sd1: Models) -> None:
    plan = plan_job(settings(method="apldm", stage_dilation_enabled=True), sd1.unet, None,
                    PassSize("first", 576, 576, 20), None)
    assert plan.warnings == ("ScaleCrafter in stages: no stage is re-dilated (512x512: Auto: at or below the model's "
                             "native size (512 px), nothing to re-dilate; 576x576: Auto: SD1.5 1024x1024 (code) scaled "
                             "x0.562, every factor rounds to 1: nothing to re-dilate)",)


def test_infotext_reproduces_the_combination(sd1: Models) -> None:
    values = settings(method="freescale", freescale_dilation=False, stage_dilation_enabled=True,
                      attentive_base_enabled=True, attentive_base_preset="code")
    plan = plan_job(values, sd1.unet, None, DIRECT, None)
    assert plan.infotext["Attentive base"] == "True" and plan.infotext["ScaleCrafter in stages"] == "True"
    assert plan.infotext["Attentive base guidance end"] == "0.38"  # the preset's value, written as used
    pasted = validate_api_dict(GROUPS, from_infotext(GROUPS, plan.infotext))
    assert plan_job(pasted, sd1.unet, None, DIRECT, None).infotext == plan.infotext
    plain = plan_job(settings(method="freescale"), sd1.unet, None, DIRECT, None)
    assert not any(key.startswith(("Attentive base", "ScaleCrafter in stages")) for key in plain.infotext)


def test_preset_decides_the_guidance_fields(sd1: Models) -> None:
    shown = preview(settings(method="fstd", attentive_base_enabled=True), sd1.unet, None, FIRST, HIRES)
    locked = {type(values): values for values in shown.locked}
    assert locked[AttentiveBaseParams].gamma == 0.004 and locked[AttentiveBaseParams].decay == 3.0
    custom = preview(settings(method="fstd", attentive_base_enabled=True, attentive_base_preset="custom"), sd1.unet,
                     None, FIRST, HIRES)
    assert AttentiveBaseParams not in {type(values) for values in custom.locked}


def test_values_given_but_not_used_are_named(sd1: Models) -> None:
    plan = plan_job(settings(method="demofusion", attentive_base_enabled=True, attentive_base_strength=0.7),
                    sd1.unet, None, DIRECT, None)
    assert "not used: attentive_base_strength (only FSTD and MultiDiffusion without hires fix refine a base image by " \
           "strength)" in plan.warnings
    off = plan_job(settings(method="demofusion", attentive_base_gamma=0.01), sd1.unet, None, DIRECT, None)
    assert "not used (Attentive base is off): attentive_base_gamma" in off.warnings


def test_img2img_runs_the_method_without_the_combination(sd1: Models) -> None:
    plan = plan_job(settings(method="fstd", attentive_base_enabled=True), sd1.unet, None, DIRECT, None, tab="img2img")
    assert "Attentive base is not available in img2img; the job ran without it" in plan.warnings
    assert set(plan.passes) == {"first"} and plan.cascade("first") is None


def test_the_accordion_shows_the_combined_plan_and_names_refused_fields(sd1: Models) -> None:
    model = UiModel(sd1.unet, None, None, "")
    core = {"width": 1024, "height": 1024, "steps": 20}
    shown = lines(panel("txt2img", controls(method="FreeScale", attentive_base_enabled=True), core, model).html)
    assert shown[0].startswith("FreeScale, first pass 1024x1024: base 512x512, then 1024x1024")
    assert shown[1].startswith("Attentive base, base 512x512 of the first pass: attentive guidance 0.004")
    bad = lines(panel("txt2img", controls(method="FreeScale", stage_dilation_enabled=True), core, model).html)
    assert bad == ["Check ScaleCrafter in stages: FreeScale's Restrained dilation and ScaleCrafter in stages both "
                   "dilate FreeScale's upscaling stages: turn one off",
                   "Check Restrained dilation: FreeScale's Restrained dilation and ScaleCrafter in stages both dilate "
                   "FreeScale's upscaling stages: turn one off"]
