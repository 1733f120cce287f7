"""FreeScale on the test host: stages and restart index, UNet and attention calls, restrained dilation on
exactly the spec's convs and steps, scale fusion installed and restored (also after an error), detail
control and the region mask, determinism, SD1/SD2/SDXL layouts, both entries."""
from __future__ import annotations

import base64
import dataclasses
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from lib_hires.job import JobPlan, PassSize
from lib_hires.methods.freescale import dilated_blocks
from lib_hires.ops.conditioning import ORIGINAL_SLICE, TARGET_SLICE, embed_numbers
from lib_hires.sampling.driver import Stage, StageAware, StageInput, run_stages
from lib_hires.sampling.hooks import FixedHooks, ModelCall, PassPlan
from lib_hires.unet import map_unet
from tests.host.host import Job, Models, TestHost
from tests.host.state import module_state
from tests.pipeline.test_cascade import _Both, run_direct, run_hires
from tests.pipeline.test_demofusion import NATIVE, Boom, plan
from tests.pipeline.test_sampling_core import CountCalls

JOB = Job(width=256, height=256, steps=10)  # native 128: base 128x128 (latent 16), stage 256x256 (latent 32)


def attn1_paths(unet: nn.Module) -> list[str]:
    return [path for block in map_unet(unet).blocks for path in block.self_attention]


