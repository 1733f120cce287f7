"""The sampling core on the test host: hook plumbing is transparent, stages have the right shapes,
UNet call counts and determinism, hooks see steps and rows as the host lays them out."""
from __future__ import annotations

import pytest
import torch

from lib_hires.sampling.driver import Stage, run_stages
from lib_hires.sampling.hooks import FixedHooks, ModelCall, PassHooks
from lib_hires.sampling.steps import Step
from tests.host.host import Job, Models, TestHost
from tests.host.samplers import SAMPLERS


class CountCalls:
    """Counts UNet forward calls (and their batch sizes) with a removable forward pre-hook."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.batches: list[int] = []
        self.handle = unet.register_forward_pre_hook(lambda _m, args, kwargs: self.batches.append(args[0].shape[0]),
                                                     with_kwargs=True)

    def __enter__(self) -> "CountCalls":
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_one_stage_driver_equals_plain_sampler(sd1: Models, sampler: str) -> None:
    host = TestHost(sd1, Job(sampler=sampler, steps=4, width=128, height=128))
    sigmas = host.sigmas(4)
    driven = run_stages(host, [Stage((16, 16), 4)])
    plain = host.sample_plain(host.noise((1, 4, 16, 16), stage=0) * sigmas[0], sigmas, stage=0)
    assert driven.shape == (1, 4, 16, 16)
    assert (driven - plain).abs().max().item() <= 1e-6
    assert plain.abs().max() > 0 and torch.isfinite(plain).all()


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M SDE"])
def test_two_stage_shapes_calls_and_determinism(models: Models, sampler: str) -> None:
    steps, start = 6, 3
    host = TestHost(models, Job(sampler=sampler, steps=steps, batch_size=2))
    stages = [Stage((8, 8), steps), Stage((16, 16), steps, start=start)]
    with CountCalls(models.unet) as calls:
        first = run_stages(host, stages)
    assert first.shape == (2, 4, 16, 16)
    # one batched cond+uncond call per step: all steps in stage 1, the rest from `start` in stage 2
    assert calls.batches == [4] * (steps + steps - start)
    second = run_stages(TestHost(models, Job(sampler=sampler, steps=steps, batch_size=2)), stages)
    assert torch.equal(first, second)
    other_seed = run_stages(TestHost(models, Job(sampler=sampler, steps=steps, batch_size=2, seed=7)), stages)
    assert not torch.allclose(first, other_seed)
    assert not torch.allclose(first[0], first[1]), "each image of a batch has its own seed"


def test_stage_validation(sd1: Models) -> None:
    host = TestHost(sd1)
    with pytest.raises(ValueError, match="from noise starts at schedule index 0"):
        run_stages(host, [Stage((16, 16), 4, start=1)])
    with pytest.raises(ValueError, match="allowed: 0 to 3"):
        run_stages(host, [Stage((8, 8), 4), Stage((16, 16), 4, start=4)])
    with pytest.raises(ValueError, match="nothing to upscale"):
        run_stages(host, [Stage((16, 16), 4, upscale="rgb")])


def test_interrupt_stops_after_the_current_stage(sd1: Models) -> None:
    host = TestHost(sd1, Job(steps=3))
    host.interrupt = True
    out = run_stages(host, [Stage((8, 8), 3), Stage((16, 16), 3, start=1)])
    assert out.shape == (1, 4, 8, 8)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_step_hooks_run_once_per_step_on_the_sampler_state(sd1: Models, sampler: str) -> None:
    host = TestHost(sd1, Job(sampler=sampler, steps=5))
    seen: list[Step] = []

    def record(x: torch.Tensor, step: Step) -> None:
        seen.append(step)

    run_stages(host, [Stage((16, 16), 5, plan=FixedHooks(PassHooks(step_hooks=(record,))))])
    assert seen == [Step(i, 5) for i in range(5)] + [Step(5, 5)], "once per step, then on the result"

    # a step hook that zeroes the latent before the last step changes the result: it acts on the
    # sampler's own state, not on a copy
    def zero_last(x: torch.Tensor, step: Step) -> None:
        if step.index == 4:
            x.zero_()

    plain = run_stages(host, [Stage((16, 16), 5)])
    zeroed = run_stages(host, [Stage((16, 16), 5, plan=FixedHooks(PassHooks(step_hooks=(zero_last,))))])
    assert not torch.allclose(plain, zeroed)


def test_call_hooks_see_rows_steps_and_compose(sd1: Models) -> None:
    host = TestHost(sd1, Job(steps=3, batch_size=2))
    calls: list[ModelCall] = []
    order: list[str] = []

    def outer(call: ModelCall, call_next) -> torch.Tensor:  # type: ignore[no-untyped-def]
        order.append("outer")
        calls.append(call)
        return call_next(call)

    def inner(call: ModelCall, call_next) -> torch.Tensor:  # type: ignore[no-untyped-def]
        order.append("inner")
        # evaluate uncond rows separately and the cond rows separately: same result as one call
        unc, con = call.rows.where(uncond=True), call.rows.where(uncond=False)
        out = torch.empty_like(call.x)
        out[con] = call_next(call.subset(con))
        out[unc] = call_next(call.subset(unc))
        return out

    plain = run_stages(host, [Stage((16, 16), 3)])
    hooked = run_stages(host, [Stage((16, 16), 3, plan=FixedHooks(PassHooks(call_hooks=(outer, inner))))])
    # splitting a batch changes float summation order only
    assert (plain - hooked).abs().max() <= 1e-5 * plain.abs().max()
    assert order == ["outer", "inner"] * 3
    assert [c.step for c in calls] == [Step(i, 3) for i in range(3)]
    assert calls[0].rows.image == (0, 1, 0, 1) and calls[0].rows.uncond == (False, False, True, True)
    assert host.slot.current is None


def test_slot_is_cleared_when_sampling_raises(sd1: Models) -> None:
    host = TestHost(sd1, Job(steps=3))

    def boom(call: ModelCall, call_next) -> torch.Tensor:  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_stages(host, [Stage((16, 16), 3, plan=FixedHooks(PassHooks(call_hooks=(boom,))))])
    assert host.slot.current is None
