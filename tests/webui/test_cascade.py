"""AP-LDM through a real WebUI's API: both entries (direct: 576 px on an SD1.5 model, base 512 px; hires
fix: 256 -> 512 px), the infotext pasted back, progress over the stages, sizes it cannot serve, a
sampler it cannot use, and an interrupted cascade (tiny step counts: a few minutes on a CPU host)."""
from __future__ import annotations

import threading
import time

from tests.webui.conftest import WebUI
from tests.webui.test_api import hires, ours, pixels, xyz_args

APLDM = {"method": "apldm"}
DIRECT = {"width": 576, "height": 576, "steps": 3}
HIRES = {"width": 256, "height": 256, "steps": 2, "enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 5,
         "denoising_strength": 0.5, "hr_upscaler": "Latent", "hr_sampler_name": "Euler"}


def test_direct_entry_runs_base_and_refinement(webui: WebUI) -> None:
    plain = webui.txt2img(**DIRECT)
    result = webui.txt2img(**DIRECT, **hires(APLDM))
    assert plain.status == result.status == 200
    assert pixels(result.body["images"][0]).shape == (576, 576, 3)
    assert (pixels(result.body["images"][0]) != pixels(plain.body["images"][0])).any(), "the cascade ran"
    keys = ours(result.infotexts[0])
    assert (keys["Hires Methods"], keys["AP-LDM preset"], keys["AP-LDM guidance scale"],
            keys["AP-LDM refinement strengths"]) == ("AP-LDM", "Paper", "0.004", "0.2")
    assert "Hires Methods warning" not in keys


def test_hires_entry_and_paste(webui: WebUI) -> None:
    plain = webui.txt2img(**HIRES)
    first = webui.txt2img(**HIRES, **hires({**APLDM, "apldm_refine": "0.4 0.4"}))
    assert plain.status == first.status == 200
    assert pixels(first.body["images"][0]).shape == (512, 512, 3)
    assert first.image_hashes != plain.image_hashes
    assert ours(first.infotexts[0])["AP-LDM refinement strengths"] == "0.4 0.4"
    replay = webui.txt2img(**HIRES, infotext=first.infotexts[0], styles=[])
    assert replay.status == 200 and replay.image_hashes == first.image_hashes


def test_batches_get_their_own_seeds(webui: WebUI) -> None:
    job = {**HIRES, "width": 128, "height": 128, "batch_size": 2, "n_iter": 2}
    result = webui.txt2img(**job, **hires({**APLDM, "apldm_refine": "0.5"}))
    assert result.status == 200
    images = result.body["images"][-4:]  # after the grid, where the WebUI returns one
    assert len(result.body["images"]) in (4, 5) and all(pixels(image).shape == (256, 256, 3) for image in images)
    assert len({pixels(image).tobytes() for image in images}) == 4
    seeds = [int(text.split("Seed: ")[1].split(",")[0]) for text in result.infotexts[-4:]]
    assert seeds == [1, 2, 3, 4]


def test_xyz_over_the_guidance_scale(webui: WebUI) -> None:
    job = {**HIRES, "width": 128, "height": 128}
    grid = webui.txt2img(**job, **xyz_args(webui, "[Hires Methods] AP-LDM guidance scale", ["0", "0.05"]),
                         **hires({**APLDM, "apldm_refine": "0.5"}))
    assert grid.status == 200
    cells = grid.infotexts[1:]  # the grid image comes first
    assert [ours(text)["AP-LDM guidance scale"] for text in cells] == ["0.0", "0.05"]
    assert len({pixels(image).tobytes() for image in grid.body["images"][1:]}) == 2


def test_progress_rises_over_all_stages(webui: WebUI) -> None:
    seen: list[float] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            seen.append(float(webui.get("/sdapi/v1/progress?skip_current_image=true")["progress"]))
            time.sleep(0.5)

    watcher = threading.Thread(target=poll)
    watcher.start()
    try:
        result = webui.txt2img(**{**HIRES, "hr_second_pass_steps": 10}, **hires({**APLDM, "apldm_refine": "0.5 0.5"}))
    finally:
        done.set()
        watcher.join()
    assert result.status == 200
    active = [value for value in seen if value > 0]
    assert len(active) >= 3 and max(active) > 0.6
    assert all(b >= a for a, b in zip(active, active[1:])), active


def test_sizes_and_samplers_it_cannot_serve_run_unmodified_with_a_warning(webui: WebUI) -> None:
    plain = webui.txt2img()
    small = webui.txt2img(**hires(APLDM))
    assert small.status == 200  # the same pixels (the PNG's infotext differs by the warning)
    assert (pixels(small.body["images"][0]) == pixels(plain.body["images"][0])).all()
    warning = ours(small.infotexts[0])["Hires Methods warning"]
    assert "Width and Height 128x128 must have more pixels than the model's native 512x512" in warning
    ddim = webui.txt2img(**{**DIRECT, "sampler_name": "DDIM"}, **hires(APLDM))
    assert ddim.status == 200 and pixels(ddim.body["images"][0]).shape == (576, 576, 3)
    assert "needs a k-diffusion sampler" in ours(ddim.infotexts[0])["Hires Methods warning"]


def test_interrupted_cascade_leaves_the_model_untouched(webui: WebUI) -> None:
    baseline = webui.txt2img(steps=3)
    result = webui.interrupted_txt2img(15, **{**HIRES, "hr_second_pass_steps": 20},
                                       **hires({**APLDM, "apldm_refine": "0.9 0.9"}))
    assert result.status == 200
    assert webui.txt2img(steps=3).image_hashes == baseline.image_hashes
