"""A ControlNet (the test host's `TestControl`) and a LoRA through every method's stages, tiles and windows.

Every method, direct entry at twice the native side (cascades from noise, tiled and re-dilated
passes): every UNet evaluation gets a hint of its own input's size, resized for each stage, and the
hint changes the image; after an error the UNet and the hint are as they were and the same seed and
hint give the same image. For the tiled passes, where the
UNet part of a call is the same with any hint, the hint's share of one call is exactly the residual
of the untiled call over every pixel a tile covers: each tile got the hint of its own pixels.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from lib_hires.job import JobPlan
from lib_hires.patching import PatchScope
from lib_hires.sampling.driver import Stage, run_stages
from lib_hires.sampling.hooks import FixedHooks, ModelCall, Rows, SamplingPass
from tests.host.host import Job, Models, TestControl, TestHost
from tests.host.state import module_state
from tests.pipeline.test_demofusion import NATIVE, Boom, plan

METHODS = ("scalecrafter", "apldm", "freescale", "demofusion", "accdiffusion", "fstd", "multidiffusion")
SMALL_NATIVE = 64  # twice the native side: every method plans its stages, tiles or windows (latent 16)
DIRECT = Job(width=128, height=128, steps=2)


def smooth_hint(seed: int, size: tuple[int, int] = (128, 128)) -> torch.Tensor:
    coarse = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)


class Recording(TestControl):
    """Notes each call's latent input and hint sizes, and the pass latent it was resized for."""

    calls: list[tuple[tuple[int, int], tuple[int, int], tuple[int, int]]]

    def for_call(self, call: ModelCall, pass_rows: Rows, latent: tuple[int, int]) -> torch.Tensor:
        residual = super().for_call(call, pass_rows, latent)
        hint = call.pixel_map()(torch.zeros(len(pass_rows.image), 3, 8 * latent[0], 8 * latent[1]))
        self.calls.append((tuple(call.x.shape[-2:]), tuple(hint.shape[-2:]), latent))
        assert hint.shape[0] == call.x.shape[0]
        return residual


def recording(hint: torch.Tensor) -> Recording:
    control = Recording(hint)
    object.__setattr__(control, "calls", [])
    return control


