"""Cascades on the test host: the stage driver with RGB upscaling, and AP-LDM through both entries
(sizes, steps, UNet calls per stage, determinism, interrupt, errors, SDXL size conditioning)."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from lib_hires.job import JobPlan, PassSize, plan_job
from lib_hires.methods.base import CascadePlan
from lib_hires.ops.conditioning import ORIGINAL_SLICE, TARGET_SLICE, embed_numbers
from lib_hires.params import GROUPS, validate_api_dict
from lib_hires.patching import PatchScope
from lib_hires.sampling.driver import Stage, resize, run_stages
from lib_hires.sampling.hooks import FixedHooks, ModelCall, PassHooks
from tests.host.host import Job, Models, TestHost
from tests.host.state import module_state
from tests.pipeline.test_sampling_core import CountCalls


def apldm_plan(host: TestHost, hires: PassSize | None = None, **data: object) -> JobPlan:
    settings = validate_api_dict(GROUPS, {"enabled": True, "method": "apldm", **data})
    first = PassSize("first", host.job.width, host.job.height, host.job.steps)
    return plan_job(settings, host.unet, host.native_size, first, hires, seed=host.job.seed)


def run_direct(host: TestHost, plan: JobPlan) -> torch.Tensor:
    """What the WebUI glue does for the direct entry: the first pass is the cascade."""
    cascade = plan.cascade("first")
    assert cascade is not None and cascade.from_noise
    return run_stages(host, cascade.stages)


def run_hires(host: TestHost, plan: JobPlan) -> torch.Tensor:
    """The hires-fix entry: the first pass with its hooks, then the hires cascade from its result."""
    first = host.noise((host.batch_size, 4, host.job.height // 8, host.job.width // 8), 0)
    sigmas = host.sigmas(host.job.steps)
    with PatchScope() as scope:
        hooks = plan.install("first", host.unet, scope, lambda text: None) if "first" in plan.passes else PassHooks()
        latent = host.sample(first * sigmas[0], sigmas, hooks, 0)
    cascade = plan.cascade("hires")
    assert cascade is not None and not cascade.from_noise
    return run_stages(host, cascade.stages, latent)


def test_rgb_upscale_at_the_same_size_is_a_decode_encode_round_trip(sd1: Models) -> None:
    host = TestHost(sd1)
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    from lib_hires.sampling.driver import upscale

    via_stage = upscale(host, latent, Stage((8, 8), 4, upscale="rgb"), 1)
    plain = host.encode(host.decode(latent).clamp(-1, 1))
    assert torch.equal(host.decode(via_stage), host.decode(plain))
    assert torch.equal(resize(latent, (8, 8)), latent)
    sampled = upscale(host, latent, Stage((8, 8), 4, upscale="rgb", encode="sample"), 1)
    assert not torch.allclose(sampled, via_stage) and torch.equal(
        sampled, upscale(TestHost(sd1), latent, Stage((8, 8), 4, upscale="rgb", encode="sample"), 1))


def test_driver_continues_from_a_latent_with_rgb_stages(sd1: Models) -> None:
    host = TestHost(sd1, Job(steps=4))
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    stages = [Stage((16, 16), 4, 2, upscale="rgb"), Stage((24, 24), 6, 4, upscale="rgb")]
    with CountCalls(sd1.unet) as calls:
        out = run_stages(host, stages, latent)
    assert out.shape == (1, 4, 24, 24)
    assert host.stage_steps == [2, 2] and calls.batches == [2] * 4
    assert host.stage_inputs == [((1, 4, 16, 16), 3), ((1, 4, 24, 24), 3)]


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M SDE"])
def test_direct_entry_sizes_calls_and_determinism(models: Models, sampler: str) -> None:
    native = 128  # a tiny "native" size keeps the test fast
    job = Job(width=192, height=256, steps=5, sampler=sampler)
    host = TestHost(models, job, native_size=native)
    plan = apldm_plan(host)
    cascade = plan.cascade("first")
    assert cascade is not None
    multiple = 64 if models.family == "sd1" else 32
    base = cascade.stages[0].size
    assert (base[0] * 8) % multiple == 0 and (base[1] * 8) % multiple == 0
    with CountCalls(models.unet) as calls:
        out = run_direct(host, plan)
    assert out.shape == (1, 4, 32, 24)
    # stage 1: every step; stage 2: int(5 * 0.8) = 4 -> one step; one cond+uncond call per step
    assert host.stage_steps == [5, 1] and calls.batches == [2] * 6
    assert torch.equal(out, run_direct(TestHost(models, job, native_size=native), plan))
    other = run_direct(TestHost(models, Job(width=192, height=256, steps=5, sampler=sampler, seed=9),
                                native_size=native), plan)
    assert not torch.allclose(out, other)


def test_guidance_changes_only_what_it_should(sd1: Models) -> None:
    job = Job(width=192, height=256, steps=5)
    host = TestHost(sd1, job, native_size=128)
    guided = run_direct(host, apldm_plan(host))
    unguided = run_direct(TestHost(sd1, job, native_size=128), apldm_plan(host, apldm_gamma=0.0))
    assert not torch.allclose(guided, unguided)
    # with gamma 0 the base stage is the plain sampler at the base size from the same noise
    plain_host = TestHost(sd1, job, native_size=128)
    plan = apldm_plan(plain_host, apldm_gamma=0.0)
    cascade = plan.cascade("first")
    assert cascade is not None
    base = run_stages(plain_host, cascade.stages[:1])
    plain = run_stages(TestHost(sd1, job, native_size=128), [Stage(cascade.stages[0].size, 5)])
    assert torch.equal(base, plain)


def test_hires_entry_runs_first_pass_then_refinement(sd1: Models) -> None:
    host = TestHost(sd1, Job(width=128, height=128, steps=4))
    plan = apldm_plan(host, PassSize("hires", 256, 256, 5), apldm_refine="0.4 0.2")
    with CountCalls(sd1.unet) as calls:
        out = run_hires(host, plan)
    assert out.shape == (1, 4, 32, 32)
    # first pass 4 steps; stages enter a 5-step schedule at int(5 * 0.6) = 3 and int(5 * 0.8) = 4
    assert host.stage_steps == [2, 1] and calls.batches == [2] * 7
    assert torch.equal(out, run_hires(TestHost(sd1, Job(width=128, height=128, steps=4)), plan))


def test_interrupt_mid_stage_returns_that_stage_and_restores_everything(sd1: Models) -> None:
    job = Job(width=192, height=256, steps=4)
    host = TestHost(sd1, job, native_size=128)
    plan = apldm_plan(host)
    before = module_state(sd1.unet)
    calls = 0

    def interrupt_on_second_call(call: ModelCall, call_next: Any) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 2:
            host.interrupt = True
        return call_next(call)

    cascade = plan.cascade("first")
    assert cascade is not None
    first = cascade.stages[0]
    spied = Stage(first.size, first.steps, plan=_Both(first.plan, interrupt_on_second_call))
    out = run_stages(host, (spied, *cascade.stages[1:]))
    assert out.shape[-2:] == first.size  # the stage's own size, not the target's
    assert module_state(sd1.unet) == before and host.slot.current is None


def test_interrupt_during_an_upscale_returns_the_previous_stage(sd1: Models) -> None:
    host = TestHost(sd1, Job(width=192, height=256, steps=3), native_size=128)
    cascade = apldm_plan(host).cascade("first")
    assert cascade is not None
    decode = host.decode

    def decode_then_interrupt(latent: torch.Tensor) -> torch.Tensor:
        host.interrupt = True
        return decode(latent)

    host.decode = decode_then_interrupt  # type: ignore[method-assign]
    with CountCalls(sd1.unet) as calls:
        out = run_stages(host, cascade.stages)
    assert out.shape[-2:] == cascade.stages[0].size and len(calls.batches) == 3  # stage 1 only


class _Both:
    """A stage plan with one more call hook (the test's spy) after the method's own."""

    def __init__(self, plan: Any, hook: Any) -> None:
        self.plan, self.hook = plan, hook

    def install(self, unet: torch.nn.Module, scope: PatchScope, warn: Any) -> PassHooks:
        hooks = self.plan.install(unet, scope, warn)
        return PassHooks(hooks.step_hooks, (*hooks.call_hooks, self.hook))


def test_error_in_stage_two_leaves_the_unet_bit_identical(sd1: Models) -> None:
    host = TestHost(sd1, Job(width=192, height=256, steps=4), native_size=128)
    plan = apldm_plan(host)
    cascade = plan.cascade("first")
    assert isinstance(cascade, CascadePlan)
    before = module_state(sd1.unet)

    def boom(call: ModelCall, call_next: Any) -> torch.Tensor:
        raise RuntimeError("boom in stage 2")

    second = cascade.stages[1]
    broken = Stage(second.size, second.steps, second.start, FixedHooks(PassHooks(call_hooks=(boom,))), "rgb")
    with pytest.raises(RuntimeError, match="boom in stage 2"):
        run_stages(host, (cascade.stages[0], broken))
    assert module_state(sd1.unet) == before and host.slot.current is None


def test_sdxl_stages_are_conditioned_on_their_own_size(sdxl: Models) -> None:
    host = TestHost(sdxl, Job(width=256, height=320, steps=3), native_size=128)
    plan = apldm_plan(host)
    cascade = plan.cascade("first")
    assert cascade is not None
    seen: list[tuple[tuple[int, ...], torch.Tensor]] = []

    def spy(call: ModelCall, call_next: Any) -> torch.Tensor:
        seen.append((tuple(call.x.shape[-2:]), call.cond["vector"]))
        return call_next(call)

    stages = [Stage(s.size, s.steps, s.start, _Both(s.plan, spy), s.upscale) for s in cascade.stages]
    run_stages(host, stages)
    for (h, w), vector in seen:
        sizes = embed_numbers([h * 8, w * 8])
        assert torch.allclose(vector[:, ORIGINAL_SLICE], sizes.expand(vector.shape[0], -1))
        assert torch.allclose(vector[:, TARGET_SLICE], sizes.expand(vector.shape[0], -1))
    assert {shape for shape, _ in seen} == {stage.size for stage in cascade.stages}
    assert cascade.stages[-1].size == (40, 32) and len(cascade.stages) == 3  # 2.2x the base side: 0.2 0.2
