"""FSTD and MultiDiffusion end to end on the test host (real LDM UNet, SD1 and SDXL block layouts)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pytest
import torch

from lib_hires.job import PassSize, plan_job
from lib_hires.ops.conditioning import CROP_SLICE, embed_numbers
from lib_hires.ops.windows import Window, offset_grid
from lib_hires.params import GROUPS, Settings, validate_api_dict
from lib_hires.patching import PatchScope
from lib_hires.sampling.driver import Stage, run_stages
from lib_hires.sampling.hooks import FixedHooks
from lib_hires.sampling.hooks import ModelCall, PassHooks, Rows
from lib_hires.sampling.steps import Step
from lib_hires.sampling.tiled import TiledEvaluation, TiledPlan
from tests.host.host import Job, Models, TestHost
from tests.host.state import module_state
from tests.pipeline.test_sampling_core import CountCalls

TILED = ("fstd", "multidiffusion")


def settings(method: str, **data: object) -> Settings:
    return validate_api_dict(GROUPS, {"enabled": True, "method": method, **data})


def job_plan(host: TestHost, job_settings: Settings) -> Any:
    size = PassSize("first", host.job.width, host.job.height, host.job.steps)
    return plan_job(job_settings, host.unet, host.native_size, size, None, seed=host.job.seed)


def run_job(host: TestHost, job_settings: Settings, spy: Callable[[Step, Sequence[Window]], None] | None = None,
            extra: PassHooks = PassHooks()) -> torch.Tensor:
    """What the WebUI glue does for a first-pass job; `spy` sees the windows of every model call."""
    plan = job_plan(host, job_settings)
    with PatchScope() as scope:
        hooks = PassHooks()
        if "first" in plan.passes:
            tiled: TiledPlan = plan.passes["first"]
            if spy is not None:
                def windows_for(step: Step, latent: tuple[int, int], inner: Any = tiled.windows_for) -> Any:
                    windows = inner(step, latent)
                    spy(step, windows)
                    return windows
                tiled = replace(tiled, windows_for=windows_for)
            hooks = tiled.install(host.unet, scope, lambda text: None)
        hooks = PassHooks(hooks.step_hooks + extra.step_hooks, extra.call_hooks + hooks.call_hooks)
        size = (host.job.height // 8, host.job.width // 8)
        return run_stages(host, [Stage(size, host.job.steps, plan=FixedHooks(hooks))])


@pytest.mark.parametrize("method", TILED)
@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "DPM++ 2M", "DPM++ 2M SDE"])
def test_one_tile_over_the_whole_latent_is_the_plain_pass(models: Models, method: str, sampler: str) -> None:
    host = TestHost(models, Job(sampler=sampler, steps=4, width=128, height=128))
    plain = run_stages(host, [Stage((16, 16), 4)])
    tiled = run_job(host, settings(method, **{f"{method}_tile_size": 16, f"{method}_apply_to": "first"}))
    assert (tiled - plain).abs().max().item() <= 1e-6


def test_fstd_evaluates_each_tile_once_per_step(sd1: Models) -> None:
    """ceil(H/T) * ceil(W/T) tiles per step, in batches of tile_batch, cond and uncond rows together."""
    host = TestHost(sd1, Job(steps=4, width=256, height=384))  # latent 48 x 32, tiles of 16: 3 x 2
    with CountCalls(sd1.unet) as calls:
        run_job(host, settings("fstd", fstd_tile_size=16, fstd_tile_batch=4))
    assert calls.batches == [4 * 2, 2 * 2] * 4  # 6 tiles x 2 rows: a batch of 4 tiles, then 2
    seen: list[Sequence[Window]] = []
    with CountCalls(sd1.unet) as calls:
        run_job(host, settings("fstd", fstd_tile_size=16, fstd_tile_batch=1), spy=lambda step, w: seen.append(w))
    assert calls.batches == [2] * (6 * 4) and all(len(windows) == 6 for windows in seen)


def test_multidiffusion_evaluates_every_window(sd1: Models) -> None:
    host = TestHost(sd1, Job(steps=3, width=128, height=256))  # latent 32 x 16; tiles 16, overlap 8: 3 x 1
    with CountCalls(sd1.unet) as calls:
        run_job(host, settings("multidiffusion", multidiffusion_tile_size=16, multidiffusion_overlap=8,
                               multidiffusion_tile_batch=2))
    assert calls.batches == [2 * 2, 1 * 2] * 3


def test_fstd_offsets_are_seeded_per_step_and_reset(sd1: Models) -> None:
    def offsets(seed: int, period: int) -> list[tuple[int, int]]:
        host = TestHost(sd1, Job(steps=8, width=256, height=256, seed=seed))
        plan = job_plan(host, settings("fstd", fstd_tile_size=16, fstd_reset_period=period))
        grids = [plan.passes["first"].windows_for(Step(k, 8), (32, 32)) for k in range(8)]
        return [(grid[0].top, grid[0].left) for grid in grids]

    first = offsets(seed=3, period=4)
    assert first == offsets(seed=3, period=4) and first != offsets(seed=4, period=4)
    assert first[0] == first[4] == (0, 0) and any(o != (0, 0) for o in first)
    assert all(0 <= o < 8 for pair in first for o in pair)  # offset range: half a tile


def test_uncovered_strip_takes_the_previous_steps_prediction() -> None:
    """Hand-checked on a 4x4 latent with 2x2 tiles: step 1's grid is shifted by (1, 1), so row 0 and
    column 0 get D = x - sigma * eps_prev, eps_prev = (x0 - D0) / sigma0 from step 0; the second call of
    step 1 (a second-order sampler's) uses step 0's eps too."""
    grids = {0: offset_grid(4, 4, 2, (0, 0)), 1: offset_grid(4, 4, 2, (1, 1))}
    evaluation = TiledEvaluation(lambda step, latent: grids[step.index], "uniform", tile_batch=3)
    rows = Rows((0,), (False,))

    def call(x: torch.Tensor, sigma: float, step: int) -> torch.Tensor:
        model_call = ModelCall(x, torch.tensor([sigma]), torch.zeros(1, 2, 3), rows, Step(step, 2),
                               take_cond=lambda c, idx: c[list(idx)])
        return evaluation(model_call, lambda c: c.x * 0.5 + 1.0)

    gen = torch.Generator().manual_seed(0)
    x0, x1, x1b = (torch.randn(1, 1, 4, 4, generator=gen) for _ in range(3))
    d0 = call(x0, 2.0, 0)
    assert torch.equal(d0, x0 * 0.5 + 1.0)  # step 0 is unshifted: every pixel covered once
    eps0 = (x0 - d0) / 2.0
    strip = torch.zeros(4, 4, dtype=torch.bool)
    strip[0, :] = strip[:, 0] = True
    for x in (x1, x1b):
        d1 = call(x, 1.0, 1)
        assert torch.equal(d1[..., strip], (x - 1.0 * eps0)[..., strip])
        assert torch.allclose(d1[..., ~strip], (x * 0.5 + 1.0)[..., ~strip], atol=1e-7)
    assert evaluation.evaluations == 4 + 4 + 4


def test_second_order_sampler_uses_one_grid_per_noise_level(sd1: Models) -> None:
    """Heun evaluates each step's end point, where the next step starts: the offset belongs to the noise
    level's step, so both calls at one noise level see the same grid."""
    host = TestHost(sd1, Job(steps=6, width=256, height=256, sampler="Heun", seed=5))
    seen: list[tuple[int, tuple[int, int]]] = []
    run_job(host, settings("fstd", fstd_tile_size=16, fstd_reset_period=3),
            spy=lambda step, windows: seen.append((step.index, (windows[0].top, windows[0].left))))
    assert len(seen) == 6 + 5  # one call per step, and a second one at the next level but after the last step
    by_step: dict[int, set[tuple[int, int]]] = {}
    for index, offset in seen:
        by_step.setdefault(index, set()).add(offset)
    assert all(len(offsets) == 1 for offsets in by_step.values())
    assert by_step[0] == by_step[3] == {(0, 0)}


def test_sdxl_tiles_get_their_crop_coordinates(sdxl: Models) -> None:
    host = TestHost(sdxl, Job(steps=1, width=256, height=256))  # latent 32: 2 x 2 tiles of 16
    vectors: list[torch.Tensor] = []
    handle = sdxl.unet.register_forward_pre_hook(lambda _m, args, kwargs: vectors.append(kwargs["y"]),
                                                 with_kwargs=True)
    try:
        run_job(host, settings("fstd", fstd_tile_size=16))
    finally:
        handle.remove()
    (vector,) = vectors  # one call: 4 tiles x (cond, uncond)
    crops = [(0, 0), (0, 128), (128, 0), (128, 128)]  # the tiles' top-left corners in image pixels
    for k, (top, left) in enumerate(crops):
        for row in (2 * k, 2 * k + 1):
            assert torch.allclose(vector[row, CROP_SLICE], embed_numbers([top, left]), atol=1e-6)
    for rows, cond in ((slice(0, None, 2), host.cond), (slice(1, None, 2), host.uncond)):  # cond, uncond per tile
        assert torch.equal(vector[rows, :CROP_SLICE.start], cond["vector"][:1, :CROP_SLICE.start].expand(4, -1))


@pytest.mark.parametrize("method", TILED)
def test_same_seed_same_image_and_restore_after_an_exception(models: Models, method: str) -> None:
    job = Job(steps=3, width=256, height=128, batch_size=2, sampler="Euler a")  # latent 16 x 32: 2 or 3 tiles
    tiled = settings(method, **{f"{method}_tile_size": 16})
    first = run_job(TestHost(models, job), tiled)
    assert torch.equal(first, run_job(TestHost(models, job), tiled))
    plain = run_stages(TestHost(models, job), [Stage((16, 32), 3)])
    assert not torch.allclose(first, plain)

    before = module_state(models.unet)

    def fail_at_step_2(call: ModelCall, call_next: Any) -> torch.Tensor:
        if call.step.index == 2:
            raise KeyboardInterrupt
        return call_next(call)

    host = TestHost(models, job)
    with pytest.raises(KeyboardInterrupt):
        run_job(host, tiled, extra=PassHooks(call_hooks=(fail_at_step_2,)))
    assert module_state(models.unet) == before and host.slot.current is None
    assert torch.equal(run_stages(host, [Stage((16, 32), 3)]), plain)


def test_disabled_is_bit_identical(sd1: Models) -> None:
    host = TestHost(sd1, Job(steps=3, width=256, height=128))
    plain = run_stages(host, [Stage((16, 32), 3)])
    for off in (settings("fstd", enabled=False), settings("none")):
        assert torch.equal(run_job(host, off), plain)
