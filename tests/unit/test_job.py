"""Planning a WebUI job: which passes run, warnings instead of errors, reproducible infotext."""
from __future__ import annotations

from torch import nn

from lib_hires.job import PassSize, plan_job, preview
from lib_hires.methods.base import passes_for
from lib_hires.params import (
    GROUPS,
    WEBUI_HIRES_KEYS,
    Settings,
    all_fields,
    from_infotext,
    from_ui,
    to_api_dict,
    validate_api_dict,
)
from lib_hires.unet import map_unet
from tests.host.host import Models

FIRST = PassSize("first", 512, 512, 20)
HIRES = PassSize("hires", 1024, 1024, 10)


def settings(**data: object) -> Settings:
    return validate_api_dict(GROUPS, {"enabled": True, **data})


def test_off_when_disabled_or_no_method(sd1: Models) -> None:
    for off in (settings(enabled=False), settings(method="none")):
        plan = plan_job(off, sd1.unet, None, FIRST, HIRES)
        assert not plan.runs and plan.infotext == {}


def test_apply_to() -> None:
    assert passes_for("auto", hires=True) == ("hires",) and passes_for("auto", hires=False) == ("first",)
    assert passes_for("both", hires=True) == ("first", "hires") and passes_for("both", hires=False) == ("first",)
    assert passes_for("hires", hires=False) == () and passes_for("first", hires=True) == ("first",)


def test_hires_fix_dilates_the_hires_pass_for_its_own_size(sd1: Models) -> None:
    plan = plan_job(settings(), sd1.unet, None, FIRST, HIRES)
    assert list(plan.passes) == ["hires"]  # first pass at the native 512: Auto leaves it alone
    assert plan.passes["hires"].resolution.source == "Auto: SD1.5 1024x1024 (code)"
    assert plan.infotext["ScaleCrafter setting"] == "hires pass: Auto: SD1.5 1024x1024 (code)"
    both = plan_job(settings(scalecrafter_apply_to="both"), sd1.unet, None, PassSize("first", 1024, 1024, 20),
                    PassSize("hires", 2048, 2048, 10))
    assert list(both.passes) == ["first", "hires"]
    assert both.passes["hires"].resolution.progressive and not both.passes["first"].resolution.progressive


def test_problems_become_warnings_and_the_job_runs_unmodified(sd1: Models, sdxl: Models) -> None:
    unsupported = plan_job(settings(), nn.Linear(2, 2), None, FIRST, None)
    assert not unsupported.runs and "unsupported model" in unsupported.infotext["Hires Methods warning"]
    other_family = plan_job(settings(scalecrafter_preset="sdxl_2048x2048_code"), sd1.unet, None, FIRST, HIRES)
    assert not other_family.runs
    assert "scalecrafter_preset: SDXL 2048x2048 (code-effective) is for SDXL models; this model is SD1.x" \
        in other_family.warnings[0]
    no_db3 = plan_job(settings(scalecrafter_preset="custom", scalecrafter_dilation="DB3=2"), sdxl.unet, None,
                      FIRST, HIRES)
    assert not no_db3.runs and "scalecrafter_dilation" in no_db3.warnings[0] and "no block 'DB3'" in no_db3.warnings[0]
    hires_off = plan_job(settings(scalecrafter_apply_to="hires"), sd1.unet, None, FIRST, None)
    assert not hires_off.runs and "hires fix is off" in hires_off.infotext["Hires Methods warning"]


def test_explicit_keys_override_the_preset(sd1: Models) -> None:
    plan = plan_job(settings(scalecrafter_tau=0.3, scalecrafter_progressive=False), sd1.unet, None,
                    PassSize("first", 2048, 2048, 20), None)
    resolution = plan.passes["first"].resolution
    assert resolution.tau == 0.3 and not resolution.progressive
    assert dict(resolution.dilation) == {"DB1": 2, "DB2": 3, "DB3": 4, "MB": 4, "UB0": 4, "UB1": 3, "UB2": 2}
    assert resolution.source == "Auto: SD1.5 2048x2048 (code) (set: tau, progressive)"


