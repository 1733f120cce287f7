"""The extension through a real WebUI's API: dict and positional args, 422, infotext, X/Y/Z, hires, batch."""
from __future__ import annotations

from typing import Any

from lib_hires.params import GROUPS, is_ours, parse_infotext
from tests.webui.conftest import WebUI

# a setting that runs at 128 px (Auto leaves a 128 px SD1.5 job alone: it is below the native size; the
# deepest feature maps are 2 px wide there, so the factors stay on blocks with wider maps)
CUSTOM = {"scalecrafter_preset": "custom", "scalecrafter_dilation": "DB1=2 DB2=3 UB1=2", "scalecrafter_tau": 1.0}


def hires(*args: Any) -> dict[str, Any]:
    return {"alwayson_scripts": {"hires methods": {"args": list(args)}}}


def ours(infotext: str) -> dict[str, str]:
    """Our infotext entries (not the WebUI's own "Hires upscale" etc.), unquoted."""
    entries = parse_infotext(infotext.splitlines()[-1])
    return {key: value for key, value in entries.items() if is_ours(key, GROUPS)}


def test_script_info_has_readable_labels(webui: WebUI) -> None:
    info = next(s for s in webui.get("/sdapi/v1/script-info") if s["name"] == "hires methods")
    labels = [arg["label"] for arg in info["args"]]
    assert labels[:4] == ["Hires Methods", "Method", "Preset", "Apply to"]
    assert "Dilated steps" in labels and "Noise-damped CFG" in labels
    assert "Auto" in info["args"][2]["choices"] and "Custom" in info["args"][2]["choices"]


def test_disabled_is_untouched_and_dict_args_apply(webui: WebUI) -> None:
    plain = webui.txt2img()
    off = webui.txt2img(**hires({**CUSTOM, "enabled": False}))
    on = webui.txt2img(**hires(CUSTOM))
    assert plain.status == off.status == on.status == 200
    assert off.image_hashes == plain.image_hashes
    assert ours(off.infotexts[0]) == {}
    assert on.image_hashes != plain.image_hashes
    keys = ours(on.infotexts[0])
    assert keys["Hires Methods"] == "ScaleCrafter" and keys["ScaleCrafter dilation"] == "DB1=2 DB2=3 UB1=2"
    assert keys["Hires Methods version"] == "2" and "Hires enabled" not in keys


def test_positional_args_like_the_ui(webui: WebUI) -> None:
    info = next(s for s in webui.get("/sdapi/v1/script-info") if s["name"] == "hires methods")
    args = [arg["value"] for arg in info["args"]]
    labels = [arg["label"] for arg in info["args"]]
    args[0] = True
    args[labels.index("Preset")] = "Custom"
    args[labels.index("Dilation")] = CUSTOM["scalecrafter_dilation"]
    args[labels.index("Dilated steps")] = 1.0
    positional = webui.txt2img(**hires(*args))
    as_dict = webui.txt2img(**hires(CUSTOM))
    assert positional.status == 200 and positional.image_hashes == as_dict.image_hashes


def test_bad_dict_is_422_naming_the_field(webui: WebUI) -> None:
    bad = webui.txt2img(**hires({"scalecrafter_tau": 1.5, "scalecrafter_preset": "sd15_4096", "bogus": 1}))
    assert bad.status == 422
    problems = bad.body["errors"]
    assert set(problems) == {"scalecrafter_tau", "scalecrafter_preset", "bogus"}
    assert "from 0 to 1" in problems["scalecrafter_tau"] and "'auto'" in problems["scalecrafter_preset"]
    assert webui.txt2img(**hires({"version": 2})).status == 422


def test_infotext_round_trip_through_the_api(webui: WebUI) -> None:
    first = webui.txt2img(**hires({**CUSTOM, "scalecrafter_progressive": True}))
    # "styles" set explicitly: Forge f2.0.1's infotext path crashes on its own styles field otherwise
    replay = webui.txt2img(infotext=first.infotexts[0], styles=[])
    assert replay.status == 200
    assert ours(replay.infotexts[0]) == ours(first.infotexts[0])
    assert replay.image_hashes == first.image_hashes