class Recorder:
    """Per UNet call: the latent shape, the dilation every conv ran with (seen in `Conv2d._conv_forward`,
    inside whatever forward is installed) and the token counts each attn1 module was called with."""

    def __init__(self, unet: nn.Module) -> None:
        self.calls: list[dict[str, Any]] = []
        self.handles = [unet.register_forward_pre_hook(self._call)]
        self.names = {id(module): name for name, module in unet.named_modules()}
        self.conv_forward = nn.Conv2d._conv_forward
        recorder = self

        def conv_forward(module: nn.Conv2d, *args: Any) -> torch.Tensor:
            if module.dilation != (1, 1) and id(module) in recorder.names:
                recorder.calls[-1]["dilated"][recorder.names[id(module)]] = module.dilation[0]
            return recorder.conv_forward(module, *args)

        nn.Conv2d._conv_forward = conv_forward  # type: ignore[method-assign]
        self.classes = {type(m): type(m).forward for name, m in unet.named_modules() if name.endswith(".attn1")}
        for cls, forward in self.classes.items():
            cls.forward = self._attn(forward)  # before a method installs: its "original" forward is this one

    def _call(self, _module: nn.Module, args: Any) -> None:
        self.calls.append({"shape": tuple(args[0].shape), "dilated": {}, "attn": {}})

    def _attn(self, forward: Any) -> Any:
        def recorded(module: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if self.names.get(id(module), "").endswith(".attn1"):
                name = self.names[id(module)]
                self.calls[-1]["attn"].setdefault(name, []).append((x.shape[0], x.shape[1],
                                                                   kwargs.get("context") is not None))
            return forward(module, x, *args, **kwargs)
        return recorded

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        nn.Conv2d._conv_forward = self.conv_forward  # type: ignore[method-assign]
        for cls, forward in self.classes.items():
            cls.forward = forward
        for handle in self.handles:
            handle.remove()


@dataclass(frozen=True)
class Spied:
    """A stage plan (StageAware or not, or None) with an extra call hook."""

    plan: Any
    hook: Any

    def for_stage(self, stage: StageInput) -> PassPlan:
        plan = self.plan.for_stage(stage) if isinstance(self.plan, StageAware) else self.plan
        return _Both(plan if plan is not None else FixedHooks(), self.hook)


def spied(stages: Sequence[Stage], hook: Any, first: int = 0) -> list[Stage]:
    """`stages` with `hook` added to every stage from index `first` on."""
    return [*stages[:first], *(dataclasses.replace(s, plan=Spied(s.plan, hook)) for s in stages[first:])]


def freescale(host: TestHost, hires: PassSize | None = None, **data: object) -> JobPlan:
    return plan(host, "freescale", hires, **data)


def test_stages_restart_and_unet_calls(sd1: Models) -> None:
    host = TestHost(sd1, JOB, native_size=NATIVE)
    job = freescale(host)
    assert job.lines == ("FreeScale, first pass 256x256: base 128x128, then 256x256 from step 4 of 10 (dilation 2 on 4 "
                         "steps, scale fusion on 3x3 windows); detail control 2",)
    with CountCalls(sd1.unet) as calls:
        out = run_direct(host, job)
    assert out.shape == (1, 4, 32, 32)
    assert host.stage_steps == [10, 7]  # restart at int(0.3 * 10) = 3: steps 3..9
    assert calls.batches == [2] * 17  # one CFG call per step: scale fusion works inside the UNet


def test_dilation_on_exactly_the_spec_convs_and_steps(sd1: Models) -> None:
    """Restart 3, dilation end int(0.7 * 10) = 7: dilated on schedule steps 3..6 (the first 4 of stage 2),
    on the spec §7 convs only, by 256 // 128 = 2; never in the base stage."""
    host = TestHost(sd1, JOB, native_size=NATIVE)
    convs = set(map_unet(sd1.unet).conv_values(dilated_blocks(map_unet(sd1.unet), 2)))
    with Recorder(sd1.unet) as record:
        run_direct(host, freescale(host))
    dilated = [call["dilated"] for call in record.calls]
    assert dilated[:10] == [{}] * 10
    assert dilated[10:14] == [dict.fromkeys(convs, 2)] * 4 and dilated[14:] == [{}] * 3
    with Recorder(sd1.unet) as record:
        run_direct(host, freescale(host, freescale_dilation=False))
    assert all(not call["dilated"] for call in record.calls)


def test_scale_fusion_calls_every_self_attention_locally_and_globally(sd1: Models) -> None:
    """Base stage: each attn1 once per UNet call on its own tokens. Stage 2 (latent 32, scale 2): each attn1
    gets one batch of 3x3 windows of half its token grid per side (x 2 CFG rows) and one global call on all
    its tokens."""
    host = TestHost(sd1, Job(width=256, height=256, steps=3), native_size=NATIVE)
    paths = attn1_paths(sd1.unet)
    with Recorder(sd1.unet) as record:
        run_direct(host, freescale(host))
    base, stage = record.calls[:3], record.calls[3:]
    for call in base:
        assert set(call["attn"]) == set(paths) and all(len(v) == 1 and v[0][0] == 2 for v in call["attn"].values())
    for call in stage:
        assert set(call["attn"]) == set(paths)
        for path, seen in call["attn"].items():
            tokens = seen[1][1]
            side = int(tokens**0.5)
            assert seen == [(2 * 9, (side // 2) ** 2, False), (2, tokens, False)], path


def test_scale_fusion_and_dilation_change_the_image_and_are_restored(models: Models) -> None:
    host = TestHost(models, Job(width=256, height=256, steps=3), native_size=NATIVE)
    before = module_state(models.unet)
    full = run_direct(host, freescale(host))
    assert module_state(models.unet) == before
    plain = run_direct(host, freescale(host, freescale_fusion=False, freescale_dilation=False))
    fused = run_direct(host, freescale(host, freescale_dilation=False))
    spatial = run_direct(host, freescale(host, freescale_dilation=False, freescale_blur="hw"))
    outputs = [full, plain, fused, spatial]
    assert all(not torch.equal(a, b) for i, a in enumerate(outputs) for b in outputs[i + 1:])
    assert torch.equal(full, run_direct(host, freescale(host)))  # same seed, same image
    assert module_state(models.unet) == before


def test_different_seed_different_windows(sd1: Models) -> None:
    a = run_direct(host := TestHost(sd1, Job(width=256, height=256, steps=3, seed=1), native_size=NATIVE),
                   freescale(host))
    b = run_direct(host := TestHost(sd1, Job(width=256, height=256, steps=3, seed=2), native_size=NATIVE),
                   freescale(host))
    assert not torch.equal(a, b)


def test_detail_control_pulls_toward_the_upscaled_image(sd1: Models) -> None:
    """Detail 0 gives c = cf^0 = 1 at every step: each step after the first starts from the noised upscaled
    image itself, z0 + sigma_j eps, whatever the sampler did (so the inputs lie on one line in eps)."""
    host = TestHost(sd1, Job(width=256, height=256, steps=6), native_size=NATIVE)
    job = freescale(host, freescale_preset="custom", freescale_detail=0.0, freescale_fusion=False,
                    freescale_dilation=False)
    cascade = job.cascade("first")
    assert cascade is not None
    seen: list[tuple[torch.Tensor, float]] = []

    def spy(call: ModelCall, call_next: Any) -> torch.Tensor:
        seen.append((call.x[0].double(), float(call.sigma[0])))
        return call_next(call)

    run_stages(host, spied(cascade.stages, spy, first=1))
    (x0, s0), (x1, s1) = seen[:2]
    eps = (x1 - x0) / (s1 - s0)
    assert len(seen) == 6 - 1 and eps.std() > 0.5  # restart int(0.3 * 6) = 1: steps 1..5
    for x, sigma in seen[2:]:
        assert torch.allclose(x, x0 + (sigma - s0) * eps, atol=1e-4)
    host2 = TestHost(sd1, Job(width=256, height=256, steps=6), native_size=NATIVE)
    assert not torch.equal(run_direct(host2, job), run_direct(host2, freescale(host2)))


def test_region_mask_sets_detail_per_pixel(sd1: Models) -> None:
    from PIL import Image

    def mask(value_left: int, value_right: int) -> str:
        image = Image.new("L", (8, 8))
        image.putdata([value_left if x < 4 else value_right for y in range(8) for x in range(8)])
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    host = TestHost(sd1, Job(width=256, height=256, steps=4), native_size=NATIVE)
    plain = run_direct(host, freescale(host))
    black = run_direct(host, freescale(host, freescale_mask=mask(0, 0), freescale_background_detail=2.0))
    assert torch.equal(plain, black)  # all background, background detail = detail
    white = run_direct(host, freescale(host, freescale_mask=mask(255, 255), freescale_background_detail=0.5))
    assert torch.equal(plain, white)  # all foreground
    half = freescale(host, freescale_mask=mask(0, 255), freescale_background_detail=0.5)
    assert "region mask (background 0.5)" in half.lines[0]
    assert half.infotext["FreeScale region mask"].startswith("sha256 ") and "FreeScale mask" not in half.infotext
    assert not torch.equal(plain, run_direct(host, half))


def test_unet_restored_after_an_error_in_an_upscaling_stage(models: Models) -> None:
    host = TestHost(models, Job(width=256, height=256, steps=3), native_size=NATIVE)
    job = freescale(host)
    before = module_state(models.unet)
    calls = []

    def explode(_module: Any, args: Any) -> None:
        calls.append(args[0].shape)
        if len(calls) == 7:  # inside a self-attention of stage 2
            raise Boom()

    handles = [models.unet.get_submodule(path).register_forward_pre_hook(explode) for path in attn1_paths(models.unet)]
    try:
        with pytest.raises(Boom):
            run_direct(host, job)
    finally:
        for handle in handles:
            handle.remove()
    assert module_state(models.unet) == before and host.slot.current is None


def test_hires_entry_upscales_the_first_pass(sd1: Models) -> None:
    host = TestHost(sd1, Job(width=128, height=128, steps=4), native_size=NATIVE)
    job = freescale(host, PassSize("hires", 256, 256, 5))
    assert set(job.passes) == {"hires"} and "hires pass 256x256: 256x256 from step 2 of 5" in job.lines[0]
    with CountCalls(sd1.unet) as calls:
        out = run_hires(host, job)
    assert out.shape == (1, 4, 32, 32) and calls.batches == [2] * (4 + 4)


def test_three_stages_and_sizes(sd1: Models) -> None:
    host = TestHost(sd1, Job(width=512, height=384, steps=2), native_size=NATIVE)
    job = freescale(host)
    cascade = job.cascade("first")
    assert cascade is not None
    # base: the native pixel count at 4:3 rounded to 64 px (128x128 at this tiny native), ~2x per side, the target
    assert [s.size for s in cascade.stages] == [(16, 16), (24, 32), (48, 64)]
    assert run_direct(host, job).shape == (1, 4, 48, 64)


def test_too_small_a_target_is_refused_with_the_field(sd1: Models) -> None:
    host = TestHost(sd1, Job(width=128, height=128, steps=3), native_size=NATIVE)
    job = freescale(host)
    assert not job.passes and "FreeScale not applied: Width and Height 128x128 must have more pixels" in job.warnings[0]


def test_sdxl_every_stage_is_conditioned_on_the_base_size(sdxl: Models) -> None:
    host = TestHost(sdxl, Job(width=256, height=256, steps=3), native_size=NATIVE)
    cascade = freescale(host).cascade("first")
    assert cascade is not None
    seen: list[torch.Tensor] = []

    def spy(call: ModelCall, call_next: Any) -> torch.Tensor:
        seen.append(call.cond["vector"])
        return call_next(call)

    run_stages(host, spied(cascade.stages, spy))
    sizes = embed_numbers([128, 128])
    assert len(seen) == 3 + 3  # restart int(0.3 * 3) = 0
    for vector in seen:
        assert torch.allclose(vector[:, ORIGINAL_SLICE], sizes.expand(vector.shape[0], -1))
        assert torch.allclose(vector[:, TARGET_SLICE], sizes.expand(vector.shape[0], -1))


def test_sd2_layout_runs() -> None:
    from tests.host.host import build_models

    sd2 = build_models("sd2")
    host = TestHost(sd2, Job(width=256, height=256, steps=3), native_size=NATIVE)
    out = run_direct(host, freescale(host))
    assert out.shape == (1, 4, 32, 32) and torch.isfinite(out).all()


def test_disabled_plans_nothing(sd1: Models) -> None:
    host = TestHost(sd1, JOB, native_size=NATIVE)
    assert not freescale(host, enabled=False).runs and freescale(host).runs
