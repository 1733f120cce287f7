"""The accordion as a person meets it in the browser: the plan line, locked fields, methods and tabs,
one generation with its infotext pasted back, and the X/Y/Z axis list (see conftest.py to run)."""
from __future__ import annotations

import random

from lib_hires.methods.scalecrafter import resolve
from lib_hires.params import GROUPS, ScaleCrafterParams, all_fields, fields, xyz_axes
from lib_hires.unet import ModelFamily, format_block_values
from tests.browser.conftest import Page

HELP = {f.api_key: f.spec.help for f in all_fields(GROUPS)}
LOCKED = [f.api_key for f in fields(ScaleCrafterParams) if f.spec.from_preset]


def auto_dilation(width: int, height: int) -> str:
    """What the Auto preset gives an SD1.5 model (native 512 px) at this size."""
    return format_block_values(resolve(ScaleCrafterParams(), frozenset(), ModelFamily.SD1, 512, width, height).dilation)


def test_summary_is_filled_at_page_load(page: Page) -> None:
    """Without a click: at page load, and again when the model finishes loading (the page asks again while
    the plan is for another checkpoint than the one selected)."""
    text = page.wait(lambda: "ScaleCrafter" in page.summary("txt2img") and page.summary("txt2img"), timeout=60,
                     what="a summary without any click")
    width, height = (page.find(f"#txt2img_{key} input[type=number]").get_attribute("value") for key in ("width", "height"))
    assert f"first pass {width}x{height}" in text, text


def test_summary_follows_fast_typing(page: Page) -> None:
    """Ten times: type a width and a height key by key (every key an event), then the summary and the
    locked fields must show the plan of the final values within 2.5 s."""
    page.open_accordion("txt2img")
    page.screenshot("accordion", page.ours("txt2img", "enabled"))
    sizes = [(1024, 1024), (768, 1280), (1536, 1024), (640, 640), (2048, 1024), (1280, 1280), (1024, 2048),
             (896, 1152), (1600, 1600), (1152, 896)]
    random.Random(0).shuffle(sizes)
    for width, height in sizes:
        page.type_number("#txt2img_width", width)
        page.type_number("#txt2img_height", height)
        expected = auto_dilation(width, height)
        dilation = page.ours("txt2img", "scalecrafter_dilation")
        page.wait(lambda: f"first pass {width}x{height}" in page.summary("txt2img")
                  and page.value(dilation) == expected, timeout=2.5,
                  what=f"the plan of {width}x{height} (dilation {expected})")
    page.screenshot("summary", page.ours("txt2img", "enabled"))


def test_locked_fields_say_so_and_keep_their_help(page: Page) -> None:
    page.open_accordion("txt2img")
    page.type_number("#txt2img_width", 1024)
    page.wait(lambda: "first pass 1024x" in page.summary("txt2img"), what="the 1024 px plan")
    for key in LOCKED:
        element = page.ours("txt2img", key)
        page.wait(lambda: page.label(element).endswith("(from the Auto preset)"), what=f"{key} to show it is locked")
        assert element.get_attribute("title") == HELP[key]
        assert not element.find_element(page.by.CSS_SELECTOR, "textarea, input").is_enabled(), key
    page.choose(page.ours("txt2img", "scalecrafter_preset"), "Custom")
    dilation = page.ours("txt2img", "scalecrafter_dilation")
    page.wait(lambda: page.label(dilation) == "Dilation", what="Custom to unlock the fields")
    assert dilation.find_element(page.by.CSS_SELECTOR, "textarea, input").is_enabled()
    assert dilation.get_attribute("title") == HELP["scalecrafter_dilation"]
    page.choose(page.ours("txt2img", "scalecrafter_preset"), "Auto")


def test_presets_of_the_loaded_family_only(page: Page) -> None:
    page.open_accordion("txt2img")
    options = page.options(page.ours("txt2img", "scalecrafter_preset"))
    assert options[0] == "Auto" and options[-1] == "Custom"
    assert all(label.startswith("SD1.5") for label in options[1:-1]) and len(options) == 10, options


