"""DemoFusion and AccDiffusion through a real WebUI's API (SD1.5 model, hires fix 256 -> 512 px with one
step per pass; direct 1024 px with one step per phase): infotext, paste back, X/Y/Z over the method,
AccDiffusion with its modules off equals DemoFusion, a prompt with AND, a timestep sampler refused."""
from __future__ import annotations

from tests.webui.conftest import Result, WebUI
from tests.webui.test_api import hires, ours, pixels, xyz_args

JOB = {"prompt": "a photo of a cat and a dog on the grass, (sunset:1.2)", "width": 256, "height": 256, "steps": 1,
       "enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 1, "denoising_strength": 0.5,
       "hr_upscaler": "Latent", "hr_sampler_name": "Euler"}


def image(result: Result, index: int = 0) -> bytes:
    """The decoded pixels (image hashes also cover the PNG's infotext, which names the method)."""
    return pixels(result.body["images"][index]).tobytes()


def test_hires_entry_infotext_and_paste(webui: WebUI) -> None:
    plain = webui.txt2img(**JOB)
    demo = webui.txt2img(**JOB, **hires({"method": "demofusion"}))
    acc = webui.txt2img(**JOB, **hires({"method": "accdiffusion"}))
    assert plain.status == demo.status == acc.status == 200
    assert pixels(acc.body["images"][0]).shape == (512, 512, 3)
    assert len({image(plain), image(demo), image(acc)}) == 3
    keys = ours(acc.infotexts[0])
    assert (keys["Hires Methods"], keys["AccDiffusion preset"], keys["AccDiffusion window stride"],
            keys["AccDiffusion window interaction"]) == ("AccDiffusion", "Official", "32", "Element")
    assert "Hires Methods warning" not in keys
    replay = webui.txt2img(**JOB, infotext=acc.infotexts[0], styles=[])
    assert replay.status == 200 and replay.image_hashes == acc.image_hashes


def test_accdiffusion_without_its_modules_is_demofusion(webui: WebUI) -> None:
    demo = webui.txt2img(**JOB, **hires({"method": "demofusion"}))
    off = webui.txt2img(**JOB, **hires({"method": "accdiffusion", "accdiffusion_patch_prompts": False,
                                        "accdiffusion_interaction": "off"}))
    assert demo.status == off.status == 200 and image(demo) == image(off)


def test_xyz_over_the_method(webui: WebUI) -> None:
    grid = webui.txt2img(**JOB, **xyz_args(webui, "[Hires Methods] Method", ["DemoFusion", "AccDiffusion"],
                                           choices=True), **hires({"method": "demofusion"}))
    assert grid.status == 200
    assert [ours(text)["Hires Methods"] for text in grid.infotexts[1:]] == ["DemoFusion", "AccDiffusion"]
    assert image(grid, 1) != image(grid, 2)


def test_and_prompt_and_timestep_sampler_are_said(webui: WebUI) -> None:
    anded = webui.txt2img(**{**JOB, "prompt": "a cat AND a dog"}, **hires({"method": "accdiffusion"}))
    assert anded.status == 200
    assert "patch prompts not used for a prompt with AND" in ours(anded.infotexts[0]).get("Hires Methods warning", "")
    ddim = webui.txt2img(**{**JOB, "sampler_name": "DDIM", "hr_sampler_name": "DDIM"},
                         **hires({"method": "demofusion"}))
    assert ddim.status == 200
    assert "DDIM" in ours(ddim.infotexts[0]).get("Hires Methods warning", "")


def test_direct_entry_runs_two_phases(webui: WebUI) -> None:
    job = {"prompt": JOB["prompt"], "width": 1024, "height": 1024, "steps": 1}
    result = webui.txt2img(**job, **hires({"method": "demofusion", "demofusion_view_batch": 4}))
    assert result.status == 200 and pixels(result.body["images"][0]).shape == (1024, 1024, 3)
    assert ours(result.infotexts[0])["DemoFusion view batch"] == "4"


def test_long_prompt_with_editing_and_emphasis(webui: WebUI) -> None:
    """Two 75-token chunks, prompt editing and emphasis: the patch prompts are token subsets of the prompt
    in effect at the last step."""
    prompt = "a [cat:dog:0.5] on the (grass:1.3)" + ", highly detailed fur and sharp focus" * 12
    result = webui.txt2img(**{**JOB, "prompt": prompt}, **hires({"method": "accdiffusion"}))
    assert result.status == 200
    assert "Hires Methods warning" not in ours(result.infotexts[0])



def test_interrupted_phase_leaves_the_model_untouched(webui: WebUI) -> None:
    baseline = webui.txt2img(steps=3)
    result = webui.interrupted_txt2img(20, **{**JOB, "hr_second_pass_steps": 20},
                                       **hires({"method": "accdiffusion"}))
    assert result.status == 200
    assert webui.txt2img(steps=3).image_hashes == baseline.image_hashes