def run(host: TestHost, job: JobPlan) -> torch.Tensor:
    """The direct entry as the glue runs it: the first pass's cascade, or its single planned pass."""
    cascade = job.cascade("first")
    if cascade is not None:
        return run_stages(host, cascade.stages)
    size = (host.job.height // 8, host.job.width // 8)
    with PatchScope() as scope:
        hooks = job.install("first", host.unet, scope, lambda text: None)
        return run_stages(host, [Stage(size, host.job.steps, plan=FixedHooks(hooks))])


def host_with(models: Models, control: TestControl | None, job: Job = DIRECT) -> TestHost:
    host = TestHost(models, job, native_size=SMALL_NATIVE)
    host.control = control
    return host


@pytest.mark.parametrize("method", METHODS)
def test_every_evaluation_gets_a_hint_of_its_own_size_in_every_stage(sd1: Models, method: str) -> None:
    control = recording(smooth_hint(0))
    host = host_with(sd1, control)
    job = plan(host, method)
    image = run(host, job)
    assert control.calls and all(hint == (8 * x[0], 8 * x[1]) for x, hint, _ in control.calls)
    cascade = job.cascade("first")
    stages = [stage.size for stage in cascade.stages] if cascade is not None else [(16, 16)]
    assert sorted({latent for _, _, latent in control.calls}) == sorted(set(stages))
    if method in ("fstd", "multidiffusion", "demofusion", "accdiffusion"):
        assert any(x != latent for x, _, latent in control.calls)  # tiles, windows or lattices
    assert not torch.equal(run(host_with(sd1, recording(smooth_hint(1))), job), image)


def first_call(host: TestHost, job: JobPlan, step: int) -> torch.Tensor:
    """The denoiser's output for one evaluation at `step` of the job's first pass (CFG included)."""
    sigmas = host.sigmas(host.job.steps)
    x = host.noise((1, 4, host.job.height // 8, host.job.width // 8), 7) * sigmas[step]
    with PatchScope() as scope:
        hooks = job.install("first", host.unet, scope, lambda text: None)
        sampling = SamplingPass(sigmas, hooks)
        with host.slot.holding(sampling):
            for index in range(step + 1):
                sampling.enter(x, float(sigmas[index]))
            return host.cfg_denoiser(x, sigmas[step].reshape(1), **host._extra_args())


@pytest.mark.parametrize(("method", "step"), [("multidiffusion", 0), ("fstd", 1), ("fstd", 2)])
def test_a_tiled_call_adds_exactly_the_untiled_residual(models: Models, method: str, step: int) -> None:
    job_size = Job(width=384, height=320, steps=3) if models.family != "sdxl" else Job(width=512, height=384, steps=3)
    native = NATIVE if models.family != "sdxl" else 256
    hint = smooth_hint(3, (job_size.height, job_size.width))
    control = TestControl(hint)
    hosts = [TestHost(models, job_size, native_size=native) for _ in range(2)]
    hosts[0].control = control
    job = plan(hosts[1], method)
    share = first_call(hosts[0], job, step) - first_call(hosts[1], job, step)
    expected = control.residual(hint)
    covered = share != 0
    assert bool(covered.float().mean() > 0.5)  # FSTD's shifted steps leave a strip to the previous step
    assert torch.allclose(share[covered], expected[covered], atol=1e-4)
    if step == 0 or method == "multidiffusion":
        assert bool(covered.all())


@contextlib.contextmanager
def lora(unet: nn.Module, seed: int, scale: float = 0.05) -> Iterator[None]:
    """A LoRA merged into every conv and linear weight (as Forge and A1111's default path apply one),
    taken out again afterwards."""
    generator = torch.Generator().manual_seed(seed)
    deltas = []
    for module in unet.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            out_features, rest = module.weight.shape[0], module.weight[0].numel()
            down, up = torch.randn(4, rest, generator=generator), torch.randn(out_features, 4, generator=generator)
            delta = (scale / rest ** 0.5) * (up @ down).reshape(module.weight.shape)
            deltas.append((module, delta))
    with torch.no_grad():
        for module, delta in deltas:
            module.weight += delta
        try:
            yield
        finally:
            for module, delta in deltas:
                module.weight -= delta


@pytest.mark.parametrize("method", METHODS)
def test_a_lora_changes_every_stage(sd1: Models, method: str) -> None:
    stage_outputs: dict[bool, list[torch.Tensor]] = {}
    for with_lora in (False, True):
        host = host_with(sd1, None)
        job = plan(host, method)
        outputs: list[torch.Tensor] = []
        sample = host.sample

        def recorded(*args: Any, outputs: list[torch.Tensor] = outputs, sample: Any = sample,
                     **kwargs: Any) -> torch.Tensor:
            outputs.append(sample(*args, **kwargs))
            return outputs[-1]

        host.sample = recorded  # type: ignore[method-assign]
        with lora(sd1.unet, 5) if with_lora else contextlib.nullcontext():
            run(host, job)
        stage_outputs[with_lora] = outputs
    assert len(stage_outputs[True]) == len(stage_outputs[False]) >= 1
    for plain, with_lora in zip(stage_outputs[False], stage_outputs[True]):
        assert (plain - with_lora).abs().mean() > 1e-3


@pytest.mark.parametrize("method", ["demofusion", "fstd", "freescale"])
def test_unet_and_hint_restored_after_an_error_with_a_controlnet_attached(sd1: Models, method: str) -> None:
    hint = smooth_hint(4)
    control = TestControl(hint.clone())
    host = host_with(sd1, control)
    job = plan(host, method)
    before = module_state(sd1.unet)
    calls = []

    def explode(_module: Any, args: Any) -> None:
        calls.append(args[0].shape)
        if len(calls) == 2:
            raise Boom("interrupted")

    handle = sd1.unet.register_forward_pre_hook(explode)
    try:
        with pytest.raises(Boom):
            run(host, job)
    finally:
        handle.remove()
    assert module_state(sd1.unet) == before and torch.equal(control.hint, hint)
    assert host.slot.current is None
    assert torch.equal(run(host_with(sd1, TestControl(hint)), job), run(host_with(sd1, TestControl(hint)), job))