def test_switching_methods(page: Page) -> None:
    page.open_accordion("txt2img")
    method = page.ours("txt2img", "method")
    page.choose(method, "None")
    page.wait(lambda: not page.shown("txt2img", "scalecrafter_group"), what="the ScaleCrafter group to hide")
    page.wait(lambda: "Nothing to run" in page.summary("txt2img"), what="the summary for method None")
    page.choose(method, "FSTD")
    page.wait(lambda: page.shown("txt2img", "fstd_group") and not page.shown("txt2img", "multidiffusion_group"),
              what="the FSTD group alone")
    page.wait(lambda: "FSTD, first pass" in page.summary("txt2img") and "tiles of" in page.summary("txt2img"),
              what="the FSTD tile grid")
    page.screenshot("fstd", page.ours("txt2img", "enabled"))
    page.choose(method, "AP-LDM")
    page.wait(lambda: page.shown("txt2img", "apldm_group") and not page.shown("txt2img", "fstd_group"),
              what="the AP-LDM group alone")
    size = [page.find(f"#txt2img_{key} input[type=number]").get_attribute("value") for key in ("width", "height")]
    try:
        page.type_number("#txt2img_width", 512)
        page.type_number("#txt2img_height", 512)
        page.wait(lambda: "AP-LDM not applied: Width and Height 512x512 must have more pixels" in page.summary("txt2img"),
                  what="the AP-LDM size warning before Generate")
        page.type_number("#txt2img_width", 768)
        page.type_number("#txt2img_height", 1024)
        page.wait(lambda: "AP-LDM, first pass 768x1024: base 448x576" in page.summary("txt2img"),
                  what="the AP-LDM stages")
        gamma = page.ours("txt2img", "apldm_gamma")
        assert page.label(gamma) == "Guidance scale (from the Paper preset)"
        page.screenshot("apldm", page.ours("txt2img", "enabled"))
    finally:
        page.type_number("#txt2img_width", int(size[0]))
        page.type_number("#txt2img_height", int(size[1]))
    page.choose(method, "AccDiffusion")
    page.wait(lambda: page.shown("txt2img", "accdiffusion_group") and not page.shown("txt2img", "demofusion_group"),
              what="the AccDiffusion group alone")
    try:
        page.type_number("#txt2img_width", 1024)
        page.type_number("#txt2img_height", 1024)
        page.wait(lambda: "AccDiffusion, first pass 1024x1024: phase 1 512x512, then phase 2 1024x1024 (9 windows + "
                  "4 sub-lattices per step, by 16)" in page.summary("txt2img"), what="the AccDiffusion phases")
        assert page.label(page.ours("txt2img", "accdiffusion_sigma")) == "Blur sigma (from the Official preset)"
        page.screenshot("accdiffusion", page.ours("txt2img", "enabled"))
        page.choose(method, "DemoFusion")
        page.wait(lambda: page.shown("txt2img", "demofusion_group") and not page.shown("txt2img", "accdiffusion_group"),
                  what="the DemoFusion group alone")
        page.wait(lambda: "DemoFusion, first pass 1024x1024" in page.summary("txt2img"), what="the DemoFusion phases")
        page.choose(method, "FreeScale")
        page.wait(lambda: page.shown("txt2img", "freescale_group") and not page.shown("txt2img", "demofusion_group"),
                  what="the FreeScale group alone")
        page.wait(lambda: "FreeScale, first pass 1024x1024: base 512x512, then 1024x1024 from step" in
                  page.summary("txt2img") and "scale fusion on 3x3 windows" in page.summary("txt2img"),
                  what="the FreeScale stages")
        assert page.label(page.ours("txt2img", "freescale_detail")) == "Detail control (from the Official preset)"
        assert not page.shown("txt2img", "freescale_mask")  # API only
        page.screenshot("freescale", page.ours("txt2img", "enabled"))
    finally:
        page.type_number("#txt2img_width", int(size[0]))
        page.type_number("#txt2img_height", int(size[1]))
    page.choose(method, "ScaleCrafter")
    page.wait(lambda: page.shown("txt2img", "scalecrafter_group") and not page.shown("txt2img", "fstd_group"),
              what="the ScaleCrafter group to show")
    page.wait(lambda: "ScaleCrafter, first pass" in page.summary("txt2img"), what="the ScaleCrafter plan")