def test_infotext_reproduces_the_plan_and_never_collides(sd1: Models) -> None:
    user = settings(scalecrafter_ndcfg=True)
    plan = plan_job(user, sd1.unet, None, PassSize("first", 1536, 1536, 20), None)
    assert plan.infotext["ScaleCrafter dilation"] == "DB1=3 DB2=3 DB3=3 MB=3 UB0=3 UB1=3 UB2=3"
    assert plan.infotext["ScaleCrafter dilated steps"] == "0.7"
    assert plan.infotext["ScaleCrafter preset"] == "Auto"
    assert not set(plan.infotext) & WEBUI_HIRES_KEYS
    assert not {f.infotext_key for f in all_fields(GROUPS)} & WEBUI_HIRES_KEYS
    # pasting fills the UI controls, which come back as positional args: the preset decides again
    controls = {**to_api_dict(validate_api_dict(GROUPS, {}).values.values()), **from_infotext(GROUPS, plan.infotext)}
    pasted = from_ui(GROUPS, controls)
    again = plan_job(pasted, sd1.unet, None, PassSize("first", 1536, 1536, 20), None)
    assert again.passes["first"].convs == plan.passes["first"].convs
    assert again.infotext == plan.infotext


def test_preview(sd1: Models) -> None:
    shown = preview(settings(enabled=False), sd1.unet, None, PassSize("first", 1024, 1024, 20), None)
    assert not shown.enabled and shown.warnings == ()
    assert shown.lines == ("ScaleCrafter, first pass 1024x1024: Auto: SD1.5 1024x1024 (code) | DB1 2, DB2 2, DB3 2, "
                           "MB 2, UB0 2, UB1 2, UB2 2 | first 12 of 20 steps",)
    assert len(shown.locked) == 1 and shown.locked[0].dilation == "DB1=2 DB2=2 DB3=2 MB=2 UB0=2 UB1=2 UB2=2"
    native = preview(settings(), sd1.unet, None, FIRST, None)  # at the native size Auto dilates nothing
    assert native.locked[0].dilation == "" and native.locked[0].tau == 0
    assert preview(settings(scalecrafter_preset="custom"), sd1.unet, None, FIRST, None).locked == ()
    # before the model is loaded (Forge): the family alone gives the lines, no pass is planned
    early = preview(settings(), None, None, PassSize("first", 1024, 1024, 20), None, family=map_unet(sd1.unet).family)
    assert early.lines == shown.lines and early.warnings == ()
    assert preview(settings(), None, None, FIRST, None).warnings[0].startswith("unsupported model")



def test_padding_never_reaches_beyond_the_feature_map(sd1: Models, sdxl: Models) -> None:
    """A factor f pads by ceil(f) per side; at 256 px SD1's deepest maps are 4 px wide."""
    custom = {"scalecrafter_preset": "custom", "scalecrafter_tau": 1.0}
    small = PassSize("first", 256, 256, 10)
    ok = plan_job(settings(**custom, scalecrafter_dilation="DB1=8 MB=4"), sd1.unet, None, small, None)
    assert ok.runs and not ok.warnings  # DB1 runs on 16 px maps, MB on 4 px ones
    refused = plan_job(settings(**custom, scalecrafter_dilation="DB1=2 MB=5"), sd1.unet, None, small, None)
    assert not refused.runs
    assert refused.warnings == ("ScaleCrafter not applied to the first pass: scalecrafter_dilation: MB=5 would pad a "
                                "conv's 4-pixel feature map by 5 pixels per side, beyond the map (the largest factor "
                                "there is 4 at this size)",)
    nd = plan_job(settings(**custom, scalecrafter_dilation="DB1=2", scalecrafter_ndcfg_dilation="UB0=4.5",
                           scalecrafter_ndcfg_tau=0.5), sd1.unet, None, small, None)
    assert not nd.runs and "scalecrafter_ndcfg_dilation: UB0=4.5 would pad" in nd.warnings[0]
    # the same values fit at 512 px, where the deepest maps are 8 px wide
    assert plan_job(settings(**custom, scalecrafter_dilation="DB1=2 MB=5"), sd1.unet, None, FIRST, None).runs
    # dispersed convs pad by 2 ceil(f / 2)
    dispersed = plan_job(settings(**custom, scalecrafter_dilation="MB=4.5", scalecrafter_disperse=True,
                                  scalecrafter_disperse_blocks="MB"), sd1.unet, None, small, None)
    assert not dispersed.runs
    assert "MB=4.5 would pad a dispersed conv's 4-pixel feature map by 6 pixels" in dispersed.warnings[0]
    sdxl_part = plan_job(settings(**custom, scalecrafter_dilation="DB2.sampler=2"), sdxl.unet, None, small, None)
    assert not sdxl_part.runs and "SDXL UNet's DB2 has no sampler convs" in sdxl_part.warnings[0]


