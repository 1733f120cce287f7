"""FreeScale through a real WebUI's API (SD1.5 model; hires fix 256 -> 512 px with 1 + 3 steps, direct
1024 px): infotext and paste back, the region mask (given as an image, noted but never written), a bad
mask refused naming the field, X/Y/Z over a FreeScale field, a timestep sampler refused, the model
untouched after an interrupt."""
from __future__ import annotations

import base64
import io

from tests.webui.conftest import Result, WebUI
from tests.webui.test_api import hires, ours, pixels, xyz_args

JOB = {"prompt": "a photo of a cat and a dog on the grass", "width": 256, "height": 256, "steps": 1,
       "enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 3, "denoising_strength": 0.5,
       "hr_upscaler": "Latent", "hr_sampler_name": "Euler"}


def image(result: Result, index: int = 0) -> bytes:
    """The decoded pixels (image hashes also cover the PNG's infotext, which names the method)."""
    return pixels(result.body["images"][index]).tobytes()


def mask_png() -> str:
    """A 64x64 mask, white on the left half."""
    from PIL import Image

    mask = Image.new("L", (64, 64))
    mask.paste(255, (0, 0, 32, 64))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_hires_entry_infotext_and_paste(webui: WebUI) -> None:
    plain = webui.txt2img(**JOB)
    fs = webui.txt2img(**JOB, **hires({"method": "freescale"}))
    assert plain.status == fs.status == 200 and pixels(fs.body["images"][0]).shape == (512, 512, 3)
    assert image(plain) != image(fs)
    keys = ours(fs.infotexts[0])
    assert (keys["Hires Methods"], keys["FreeScale preset"], keys["FreeScale detail control"],
            keys["FreeScale fusion low-pass"]) == ("FreeScale", "Official", "2.0", "Space and channels")
    assert "Hires Methods warning" not in keys and "FreeScale region mask" not in keys
    replay = webui.txt2img(**JOB, infotext=fs.infotexts[0], styles=[])
    assert replay.status == 200 and image(replay) == image(fs)


def test_region_mask_is_used_and_noted(webui: WebUI) -> None:
    fs = webui.txt2img(**JOB, **hires({"method": "freescale", "freescale_detail": 3.0}))
    masked = webui.txt2img(**JOB, **hires({"method": "freescale", "freescale_detail": 3.0,
                                           "freescale_mask": "data:image/png;base64," + mask_png()}))
    assert fs.status == masked.status == 200 and image(fs) != image(masked)
    keys = ours(masked.infotexts[0])
    assert keys["FreeScale region mask"].startswith("sha256 ") and keys["FreeScale background detail"] == "0.5"
    bad = webui.txt2img(**JOB, **hires({"method": "freescale", "freescale_mask": "aGVsbG8="}))
    assert bad.status == 422 and "not an image" in bad.body["errors"]["freescale_mask"]


def test_xyz_over_detail_control(webui: WebUI) -> None:
    grid = webui.txt2img(**JOB, **xyz_args(webui, "[Hires Methods] FreeScale detail control", ["1", "3"]),
                         **hires({"method": "freescale"}))
    assert grid.status == 200
    assert [ours(text)["FreeScale detail control"] for text in grid.infotexts[1:]] == ["1.0", "3.0"]
    assert image(grid, 1) != image(grid, 2)


def test_direct_entry_runs_two_stages(webui: WebUI) -> None:
    result = webui.txt2img(prompt=JOB["prompt"], width=1024, height=1024, steps=2, **hires({"method": "freescale"}))
    assert result.status == 200 and pixels(result.body["images"][0]).shape == (1024, 1024, 3)
    assert ours(result.infotexts[0])["Hires Methods"] == "FreeScale"


def test_timestep_sampler_is_refused_with_a_warning(webui: WebUI) -> None:
    ddim = webui.txt2img(**{**JOB, "sampler_name": "DDIM", "hr_sampler_name": "DDIM"}, **hires({"method": "freescale"}))
    assert ddim.status == 200
    assert "DDIM" in ours(ddim.infotexts[0]).get("Hires Methods warning", "")


def test_interrupted_stage_leaves_the_model_untouched(webui: WebUI) -> None:
    baseline = webui.txt2img(steps=3)
    result = webui.interrupted_txt2img(20, **{**JOB, "hr_second_pass_steps": 20}, **hires({"method": "freescale"}))
    assert result.status == 200
    assert webui.txt2img(steps=3).image_hashes == baseline.image_hashes