def test_hires_pass_only_by_default(webui: WebUI) -> None:
    job = {"enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 2, "denoising_strength": 0.5,
           "hr_upscaler": "Latent"}
    plain = webui.txt2img(**job)
    on = webui.txt2img(**job, **hires(CUSTOM))
    first_only = webui.txt2img(**job, **hires({**CUSTOM, "scalecrafter_apply_to": "first"}))
    assert plain.status == on.status == first_only.status == 200
    assert on.image_hashes != plain.image_hashes and first_only.image_hashes != plain.image_hashes
    assert ours(on.infotexts[0])["ScaleCrafter setting"].startswith("hires pass")
    assert ours(first_only.infotexts[0])["ScaleCrafter setting"].startswith("first pass")


def test_batch_of_two(webui: WebUI) -> None:
    plain = webui.txt2img(batch_size=2)
    on = webui.txt2img(batch_size=2, **hires({**CUSTOM, "scalecrafter_ndcfg_dilation": "MB=2",
                                              "scalecrafter_ndcfg_tau": 0.5}))
    assert on.status == 200 and len(on.image_hashes) == 2
    assert on.image_hashes[0] != on.image_hashes[1]
    assert set(on.image_hashes).isdisjoint(plain.image_hashes)
    assert all(ours(text)["ScaleCrafter ND-CFG dilation"] == "MB=2" for text in on.infotexts)


def xyz_args(webui: WebUI, axis_label: str, values: list[str], choices: bool = False) -> dict[str, Any]:
    """X/Y/Z plot args with one X axis; axes with choices take their values from the dropdown slot."""
    info = next(s for s in webui.get("/sdapi/v1/script-info") if s["name"] == "x/y/z plot" and not s["is_img2img"])
    x_type = info["args"][0]["choices"].index(axis_label)
    text, dropdown = ("", values) if choices else (", ".join(values), [])
    return {"script_name": "x/y/z plot",
            "script_args": [x_type, text, dropdown, 0, "", [], 0, "", [], True, True, False, False, 0, 0, 0, 0, False]}


def test_xyz_over_a_scalecrafter_parameter(webui: WebUI) -> None:
    grid = webui.txt2img(**xyz_args(webui, "[Hires Methods] ScaleCrafter dilated steps", ["0.5", "1.0"]),
                         **hires(CUSTOM))
    assert grid.status == 200
    cells = grid.infotexts[1:]  # the grid image comes first
    assert [ours(text)["ScaleCrafter dilated steps"] for text in cells] == ["0.5", "1.0"]
    assert len(set(grid.image_hashes[1:])) == 2


def test_xyz_cell_that_disables_keeps_no_keys(webui: WebUI) -> None:
    grid = webui.txt2img(**xyz_args(webui, "[Hires Methods] Enabled", ["True", "False"], choices=True),
                         **hires(CUSTOM))
    assert grid.status == 200
    enabled, disabled = grid.infotexts[1:]
    assert ours(enabled)["Hires Methods"] == "ScaleCrafter"
    assert ours(disabled) == {}
    assert grid.image_hashes[2] == webui.txt2img().image_hashes[0]


def test_interrupted_job_leaves_the_model_untouched(webui: WebUI) -> None:
    import threading
    import time

    baseline = webui.txt2img(steps=3)
    job = threading.Thread(target=lambda: webui.txt2img(steps=12, **hires({**CUSTOM, "scalecrafter_ndcfg_dilation":
                                                                            "MB=2", "scalecrafter_ndcfg_tau": 1.0})))
    job.start()
    time.sleep(4)
    webui.post("/sdapi/v1/interrupt", {})
    job.join()
    assert webui.txt2img(steps=3).image_hashes == baseline.image_hashes


def pixels(image_b64: str) -> Any:
    import base64
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(image_b64))).convert("RGB"), dtype=np.int16)