def _tick(page: Page, tab: str, key: str) -> None:
    """Click one of our checkboxes (opening its group first if it is closed)."""
    box = page.ours(tab, key).find_element(page.by.CSS_SELECTOR, "input[type=checkbox]")
    page.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)
    box.click()


def _open_group(page: Page, tab: str, group: str) -> None:
    if not page.shown(tab, group.replace("_group", "_enabled")):
        page.ours(tab, group).find_element(page.by.CSS_SELECTOR, ".label-wrap").click()
    page.wait(lambda: page.shown(tab, group.replace("_group", "_enabled")), what=f"the {group} to open")


def test_combinations_show_for_their_methods_with_the_combined_plan(page: Page) -> None:
    page.open_accordion("txt2img")
    method = page.ours("txt2img", "method")
    size = [page.find(f"#txt2img_{key} input[type=number]").get_attribute("value") for key in ("width", "height")]
    ticked: list[str] = []
    try:
        page.type_number("#txt2img_width", 1024)
        page.type_number("#txt2img_height", 1024)
        page.choose(method, "DemoFusion")
        page.wait(lambda: page.shown("txt2img", "attentive_base_group") and not page.shown("txt2img",
                  "stage_dilation_group"), what="the Attentive base group alone")
        _open_group(page, "txt2img", "attentive_base_group")
        _tick(page, "txt2img", "attentive_base_enabled")
        ticked.append("attentive_base_enabled")
        page.wait(lambda: "Attentive base, base 512x512 of the first pass: attentive guidance 0.004 after steps 2-20 of "
                  "20" in page.summary("txt2img") and "DemoFusion, first pass 1024x1024" in page.summary("txt2img"),
                  what="the combined plan")
        assert page.label(page.ours("txt2img", "attentive_base_gamma")) == "Guidance scale (from the Paper preset)"
        page.screenshot("combination", page.ours("txt2img", "enabled"))
        page.choose(method, "FreeScale")
        page.wait(lambda: page.shown("txt2img", "stage_dilation_group"), what="the ScaleCrafter in stages group")
        _open_group(page, "txt2img", "stage_dilation_group")
        _tick(page, "txt2img", "stage_dilation_enabled")
        ticked.append("stage_dilation_enabled")
        page.wait(lambda: "Check Restrained dilation: FreeScale's Restrained dilation and ScaleCrafter in stages both "
                  "dilate" in page.summary("txt2img"), what="the refused combination, naming both fields")
        _tick(page, "txt2img", "freescale_dilation")
        ticked.append("freescale_dilation")
        page.wait(lambda: "ScaleCrafter in stages, first pass stage 1024x1024: Auto" in page.summary("txt2img"),
                  what="ScaleCrafter in FreeScale's stage")
        page.choose(method, "ScaleCrafter")
        page.wait(lambda: not page.shown("txt2img", "attentive_base_group") and not page.shown(
            "txt2img", "stage_dilation_group"), what="no combination group for ScaleCrafter")
    finally:
        page.choose(method, "FreeScale")  # shows both groups
        page.wait(lambda: page.shown("txt2img", "stage_dilation_group"), what="the FreeScale groups")
        for key in reversed(ticked):
            _tick(page, "txt2img", key)
        page.choose(method, "ScaleCrafter")
        page.type_number("#txt2img_width", int(size[0]))
        page.type_number("#txt2img_height", int(size[1]))


def test_img2img_offers_no_hires_options(page: Page) -> None:
    page.tab("img2img")
    try:
        page.open_accordion("img2img")
        assert page.shown("img2img", "scalecrafter_preset") and not page.shown("img2img", "scalecrafter_apply_to")
        page.wait(lambda: "first pass" in page.summary("img2img"), what="the img2img plan")
        assert "hires" not in page.summary("img2img").lower()
        page.screenshot("img2img", page.ours("img2img", "enabled"))
    finally:
        page.tab("txt2img")


