"""What the accordion shows, in every state a person can put it in (without a WebUI)."""
from __future__ import annotations

import html
import re
import threading

from lib_hires.params import GROUPS, all_fields
from lib_hires.ui import (
    FORGE_EARLY, FORGE_NOT_LOADED, NOT_LOADED, NOTHING, OFF, LatestOnly, UiModel, hires_size, panel, passes,
    preset_menu,
)
from lib_hires.unet import ModelFamily
from tests.host.host import Models

FIELDS = all_fields(GROUPS)
CORE = {"width": 1024, "height": 1024, "steps": 20}


def controls(**changes: object) -> list[object]:
    """The accordion's positional values as gradio sends them (choices by label), opened."""
    values = {f.api_key: f.label_of(f.default) for f in FIELDS}
    values.update({"enabled": True, **changes})
    return [values[f.api_key] for f in FIELDS]


def lines(text: str) -> list[str]:
    """The summary's lines as a person reads them."""
    return [html.unescape(part) for part in re.findall(r"<div(?: class='[^']*')?>(.*?)</div>", text)]


def test_the_plan_for_the_controls(sd1: Models) -> None:
    shown = panel("txt2img", controls(), CORE, UiModel(sd1.unet, None, None, "model [abc]"), "page:7")
    assert lines(shown.html) == ["ScaleCrafter, first pass 1024x1024: Auto: SD1.5 1024x1024 (code) | DB1 2, DB2 2, "
                                 "DB3 2, MB 2, UB0 2, UB1 2, UB2 2 | first 12 of 20 steps"]
    assert "data-model='model [abc]' data-stamp='page:7'" in shown.html  # for the page's script
    assert len(shown.locked) == 1 and shown.locked[0].dilation == "DB1=2 DB2=2 DB3=2 MB=2 UB0=2 UB1=2 UB2=2"
    assert shown.sources == ("Auto",) and shown.family is ModelFamily.SD1
    custom = panel("txt2img", controls(scalecrafter_preset="Custom"), CORE, UiModel(sd1.unet, None, None, ""))
    assert custom.locked == ()  # the fields are the user's


def test_every_state_is_worded_for_a_person(sd1: Models) -> None:
    model = UiModel(sd1.unet, None, None, "")
    assert lines(panel("txt2img", controls(), CORE, UiModel(None, None, None, "")).html) == [NOT_LOADED]
    assert lines(panel("txt2img", controls(), CORE, UiModel(None, None, None, ""), forge=True).html) == [
        FORGE_NOT_LOADED]
    early = panel("txt2img", controls(), CORE, UiModel(None, None, ModelFamily.SD1, "x"), forge=True)
    assert lines(early.html)[0] == FORGE_EARLY and "first pass 1024x1024" in lines(early.html)[1]
    off = lines(panel("txt2img", controls(enabled=False), CORE, model).html)
    assert off[0] == OFF and off[1].startswith("ScaleCrafter, first pass")
    assert lines(panel("txt2img", controls(method="None"), CORE, model).html) == [NOTHING]
    tiled = lines(panel("txt2img", controls(method="None", tiled_vae_enabled=True), CORE, model).html)
    assert tiled == ["Tiled VAE (decoder auto, encoder auto, fp32 on NaN)"]
    bad = panel("txt2img", controls(scalecrafter_preset="Custom", scalecrafter_dilation="DB9=2"), CORE, model)
    assert lines(bad.html)[0].startswith("Check Dilation: got 'DB9=2': 'DB9': no block 'DB9' in any supported model")
    assert "hires-methods-error" in bad.html and bad.locked == ()
    small = panel("txt2img", controls(scalecrafter_preset="Custom", scalecrafter_tau=1.0,
                                      scalecrafter_dilation="MB=5"), {**CORE, "width": 256, "height": 256}, model)
    assert "Warning: ScaleCrafter not applied to the first pass" in small.html


def test_hires_fix_and_tabs(sd1: Models) -> None:
    core = {"width": 512, "height": 512, "steps": 20, "hr-checkbox": True, "hr_scale": 2.0, "hr_resize_x": 0,
            "hr_resize_y": 0, "hires_steps": 10}
    first, hires = passes("txt2img", core)
    assert (first.width, hires and (hires.width, hires.height, hires.steps)) == (512, (1024, 1024, 10))
    assert passes("img2img", core)[1] is None  # img2img has no hires pass
    shown = lines(panel("txt2img", controls(), core, UiModel(sd1.unet, None, None, "")).html)
    assert shown == ["ScaleCrafter, hires pass 1024x1024: Auto: SD1.5 1024x1024 (code) | DB1 2, DB2 2, DB3 2, MB 2, "
                     "UB0 2, UB1 2, UB2 2 | first 6 of 10 steps"]
    assert hires_size(512, 768, 2.0, 1000, 0) == (1000, 1500) and hires_size(512, 768, 2.0, 0, 900) == (600, 900)
    assert hires_size(512, 768, 1.5, 800, 640) == (800, 640)


def test_preset_menu_for_the_family() -> None:
    preset = next(f for f in FIELDS if f.api_key == "scalecrafter_preset")
    sd1 = preset_menu(preset, ModelFamily.SD1, "Auto")
    assert sd1[0] == "Auto" and sd1[-1] == "Custom" and all(label.startswith("SD1.5") for label in sd1[1:-1])
    assert len(preset_menu(preset, None, "Auto")) == len(preset.spec.choices or ())  # family unknown: all
    other = preset_menu(preset, ModelFamily.SD1, "SDXL 2048x2048 (paper)")
    assert other[-1] == "SDXL 2048x2048 (paper)"  # kept, so the menu can show it (the plan warns)


def test_only_the_latest_answer_reaches_the_page() -> None:
    latest = LatestOnly()
    assert latest.current("a:2") and not latest.current("a:1")  # an answer to an earlier event is dropped
    assert latest.current("b:1") and latest.current("a:3") and latest.current("a:3")
    assert latest.current("") and latest.current(None)  # without a stamp: answered
    for page in range(LatestOnly.LIMIT + 10):
        latest.current(f"p{page}:1")
    assert len(latest.latest) == LatestOnly.LIMIT and "a" not in latest.latest  # oldest pages forgotten

    answers: list[bool] = []
    order = LatestOnly()
    threads = [threading.Thread(target=lambda n=n: answers.append(order.current(f"c:{n}"))) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert order.latest["c"] == 49 and answers.count(True) >= 1
