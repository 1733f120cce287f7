"""SDXL in a real WebUI (run with `HIRES_WEBUI_FAMILY=sdxl` and a random-weight full-width SDXL checkpoint
loaded; kept out of CI for memory and time): ScaleCrafter on SDXL's blocks, the tiled VAE, AP-LDM through
hires fix at small sizes (its stages conditioned on their own sizes)."""
from __future__ import annotations

from tests.webui.conftest import WebUI
from tests.webui.test_api import hires, ours, pixels

FAMILY = "sdxl"
SMALL = {"width": 256, "height": 256, "steps": 2}


def test_scalecrafter_on_sdxl_blocks(webui: WebUI) -> None:
    plain = webui.txt2img(**SMALL)
    dilated = webui.txt2img(**SMALL, **hires({"method": "scalecrafter", "scalecrafter_preset": "custom",
                                              "scalecrafter_dilation": "DB2=2 MB=2 UB0=2", "scalecrafter_tau": 1.0}))
    assert plain.status == dilated.status == 200 and dilated.image_hashes != plain.image_hashes
    keys = ours(dilated.infotexts[0])
    assert keys["ScaleCrafter dilation"] == "DB2=2 MB=2 UB0=2" and "Hires Methods warning" not in keys
    db3 = webui.txt2img(**SMALL, **hires({"method": "scalecrafter", "scalecrafter_preset": "custom",
                                          "scalecrafter_dilation": "DB3=2", "scalecrafter_tau": 1.0}))
    assert db3.status == 200 and "DB3" in ours(db3.infotexts[0])["Hires Methods warning"]


def test_tiled_vae_gives_the_untiled_image(webui: WebUI) -> None:
    plain = webui.txt2img(**SMALL)
    tiled = webui.txt2img(**SMALL, **hires({"method": "none", "tiled_vae_enabled": True,
                                            "tiled_vae_decoder_tile": 16}))
    assert plain.status == tiled.status == 200
    difference = abs(pixels(plain.body["images"][0]) - pixels(tiled.body["images"][0]))
    assert difference.max() <= 1, f"max 8-bit difference {difference.max()}"


def test_apldm_through_hires_fix(webui: WebUI) -> None:
    job = {**SMALL, "enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 5, "denoising_strength": 0.5,
           "hr_upscaler": "Latent", "hr_sampler_name": "Euler"}
    plain = webui.txt2img(**job)
    apldm = webui.txt2img(**job, **hires({"method": "apldm", "apldm_refine": "0.4"}))
    assert plain.status == apldm.status == 200
    assert pixels(apldm.body["images"][0]).shape == (512, 512, 3) and apldm.image_hashes != plain.image_hashes
    keys = ours(apldm.infotexts[0])
    assert keys["Hires Methods"] == "AP-LDM" and "Hires Methods warning" not in keys
