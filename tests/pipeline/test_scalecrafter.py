"""ScaleCrafter end to end on the test host (real LDM UNet, SD1 and SDXL block layouts)."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import pytest
import torch

from lib_hires.job import PassSize, plan_job
from lib_hires.methods.scalecrafter import ScaleCrafterPass, bind, resolve
from lib_hires.params import GROUPS, ScaleCrafterParams, Settings, validate_api_dict
from lib_hires.patching import PatchScope
from lib_hires.sampling.driver import Stage, run_stages
from lib_hires.sampling.hooks import FixedHooks
from lib_hires.sampling.hooks import ModelCall, PassHooks, SamplingPass
from lib_hires.unet import map_unet
from tests.host.host import Job, Models, TestHost
from tests.host.state import module_state
from tests.pipeline.test_sampling_core import CountCalls


def settings(**data: object) -> Settings:
    return validate_api_dict(GROUPS, {"enabled": True, "method": "scalecrafter", **data})


def run_job(host: TestHost, job_settings: Settings, extra: PassHooks = PassHooks(),
            warn: Callable[[str], None] = lambda text: None) -> torch.Tensor:
    """What the WebUI glue does for a first-pass job: plan, patch the pass if planned, sample, restore."""
    size = PassSize("first", host.job.width, host.job.height, host.job.steps)
    plan = plan_job(job_settings, host.unet, host.native_size, size, None)
    with PatchScope() as scope:
        hooks = plan.install("first", host.unet, scope, warn) if "first" in plan.passes else PassHooks()
        hooks = PassHooks(hooks.step_hooks + extra.step_hooks, hooks.call_hooks + extra.call_hooks)
        size = (host.job.height // 8, host.job.width // 8)
        return run_stages(host, [Stage(size, host.job.steps, plan=FixedHooks(hooks))])


class DilationSpy:
    """Records, per step, the dilation every conv of the UNet actually ran with (via `_conv_forward`)."""

    def __init__(self, host: TestHost, scope: PatchScope) -> None:
        self.seen: dict[int, dict[str, tuple[int, int]]] = defaultdict(dict)
        self.calls: list[dict[str, tuple[int, int]]] = []
        for path, module in host.unet.named_modules():
            if isinstance(module, torch.nn.Conv2d):
                scope.set_attr(module, "_conv_forward", self._spy(host, path, module, module._conv_forward))

    def _spy(self, host, path, module, original):  # type: ignore[no-untyped-def]
        def conv_forward(x, weight, bias):  # type: ignore[no-untyped-def]
            step = host.slot.current.step.index if host.slot.current and host.slot.current.step else -1
            if module.dilation != (1, 1):
                self.seen[step][path] = module.dilation
            return original(x, weight, bias)
        return conv_forward


def block_convs(models: Models, spec: dict[str, float]) -> dict[str, float]:
    return map_unet(models.unet).conv_values(spec)


def test_exactly_the_planned_convs_change_and_only_before_tau(models: Models) -> None:
    host = TestHost(models, Job(steps=4, width=128, height=128))
    spec = {"DB1": 2, "DB2": 3, "UB0.sampler": 2}
    with PatchScope() as scope:
        spy = DilationSpy(host, scope)
        run_job(host, settings(scalecrafter_preset="custom", scalecrafter_dilation="DB1=2 DB2=3 UB0.sampler=2",
                               scalecrafter_tau=0.5))
    expected = {path: (int(f), int(f)) for path, f in block_convs(models, spec).items()}
    assert len(expected) >= 7
    assert dict(spy.seen) == {0: expected, 1: expected}  # steps 2 and 3: no conv dilated


def test_progressive_schedule_per_step(sd1: Models) -> None:
    host = TestHost(sd1, Job(steps=6, width=128, height=128))
    with PatchScope() as scope:
        spy = DilationSpy(host, scope)
        run_job(host, settings(scalecrafter_preset="custom", scalecrafter_dilation="DB1=4", scalecrafter_tau=1.0,
                               scalecrafter_progressive=True))
    per_step = {step: set(d.values()) for step, d in spy.seen.items()}
    # f_i = max(ceil(4 (6 - i) / 6), 2): 4, 4, 3, 2, 2, 2
    assert per_step == {0: {(4, 4)}, 1: {(4, 4)}, 2: {(3, 3)}, 3: {(2, 2)}, 4: {(2, 2)}, 5: {(2, 2)}}


def test_noise_damped_cfg_calls(sd1: Models) -> None:
    host = TestHost(sd1, Job(steps=4, width=128, height=128, batch_size=2))
    job_settings = settings(scalecrafter_preset="custom", scalecrafter_dilation="DB1=2 DB2=3 UB1=2",
                            scalecrafter_tau=1.0, scalecrafter_ndcfg_dilation="MB=2", scalecrafter_ndcfg_tau=0.5)
    with CountCalls(sd1.unet) as calls:
        run_job(host, job_settings)
    # cond+uncond batch every step, plus the uncond rows alone while ND-CFG is active (steps 0 and 1)
    assert calls.batches == [4, 2, 4, 2, 4, 4]
    with CountCalls(sd1.unet) as calls:
        run_job(host, settings(scalecrafter_preset="custom", scalecrafter_dilation="DB1=2 DB2=3 UB1=2",
                               scalecrafter_tau=1.0, scalecrafter_ndcfg=False,
                               scalecrafter_ndcfg_dilation="MB=2", scalecrafter_ndcfg_tau=0.5))
    assert calls.batches == [4] * 4


def test_noise_damped_cfg_skipped_with_one_warning_without_uncond_rows(sd1: Models) -> None:
    """At CFG scale 1 the host evaluates no uncond rows: no extra pass, one warning for the pass."""
    host = TestHost(sd1, Job(steps=4, width=128, height=128, batch_size=2, cfg_scale=1.0))
    warnings: list[str] = []
    with CountCalls(sd1.unet) as calls:
        run_job(host, settings(scalecrafter_preset="custom", scalecrafter_dilation="DB1=2 DB2=3 UB1=2",
                               scalecrafter_tau=1.0, scalecrafter_ndcfg_dilation="MB=2", scalecrafter_ndcfg_tau=0.5),
                warn=warnings.append)
    assert calls.batches == [2] * 4
    assert len(warnings) == 1 and warnings[0].startswith("noise-damped CFG skipped")


def test_noise_damped_cfg_equals_the_formula_through_the_hosts_cfg(sd1: Models) -> None:
    """D = D_u^nd + w (D~_c - D~_u), checked on one denoiser evaluation with batch 2."""
    job = Job(steps=4, width=128, height=128, batch_size=2, cfg_scale=5.0)
    host = TestHost(sd1, job)
    unet_map = map_unet(sd1.unet)
    sigmas = host.sigmas(4)
    x = host.noise((2, 4, 16, 16), stage=0) * sigmas[0]

    def denoise(dilation: str, ndcfg: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        params = ScaleCrafterParams(preset="custom", dilation=dilation, tau=1.0, ndcfg_dilation=ndcfg,
                                    ndcfg_tau=1.0 if ndcfg else 0.0)
        plan = bind(resolve(params, frozenset(), unet_map.family, 512, 128, 128), unet_map, (16, 16))
        rows_out: list[torch.Tensor] = []

        def capture(call: ModelCall, call_next) -> torch.Tensor:  # type: ignore[no-untyped-def]
            out = call_next(call)
            rows_out.append(out)
            return out

        with PatchScope() as scope:
            hooks = ScaleCrafterPass(plan, sd1.unet, scope, warn=lambda t: None).hooks
            sampling = SamplingPass(sigmas, PassHooks(call_hooks=(capture, *hooks.call_hooks)))
            with host.slot.holding(sampling):
                sampling.enter(x, float(sigmas[0]))
                out = host.cfg_denoiser(x, sigmas[0] * torch.ones(2), cond=host.cond, uncond=host.uncond,
                                        cond_scale=job.cfg_scale)
        return out, rows_out[0]

    combined, _ = denoise("DB1=2 DB2=3 UB1=2", ndcfg="MB=2")
    _, main_rows = denoise("DB1=2 DB2=3 UB1=2")  # rows: cond 0, cond 1, uncond 0, uncond 1
    _, nd_rows = denoise("MB=2")
    expected = nd_rows[2:] + job.cfg_scale * (main_rows[:2] - main_rows[2:])
    assert (combined - expected).abs().max() <= 1e-4 * expected.abs().max()
    plain_cfg = main_rows[2:] + job.cfg_scale * (main_rows[:2] - main_rows[2:])
    assert not torch.allclose(combined, plain_cfg)


def test_unet_identical_after_a_job_that_raised(models: Models) -> None:
    host = TestHost(models, Job(steps=4, width=128, height=128))
    before = module_state(models.unet)
    plain_before = run_stages(host, [Stage((16, 16), 4)])

    def fail_at_step_2(call: ModelCall, call_next) -> torch.Tensor:  # type: ignore[no-untyped-def]
        if call.step.index == 2:
            raise KeyboardInterrupt  # an interrupt, not only an Exception
        return call_next(call)

    with pytest.raises(KeyboardInterrupt):
        run_job(host, settings(scalecrafter_preset="custom", scalecrafter_dilation="DB1=2 MB=2.5",
                               scalecrafter_ndcfg_dilation="MB=2", scalecrafter_ndcfg_tau=1.0),
                extra=PassHooks(call_hooks=(fail_at_step_2,)))
    assert module_state(models.unet) == before
    assert host.slot.current is None
    assert torch.equal(run_stages(host, [Stage((16, 16), 4)]), plain_before)


def test_disabled_is_bit_identical_and_enabled_changes_the_image(sd1: Models) -> None:
    host = TestHost(sd1, Job(steps=4, width=128, height=128))
    plain = run_stages(host, [Stage((16, 16), 4)])
    assert torch.equal(run_job(host, settings(enabled=False)), plain)
    assert torch.equal(run_job(host, settings(method="none")), plain)
    assert torch.equal(run_job(host, settings()), plain)  # Auto below the native 512 px: untouched
    big = TestHost(sd1, Job(steps=4, width=128, height=128), native_size=64)  # 2x the native size
    assert not torch.equal(run_job(big, settings()), plain)


def test_same_seed_same_image_and_batch_two(models: Models) -> None:
    job = Job(steps=3, width=128, height=128, batch_size=2, sampler="Euler a")
    host = TestHost(models, job, native_size=64)
    first = run_job(host, settings(scalecrafter_ndcfg_dilation="MB=2"))
    second = run_job(TestHost(models, job, native_size=64), settings(scalecrafter_ndcfg_dilation="MB=2"))
    assert first.shape == (2, 4, 16, 16)
    assert torch.equal(first, second)
    assert not torch.allclose(first[0], first[1])


def test_auto_preset_on_sdxl_layout(sdxl: Models) -> None:
    host = TestHost(sdxl, Job(steps=5, width=128, height=128), native_size=64)  # 2x the native size
    plan = plan_job(settings(), sdxl.unet, 64, PassSize("first", 128, 128, 5), None)
    assert plan.passes["first"].convs == block_convs(sdxl, {"MB": 2, "UB0": 2})  # SDXL 2048² code-effective
    assert plan.passes["first"].resolution.tau == 30 / 50
    assert plan.infotext["ScaleCrafter dilation"] == "MB=2 UB0=2"
    with PatchScope() as scope:
        spy = DilationSpy(host, scope)
        run_job(host, settings())
    assert sorted(spy.seen) == [0, 1, 2]  # round(0.6 * 5) = 3 dilated steps
