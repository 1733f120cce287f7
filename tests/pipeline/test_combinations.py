"""Combinations on the test host (`methods.combine`): the attentive base pass in front of DemoFusion,
AccDiffusion, FreeScale, FSTD and MultiDiffusion in both entries, ScaleCrafter in AP-LDM's and FreeScale's
stages. Each plans the expected stages, hooks and UNet calls; with its own part neutralised (guidance scale
0, dilation factor 1) it gives the plain method's output bit-identical; the UNet is restored after errors."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from lib_hires.job import JobPlan, PassSize
from lib_hires.methods.base import CascadePlan, JobContext
from lib_hires.methods.combine import Joined, JoinedStage, stage_dilation
from lib_hires.methods.scalecrafter import bind, resolve
from lib_hires.params import ScaleCrafterParams, StageDilationParams
from lib_hires.patching import PatchScope
from lib_hires.sampling.hooks import PassHooks
from lib_hires.sampling.steps import Step, steps_for_fraction
from lib_hires.sampling.tiled import TiledPlan
from lib_hires.unet import ModelFamily, map_unet
from tests.host.host import Job, Models, TestHost
from tests.host.state import module_state
from tests.pipeline.test_cascade import run_direct, run_hires
from tests.pipeline.test_demofusion import NATIVE, Boom, plan
from tests.pipeline.test_freescale import Recorder
from tests.pipeline.test_sampling_core import CountCalls

DIRECT = Job(width=256, height=256, steps=4)  # native 128: base 128x128 (latent 16), target latent 32
FIRST = Job(width=128, height=128, steps=4)
HIRES = PassSize("hires", 256, 256, 4)
OFF = {"attentive_base_preset": "custom", "attentive_base_gamma": 0.0}  # the combination's part neutralised
ON = {"attentive_base_enabled": True}


def host_for(models: Models, job: Job) -> TestHost:
    return TestHost(models, job, native_size=NATIVE)


def run_first_pass(host: TestHost, job_plan: JobPlan) -> torch.Tensor:
    """The hires-fix entry's first pass with its hooks (what the glue samples before the hires pass)."""
    noise = host.noise((host.batch_size, 4, host.job.height // 8, host.job.width // 8), 0)
    sigmas = host.sigmas(host.job.steps)
    with PatchScope() as scope:
        hooks = job_plan.install("first", host.unet, scope, lambda text: None) if "first" in job_plan.passes \
            else PassHooks()
        return host.sample(noise * sigmas[0], sigmas, hooks, 0)


@pytest.mark.parametrize("method", ["demofusion", "accdiffusion", "freescale"])
def test_attentive_base_guides_the_first_stage_of_a_cascade(sd1: Models, method: str) -> None:
    host = host_for(sd1, DIRECT)
    plain, combined = plan(host, method), plan(host, method, **ON)
    assert combined.lines[:len(plain.lines)] == plain.lines
    assert combined.lines[len(plain.lines):] == (
        "Attentive base, base 128x128 of the first pass: attentive guidance 0.004 after steps 1-4 of 4, cosine decay 3",)
    assert combined.infotext["Attentive base"] == "True" and combined.infotext["Attentive base guidance scale"] == "0.004"
    mine, theirs = combined.cascade("first"), plain.cascade("first")
    assert mine is not None and theirs is not None
    assert [(s.size, s.steps, s.start) for s in mine.stages] == [(s.size, s.steps, s.start) for s in theirs.stages]
    with CountCalls(sd1.unet) as plain_calls:
        expected = run_direct(host_for(sd1, DIRECT), plain)
    with CountCalls(sd1.unet) as calls:
        guided = run_direct(host_for(sd1, DIRECT), combined)
    assert calls.batches == plain_calls.batches  # guidance runs on the latent, with no UNet call
    assert not torch.equal(guided, expected)
    assert torch.equal(run_direct(host_for(sd1, DIRECT), plan(host, method, **ON, **OFF)), expected)


@pytest.mark.parametrize("method", ["demofusion", "accdiffusion", "freescale", "fstd", "multidiffusion"])
def test_attentive_base_guides_the_first_pass_before_the_hires_pass(sd1: Models, method: str) -> None:
    host = host_for(sd1, FIRST)
    plain, combined = plan(host, method, HIRES), plan(host, method, HIRES, **ON)
    assert combined.lines[-1] == ("Attentive base, first pass 128x128: attentive guidance 0.004 after steps 1-4 of 4, "
                                  "cosine decay 3")
    assert type(combined.passes["hires"]) is type(plain.passes["hires"])
    if method == "accdiffusion":  # its first pass records cross-attention: both run
        assert isinstance(combined.passes["first"], Joined) and len(combined.passes["first"].parts) == 2
    plain_first = run_first_pass(host_for(sd1, FIRST), plain)
    assert not torch.equal(run_first_pass(host_for(sd1, FIRST), combined), plain_first)
    neutral = plan(host, method, HIRES, **ON, **OFF)
    assert torch.equal(run_first_pass(host_for(sd1, FIRST), neutral), plain_first)
    if method in ("demofusion", "accdiffusion", "freescale"):
        with CountCalls(sd1.unet) as plain_calls:
            expected = run_hires(host_for(sd1, FIRST), plain)
        with CountCalls(sd1.unet) as calls:
            out = run_hires(host_for(sd1, FIRST), neutral)
        assert torch.equal(out, expected) and calls.batches == plain_calls.batches


@pytest.mark.parametrize("method", ["multidiffusion", "fstd"])
def test_attentive_base_before_a_tiled_pass_without_hires_fix(sd1: Models, method: str) -> None:
    """The target pass becomes a cascade: the guided base at the native pixel count (latent 16, 10 steps),
    upscaled in pixel space, then the tiled pass from int(10 x (1 - 0.4)) = 6: 4 steps, each evaluating the
    method's own tiles of that step (MultiDiffusion: 3x3 windows of 16 every 8; FSTD: its shifted grid) by 4,
    two rows (CFG) per tile."""
    job = Job(width=256, height=256, steps=10)
    host = host_for(sd1, job)
    combined = plan(host, method, **ON)
    assert combined.lines[-1] == (
        "Attentive base, first pass 256x256: base 128x128 with attentive guidance 0.004 after steps 2-10 of 10, "
        "cosine decay 3, upscaled in pixel space, then the tiled pass from step 7 of 10 (strength 0.4)")
    cascade = combined.cascade("first")
    assert cascade is not None and cascade.from_noise
    assert [(s.size, s.steps, s.start, s.upscale) for s in cascade.stages] == [((16, 16), 10, 0, "latent"),
                                                                               ((32, 32), 10, 6, "rgb")]
    assert isinstance(cascade.stages[1].plan, TiledPlan)
    with CountCalls(sd1.unet) as calls:
        out = run_direct(host, combined)
    assert out.shape == (1, 4, 32, 32) and host.stage_steps == [10, 4]
    tiles = [len(cascade.stages[1].plan.windows_for(Step(index, 4), (32, 32))) for index in range(4)]
    expected = [2 * min(4, n - start) for n in tiles for start in range(0, n, 4)]
    assert calls.batches == [2] * 10 + expected
    assert method != "multidiffusion" or tiles == [9] * 4
    assert torch.equal(out, run_direct(host_for(sd1, job), combined))  # same seed, same image
    stronger = plan(host, method, **ON, attentive_base_strength=0.8).cascade("first")
    assert stronger is not None and stronger.stages[1].start == 2


def test_attentive_base_on_sdxl_conditions_the_base_on_its_size(sdxl: Models) -> None:
    host = TestHost(sdxl, Job(width=512, height=512, steps=3), native_size=256)
    combined = plan(host, "fstd", **ON)
    cascade = combined.cascade("first")
    assert cascade is not None and [s.size for s in cascade.stages] == [(32, 32), (64, 64)]
    assert run_direct(host, combined).shape == (1, 4, 64, 64)


def stage_convs(models: Models, width: int, setting: ScaleCrafterParams = ScaleCrafterParams()) -> dict[str, float]:
    unet_map = map_unet(models.unet)
    resolution = resolve(setting, frozenset(), ModelFamily.SD1, NATIVE, width, width)
    return dict(bind(resolution, unet_map, (width // 8, width // 8)).convs)


def test_scalecrafter_in_apldm_stages(sd1: Models) -> None:
    """AP-LDM 256 from a 128 base, 10 steps, strength 0.5: the refinement stage runs steps 5..9; ScaleCrafter's
    Auto setting for 256x256 (2x the native side) re-dilates its convs on the first steps of that stage."""
    job = Job(width=256, height=256, steps=10)
    host = host_for(sd1, job)
    data = {"apldm_refine": "0.5"}
    combined = plan(host, "apldm", stage_dilation_enabled=True, **data)
    resolution = resolve(ScaleCrafterParams(), frozenset(), ModelFamily.SD1, NATIVE, 256, 256)
    dilated_steps = steps_for_fraction(resolution.tau, 5)
    line = combined.lines[-1]
    assert line.startswith("ScaleCrafter in stages, first pass stage 256x256: Auto: ") and "of 5 steps" in line
    convs = stage_convs(sd1, 256)
    with Recorder(sd1.unet) as record:
        out = run_direct(host, combined)
    dilated = [call["dilated"] for call in record.calls]
    assert dilated[:10] == [{}] * 10  # the base stage is at the native size: left alone
    stage = dilated[10:]
    assert len(stage) == 5 and stage[0] == convs and stage[-1] == {}
    assert 0 < dilated_steps < 5 and stage == [convs] * dilated_steps + [{}] * (5 - dilated_steps)
    plain = run_direct(host_for(sd1, job), plan(host, "apldm", **data))
    assert not torch.equal(out, plain)


def test_stage_dilation_with_factor_one_is_the_plain_cascade(sd1: Models) -> None:
    """The same combination with a setting that re-dilates by 1 (wrappers installed, call hooks run, nothing
    changes): bit-identical to plain AP-LDM and plain FreeScale (restrained dilation off)."""
    neutral = ScaleCrafterParams(preset="custom", dilation="DB1=1 DB2=1 MB=1", tau=1.0)
    for method, data in (("apldm", {"apldm_refine": "0.5"}), ("freescale", {"freescale_dilation": False})):
        host = host_for(sd1, DIRECT)
        plain = plan(host, method, **data)
        job = JobContext(ModelFamily.SD1, map_unet(sd1.unet), NATIVE, PassSize("first", 256, 256, 4), None)
        added = stage_dilation(StageDilationParams(enabled=True), frozenset(), job, plain.passes, neutral)
        cascade = added.passes["first"]
        assert isinstance(cascade, CascadePlan)
        assert isinstance(cascade.stages[-1].plan, (Joined, JoinedStage))
        expected = run_direct(host_for(sd1, DIRECT), plain)
        assert torch.equal(run_direct(host_for(sd1, DIRECT), JobPlan(added.passes)), expected)


def test_scalecrafter_in_freescale_stages_replaces_restrained_dilation(sd1: Models) -> None:
    host = host_for(sd1, Job(width=256, height=256, steps=10))
    combined = plan(host, "freescale", freescale_dilation=False, stage_dilation_enabled=True)
    convs = stage_convs(sd1, 256)
    with Recorder(sd1.unet) as record:
        run_direct(host, combined)
    stage = [call["dilated"] for call in record.calls[10:]]
    assert len(stage) == 7 and stage[0] == convs and stage[-1] == {}  # restart 3: steps 3..9
    assert all(d in ({}, convs) for d in stage)
    for call in record.calls[10:]:
        assert call["attn"]  # scale fusion still runs
        assert all(len(seen) == 2 for seen in call["attn"].values())


def test_unet_restored_after_an_error_inside_a_combined_stage(models: Models) -> None:
    host = host_for(models, Job(width=256, height=256, steps=4))
    combined = plan(host, "freescale", freescale_dilation=False, stage_dilation_enabled=True, **ON)
    before = module_state(models.unet)
    calls: list[int] = []

    def explode(_module: Any, args: Any) -> None:
        calls.append(args[0].shape[0])
        if len(calls) == 6:  # inside the upscaling stage
            raise Boom()

    handle = models.unet.register_forward_pre_hook(explode)
    try:
        with pytest.raises(Boom):
            run_direct(host, combined)
    finally:
        handle.remove()
    assert module_state(models.unet) == before