TILED = {"method": "none", "tiled_vae_enabled": True, "tiled_vae_decoder_tile": 16, "tiled_vae_encoder_tile": 128}


def test_tiled_vae_gives_the_untiled_image(webui: WebUI) -> None:
    """Hires jobs 128 -> 256 px: 2x2 decoder tiles for the final decode, and with a non-latent upscaler
    2x2 encoder tiles for the upscaled first pass too. Same 8-bit image up to one step."""
    for upscaler in ("Latent", "Lanczos"):
        job = {"enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 2, "denoising_strength": 0.5,
               "hr_upscaler": upscaler}
        plain = webui.txt2img(**job)
        tiled = webui.txt2img(**job, **hires(TILED))
        assert plain.status == tiled.status == 200
        difference = abs(pixels(plain.body["images"][0]) - pixels(tiled.body["images"][0]))
        assert difference.max() <= 1, f"{upscaler}: max 8-bit difference {difference.max()}"
        keys = ours(tiled.infotexts[0])
        assert keys["Hires Methods"] == "None" and "ScaleCrafter dilation" not in keys
        assert keys["Tiled VAE"] == "True" and keys["Tiled VAE decoder tile"] == "16"


def test_tiled_vae_in_img2img(webui: WebUI) -> None:
    """img2img 256 px: the init image's encode and the final decode tiled 2x2; same 8-bit image."""
    init = webui.txt2img(width=256, height=256).body["images"][0]
    job = {"init_images": [init], "prompt": "a photo of a cat", "negative_prompt": "blurry", "steps": 2,
           "width": 256, "height": 256, "seed": 1, "cfg_scale": 7, "sampler_name": "Euler",
           "denoising_strength": 0.5}
    plain = webui.post("/sdapi/v1/img2img", job)
    tiled = webui.post("/sdapi/v1/img2img", {**job, **hires(TILED)})
    assert plain.status == tiled.status == 200
    assert abs(pixels(plain.body["images"][0]) - pixels(tiled.body["images"][0])).max() <= 1
    assert ours(tiled.infotexts[0])["Tiled VAE"] == "True"


# An infotext written before version 2 (the ScaleCrafter trial of the stop that shipped issue 3), with the
# size cut down to a quick job: its settings are read back, and written as version 2.
V1 = ("a lighthouse on a cliff, stormy sea\nNegative prompt: blurry\nSteps: 2, Sampler: Euler, Schedule type: "
      "Automatic, CFG scale: 7, Seed: 7, Size: 128x128, Hires version: 1, Hires enabled: True, Hires method: "
      "scalecrafter, Hires ScaleCrafter preset: custom, Hires ScaleCrafter apply to: auto, Hires ScaleCrafter "
      "dilation: DB1=2 DB2=3 UB1=2, Hires ScaleCrafter tau: 0.6, Hires ScaleCrafter progressive: False, Hires "
      "ScaleCrafter ndcfg: True, Hires ScaleCrafter ndcfg dilation: \"\", Hires ScaleCrafter ndcfg tau: 0.0, Hires "
      "ScaleCrafter disperse: False, Hires ScaleCrafter disperse blocks: \"\", Hires ScaleCrafter setting: "
      "\"first pass: Custom\"")


def test_version_1_infotext_pasted_back_gives_the_same_settings(webui: WebUI) -> None:
    # the request's own prompt and seed (the test defaults) take precedence over the infotext's
    pasted = webui.txt2img(infotext=V1, styles=[])
    same = webui.txt2img(**hires({"scalecrafter_preset": "custom", "scalecrafter_dilation": "DB1=2 DB2=3 UB1=2",
                                  "scalecrafter_tau": 0.6}))
    assert pasted.status == same.status == 200
    keys = ours(pasted.infotexts[0])
    assert keys == ours(same.infotexts[0])
    assert (keys["ScaleCrafter preset"], keys["ScaleCrafter dilated steps"]) == ("Custom", "0.6")
    assert pasted.image_hashes == same.image_hashes