def test_given_values_the_plan_does_not_use_are_named(sd1: Models) -> None:
    auto_small = plan_job(settings(scalecrafter_dilation="DB1=2"), sd1.unet, None, FIRST, None)
    assert not auto_small.runs
    assert auto_small.warnings == (
        "not used: scalecrafter_dilation (nothing is re-dilated: first pass 512x512: Auto: at or below the model's "
        "native size (512 px), nothing to re-dilate (set: dilation); give scalecrafter_tau as well, or use preset "
        "Custom)",)
    assert auto_small.infotext["Hires Methods warning"] == auto_small.warnings[0]
    both = plan_job(settings(scalecrafter_dilation="DB1=2", scalecrafter_tau=0.5), sd1.unet, None, FIRST, None)
    assert both.runs and not both.warnings  # given together they override the empty Auto setting
    nd_off = plan_job(settings(scalecrafter_ndcfg=False, scalecrafter_ndcfg_dilation="MB=2"), sd1.unet, None,
                      PassSize("first", 1024, 1024, 10), None)
    assert nd_off.runs and nd_off.warnings == (
        "not used: scalecrafter_ndcfg_dilation (noise-damped CFG is off (scalecrafter_ndcfg: false))",)
    none = plan_job(settings(method="none", scalecrafter_tau=0.3, tiled_vae_decoder_tile=32), sd1.unet, None,
                    FIRST, None)
    assert none.warnings == ("not used (method is none): scalecrafter_tau",
                             "not used (Tiled VAE is off): tiled_vae_decoder_tile")
    # the UI sends every control: nothing counts as given outside the chosen method's Custom fields
    controls = {**to_api_dict(validate_api_dict(GROUPS, {}).values.values()), "enabled": True, "method": "none",
                "scalecrafter_preset": "custom", "scalecrafter_tau": 0.3, "tiled_vae_decoder_tile": 32}
    assert plan_job(from_ui(GROUPS, controls), sd1.unet, None, FIRST, None).warnings == ()


def test_tiled_methods_plan_grids_for_each_pass(sd1: Models) -> None:
    hires = PassSize("hires", 1024, 768, 8)  # latent 128 x 96
    fstd = plan_job(settings(method="fstd"), sd1.unet, None, FIRST, hires, seed=3)
    assert list(fstd.passes) == ["hires"] and fstd.warnings == ()
    assert fstd.lines == ("FSTD, hires pass 1024x768: 2x2 tiles of 64 latent px, batch 4, offsets below 32 latent px, "
                          "2 of 8 steps unshifted (every 4th)",)
    assert (fstd.infotext["Hires Methods"], fstd.infotext["FSTD tile size"], fstd.infotext["FSTD offset range"]) == (
        "FSTD", "64", "32")  # the resolved values: the model's native latent size, half a tile
    multi = plan_job(settings(method="multidiffusion", multidiffusion_apply_to="both"), sd1.unet, None, FIRST, hires)
    assert list(multi.passes) == ["first", "hires"]
    assert multi.lines[1] == ("MultiDiffusion, hires pass 1024x768: 3x2 tiles of 64 latent px, overlap 32, uniform "
                              "blending, batch 4")
    assert multi.infotext["MultiDiffusion overlap"] == "32" and multi.infotext["MultiDiffusion blending"] == "Uniform"
    in_img2img = plan_job(settings(method="fstd"), sd1.unet, None, PassSize("first", 1024, 1024, 10), None,
                          tab="img2img")
    assert list(in_img2img.passes) == ["first"]


def test_tiled_methods_refuse_what_cannot_work(sd1: Models) -> None:
    overlap = plan_job(settings(method="multidiffusion", multidiffusion_tile_size=32, multidiffusion_overlap=32),
                       sd1.unet, None, FIRST, None)
    assert not overlap.runs and "overlap (32 latent px) must be smaller than the tile (32 latent px)" in overlap.warnings[0]
    reach = plan_job(settings(method="fstd", fstd_tile_size=32, fstd_offset_range=40), sd1.unet, None, FIRST, None)
    assert not reach.runs and "offset range (40 latent px) must not exceed the tile" in reach.warnings[0]
    no_hires = plan_job(settings(method="fstd", fstd_apply_to="hires"), sd1.unet, None, FIRST, None)
    assert not no_hires.runs and no_hires.warnings == ("FSTD is set to the hires pass but hires fix is off",)