def test_generate_read_infotext_and_paste_it_back(page: Page) -> None:
    page.open_accordion("txt2img")
    prompt = page.find("#txt2img_prompt textarea")
    prompt.clear()
    prompt.send_keys("a lighthouse on a cliff")
    page.type_number("#txt2img_width", 128)
    page.type_number("#txt2img_height", 128)
    page.type_number("#txt2img_steps", 2)
    # let the plan of the new size arrive first: it updates the preset menus, which closes an open menu
    page.wait(lambda: "first pass 128x128" in page.summary("txt2img"), what="the plan of 128x128")
    page.choose(page.ours("txt2img", "scalecrafter_preset"), "Custom")
    page.type_text(page.ours("txt2img", "scalecrafter_dilation"), "DB1=2 DB2=3 UB1=2")
    page.type_number("#script_txt2img_hires_methods_scalecrafter_tau", 1)
    page.wait(lambda: "DB1 2, DB2 3, UB1 2" in page.summary("txt2img"), what="the custom plan")
    page.find("#txt2img_generate").click()
    info = page.wait(lambda: "Hires Methods: ScaleCrafter" in page.find("#html_info_txt2img").text
                     and page.find("#html_info_txt2img").text, timeout=300, what="the generated image's infotext")
    assert "ScaleCrafter preset: Custom" in info and "ScaleCrafter dilation: DB1=2 DB2=3 UB1=2" in info, info
    assert "ScaleCrafter dilated steps: 1.0" in info and "Hires Methods version: 2" in info
    assert "Hires enabled" not in info and "Hires steps" not in info  # no hires fix, nothing of its
    page.screenshot("infotext", page.find("#html_info_txt2img"))
    # forget the settings, then paste the infotext back through the prompt box
    page.choose(page.ours("txt2img", "scalecrafter_preset"), "Auto")
    page.choose(page.ours("txt2img", "method"), "None")
    parameters = info.strip()
    prompt.clear()
    page.driver.execute_script(
        "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
        prompt, parameters)
    page.find("#tab_txt2img #paste").click()
    page.wait(lambda: page.value(page.ours("txt2img", "method")) == "ScaleCrafter", what="the method pasted")
    page.wait(lambda: page.value(page.ours("txt2img", "scalecrafter_preset")) == "Custom", what="the preset pasted")
    page.wait(lambda: page.value(page.ours("txt2img", "scalecrafter_dilation")) == "DB1=2 DB2=3 UB1=2",
              what="the dilation pasted")


def test_xyz_axes_are_unique_and_unmistakable(page: Page) -> None:
    page.choose(page.find("#script_list"), "X/Y/Z plot")
    try:
        options = page.options(page.find("#script_txt2img_xyz_plot_x_type"))
        ours = [label for label in options if "Hires Methods" in label]
        assert ours == [axis.label for axis in xyz_axes(GROUPS)], ours
        assert len(set(options)) == len(options)
        assert not [label for label in options if label.startswith("[Hires]")]
    finally:
        page.choose(page.find("#script_list"), "None")


def test_plan_follows_the_selected_checkpoint(page: Page) -> None:
    """With a second checkpoint installed, selecting it makes the plan follow (A1111 loads it in the
    background; Forge plans from its header until the first generation); skipped with only one. The
    checkpoint chosen is the first other one, or the first whose name contains `HIRES_UI_CHECKPOINT`
    (e.g. a small one, where a large SDXL checkpoint would not fit in memory next to the loaded one)."""
    import os

    menu = "#setting_sd_model_checkpoint, .model_selection"
    page.wait(lambda: page.all(menu), what="the checkpoint menu")
    options = page.options(menu)
    current = page.value(menu)
    wanted = os.environ.get("HIRES_UI_CHECKPOINT", "")
    other = next((option for option in options if option != current and wanted in option), None)
    if other is None:
        import pytest

        pytest.skip("only one checkpoint is installed")

    def planned_for() -> str:
        return str(page.ours("txt2img", "summary").find_element(page.by.CSS_SELECTOR, "[data-model]")
                   .get_attribute("data-model"))

    try:
        page.choose(menu, other)
        page.wait(lambda: planned_for() == other and "first pass" in page.summary("txt2img"), timeout=90,
                  what=f"the plan for {other}")
    finally:
        page.choose(menu, current)
        page.wait(lambda: planned_for() == current, timeout=90, what=f"the plan for {current} again")
