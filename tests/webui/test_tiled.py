"""FSTD and MultiDiffusion through a real WebUI's API: the hires pass, img2img upscaling, the infotext
pasted back, X/Y/Z over the method, an interrupted tiled job (jobs of 256 -> 512 px, tiles of 32 latent
px, so there are several tiles)."""
from __future__ import annotations

from tests.webui.conftest import WebUI
from tests.webui.test_api import hires, ours, pixels, xyz_args

JOB = {"width": 256, "height": 256, "enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 2,
       "denoising_strength": 0.5, "hr_upscaler": "Latent", "hr_sampler_name": "Euler"}
FSTD = {"method": "fstd", "fstd_tile_size": 32}
MULTI = {"method": "multidiffusion", "multidiffusion_tile_size": 32}


def test_tiled_methods_refine_the_hires_pass(webui: WebUI) -> None:
    plain = webui.txt2img(**JOB)
    fstd = webui.txt2img(**JOB, **hires(FSTD))
    multi = webui.txt2img(**JOB, **hires(MULTI))
    assert plain.status == fstd.status == multi.status == 200
    assert len({plain.image_hashes[0], fstd.image_hashes[0], multi.image_hashes[0]}) == 3
    keys = ours(fstd.infotexts[0])
    assert (keys["Hires Methods"], keys["FSTD tile size"], keys["FSTD offset range"], keys["FSTD apply to"]) == (
        "FSTD", "32", "16", "Auto")
    keys = ours(multi.infotexts[0])
    assert (keys["Hires Methods"], keys["MultiDiffusion overlap"], keys["MultiDiffusion blending"]) == (
        "MultiDiffusion", "16", "Uniform")
    assert "Hires Methods warning" not in keys


def test_fstd_upscales_an_image_in_img2img(webui: WebUI) -> None:
    """A 256 px image upscaled to 512 px: the WebUI resizes, FSTD refines tile by tile, the tiled VAE
    encodes and decodes."""
    init = webui.txt2img().body["images"][0]
    job = {"init_images": [init], "prompt": "a photo of a cat", "negative_prompt": "blurry", "steps": 4,
           "width": 512, "height": 512, "seed": 1, "cfg_scale": 7, "sampler_name": "Euler",
           "denoising_strength": 0.4}
    plain = webui.post("/sdapi/v1/img2img", job)
    tiled = webui.post("/sdapi/v1/img2img", {**job, **hires({**FSTD, "tiled_vae_enabled": True,
                                                             "tiled_vae_decoder_tile": 32})})
    assert plain.status == tiled.status == 200
    assert pixels(tiled.body["images"][0]).shape == (512, 512, 3)
    assert tiled.image_hashes != plain.image_hashes
    keys = ours(tiled.infotexts[0])
    assert keys["Hires Methods"] == "FSTD" and keys["Tiled VAE"] == "True"


def test_tiled_infotext_pasted_back_reproduces_the_image(webui: WebUI) -> None:
    first = webui.txt2img(**JOB, **hires({**FSTD, "fstd_reset_period": 2}))
    # the request's own fields win over the infotext's (the test defaults include a 128 px size): send the
    # job's, and take the extension's settings from the infotext alone
    replay = webui.txt2img(**JOB, infotext=first.infotexts[0], styles=[])
    assert replay.status == 200
    assert ours(replay.infotexts[0]) == ours(first.infotexts[0])
    assert replay.image_hashes == first.image_hashes


def test_xyz_over_the_method(webui: WebUI) -> None:
    grid = webui.txt2img(**JOB, **xyz_args(webui, "[Hires Methods] Method", ["None", "FSTD", "MultiDiffusion"],
                                           choices=True), **hires({"fstd_tile_size": 32, "multidiffusion_tile_size": 32}))
    assert grid.status == 200
    cells = grid.infotexts[1:]
    assert [ours(text).get("Hires Methods") for text in cells] == [None, "FSTD", "MultiDiffusion"]
    assert len(set(grid.image_hashes[1:])) == 3


def test_interrupted_tiled_job_leaves_the_model_untouched(webui: WebUI) -> None:
    baseline = webui.txt2img(steps=3)
    result = webui.interrupted_txt2img(12, **{**JOB, "hr_second_pass_steps": 8}, **hires(FSTD))
    assert result.status == 200
    assert webui.txt2img(steps=3).image_hashes == baseline.image_hashes
