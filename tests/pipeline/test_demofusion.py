"""DemoFusion and AccDiffusion on the test host: phases and UNet evaluations per step, determinism, the
AccDiffusion switches, attention recording, patch prompts on the windows, restore after an error, SD1
and SDXL layouts."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from lib_hires.job import JobPlan, PassSize, plan_job
from lib_hires.methods.accdiffusion import AttentionStore, CapturePlan, PatchPrompts
from lib_hires.ops.conditioning import PromptCond
from lib_hires.ops.windows import Window
from lib_hires.params import GROUPS, validate_api_dict
from lib_hires.patching import PatchScope
from lib_hires.sampling.driver import StageInput
from lib_hires.sampling.hooks import Rows
from tests.host.host import Job, Models, TestHost
from tests.host.state import module_state
from tests.pipeline.test_cascade import run_direct, run_hires
from tests.pipeline.test_sampling_core import CountCalls

NATIVE = 128  # a tiny "native" size keeps the tests fast: windows of 16 latent px


def plan(host: TestHost, method: str, hires: PassSize | None = None, **data: object) -> JobPlan:
    settings = validate_api_dict(GROUPS, {"enabled": True, "method": method, **data})
    first = PassSize("first", host.job.width, host.job.height, host.job.steps)
    return plan_job(settings, host.unet, host.native_size, first, hires, seed=host.job.seed, cfg_scale=host.job.cfg_scale)


SMALL = Job(width=256, height=256, steps=3)


def direct(models: Models, method: str, job: Job = SMALL, **data: object) -> torch.Tensor:
    host = TestHost(models, job, native_size=NATIVE)
    return run_direct(host, plan(host, method, **data))


@pytest.mark.parametrize(("local", "windows"), [("overlap", 9), ("fstd", 4)])
def test_unet_evaluations_per_step_equal_the_formula(sd1: Models, local: str, windows: int) -> None:
    """Phase 2 at 256 px (latent 32, windows of 16 every 8 -> 3x3, or FSTD's 2x2 tiles) and 2^2
    sub-lattices, by a view batch of 4: ceil(w/4) + 1 calls per step with 2 rows (CFG) per view."""
    host = TestHost(sd1, Job(width=256, height=256, steps=3), native_size=NATIVE)
    job = plan(host, "demofusion", demofusion_view_batch=4, demofusion_local=local)
    assert f"({windows} {'windows' if local == 'overlap' else 'FSTD tiles'} + 4 sub-lattices per step, by 4)" \
        in job.lines[0]
    with CountCalls(sd1.unet) as calls:
        out = run_direct(host, job)
    assert out.shape == (1, 4, 32, 32)
    window_batches = [8] * (windows // 4) + ([2 * (windows % 4)] if windows % 4 else [])
    assert calls.batches == [2] * 3 + (window_batches + [8]) * 3
    assert host.stage_steps == [3, 3] and host.stage_inputs == [((1, 4, 16, 16), 4), ((1, 4, 32, 32), 4)]


def test_three_phases_with_nine_sub_lattices(sd1: Models) -> None:
    host = TestHost(sd1, Job(width=384, height=384, steps=2), native_size=NATIVE)
    job = plan(host, "demofusion")
    with CountCalls(sd1.unet) as calls:
        out = run_direct(host, job)
    assert out.shape == (1, 4, 48, 48)
    # phase 2: 32x32 latent, 9 windows + 4 lattices; phase 3: 48x48, 25 windows (16 + 9) + 9 lattices
    assert calls.batches == [2] * 2 + [18, 8] * 2 + [32, 18, 18] * 2


def test_sd2_layout_runs_both_methods() -> None:
    """SD2.x (spec §7, ours): the same windows and lattices on SD2's block layout (1024-wide context)."""
    from tests.host.host import build_models

    sd2 = build_models("sd2")
    demo, acc = direct(sd2, "demofusion"), direct(sd2, "accdiffusion")
    assert demo.shape == acc.shape == (1, 4, 32, 32) and not torch.equal(demo, acc)
    assert torch.isfinite(acc).all()


@pytest.mark.parametrize("method", ["demofusion", "accdiffusion"])
def test_disabled_plans_nothing(sd1: Models, method: str) -> None:
    host = TestHost(sd1, SMALL, native_size=NATIVE)
    assert not plan(host, method, enabled=False).runs and plan(host, method).runs


@pytest.mark.parametrize("method", ["demofusion", "accdiffusion"])
def test_same_seed_same_image_other_seed_differs(models: Models, method: str) -> None:
    a = direct(models, method)
    b = direct(models, method)
    c = direct(models, method, Job(width=256, height=256, steps=3, seed=2))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.isfinite(a).all()


def test_phases_end_with_the_first_phase_statistics(sd1: Models) -> None:
    host = TestHost(sd1, Job(width=256, height=256, steps=3), native_size=NATIVE)
    job = plan(host, "demofusion")
    cascade = job.cascade("first")
    assert cascade is not None
    from lib_hires.sampling.driver import run_stages

    first = run_stages(host, cascade.stages[:1])
    out = run_direct(TestHost(sd1, host.job, native_size=NATIVE), job)
    assert float(out.mean()) == pytest.approx(float(first.mean()), abs=1e-4)
    assert float(out.std()) == pytest.approx(float(first.std()), rel=1e-4)


@pytest.mark.parametrize("entry", ["direct", "hires"])
def test_accdiffusion_without_its_modules_is_demofusion(models: Models, entry: str) -> None:
    off = {"accdiffusion_patch_prompts": False, "accdiffusion_interaction": "off"}
    if entry == "direct":
        assert torch.equal(direct(models, "accdiffusion", **off), direct(models, "demofusion"))
        assert not torch.equal(direct(models, "accdiffusion"), direct(models, "demofusion"))
        return
    outs = []
    for method, data in (("accdiffusion", off), ("demofusion", {}), ("accdiffusion", {})):
        host = TestHost(models, Job(width=128, height=128, steps=3), native_size=NATIVE)
        outs.append(run_hires(host, plan(host, method, PassSize("hires", 256, 256, 3), **data)))
    assert outs[0].shape == (1, 4, 32, 32)
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[2], outs[1])


def test_patch_prompt_of_every_word_is_the_prompt_itself(models: Models) -> None:
    """Threshold 0 keeps every word in every window, and the patch conditioning is then the prompt's own."""
    host = TestHost(models, Job(prompt="a photo of a cat and a dog"), native_size=NATIVE)
    stage = StageInput(1, torch.zeros(1, 4, 32, 32), torch.zeros(1, 4, 32, 32), host.sigmas(3), None, host)
    patches = PatchPrompts(FixedMaps(), stage, 0.0, "tokens", lambda text: None)
    words = patches.words(0, [Window(0, 0, 16, 16), Window(16, 16, 16, 16)], (32, 32), 0)
    assert words == [tuple(range(1, 9))] * 2
    full = patches.prompt(0, words[0])
    context = host.cond["crossattn"] if isinstance(host.cond, dict) else host.cond
    assert torch.equal(full.context, context[:1])
    if models.family == "sdxl":
        assert full.pooled is not None and torch.equal(full.pooled, host.cond["vector"][:1, :1280])


def test_each_module_of_accdiffusion_changes_the_image(sd1: Models) -> None:
    both = direct(sd1, "accdiffusion")
    prompts_only = direct(sd1, "accdiffusion", accdiffusion_interaction="off")
    position = direct(sd1, "accdiffusion", accdiffusion_interaction="position")
    assert not torch.equal(both, prompts_only) and not torch.equal(both, position)


def test_attention_is_recorded_at_a_quarter_of_the_latent(models: Models) -> None:
    host = TestHost(models, Job(width=128, height=128, steps=2, batch_size=2), native_size=NATIVE)
    store = AttentionStore()
    before = module_state(models.unet)
    with PatchScope() as scope:
        hooks = CapturePlan(store).install(models.unet, scope, lambda text: None)
        sigmas = host.sigmas(2)
        host.sample(host.noise((2, 4, 16, 16), 0) * sigmas[0], sigmas, hooks, 0)
    assert module_state(models.unet) == before
    quarter = ("input_blocks.7.", "input_blocks.8.") + (
        ("output_blocks.3.", "output_blocks.4.", "output_blocks.5.") if models.family == "sd1" else
        ("output_blocks.0.", "output_blocks.1.", "output_blocks.2."))  # the middle block is left out
    heads = sum(int(m.heads) for name, m in models.unet.named_modules()
                if name.endswith("attn2") and name.startswith(quarter))
    maps = store.maps(0)
    assert maps is not None and store.maps(1) is not None and store.maps(2) is None
    assert maps.shape == (77, 4, 4)
    assert store.calls == 2 and store.counts[0] == 2 * heads > 0
    assert torch.allclose(maps.sum(dim=0), torch.ones(4, 4), atol=1e-4)  # softmax over the context


class FixedMaps(AttentionStore):
    """A store holding a synthetic map: word 'cat' (position 5) on the left half, 'dog' (8) on the right."""

    def __init__(self) -> None:
        super().__init__()
        self.grid = (4, 4)
        maps = torch.full((77, 4, 4), 0.01)  # constant: no pixel above the mean
        maps[5, :, :2] = 1.0
        maps[8, :, 2:] = 1.0
        self.sums[0] = maps.flatten(1).transpose(0, 1)
        self.counts[0] = 1


def test_patch_prompts_reach_each_window_on_the_cond_rows(sd1: Models) -> None:
    host = TestHost(sd1, Job(prompt="a photo of a cat and a dog"), native_size=NATIVE)
    stage = StageInput(1, torch.zeros(1, 4, 32, 32), torch.zeros(1, 4, 32, 32), host.sigmas(3), None, host)
    warnings: list[str] = []
    patches = PatchPrompts(FixedMaps(), stage, 0.3, "tokens", warnings.append)
    windows = [Window(0, 0, 16, 16), Window(0, 16, 16, 16), Window(8, 8, 16, 16)]
    words = patches.words(0, windows, (32, 32), 0)
    assert words == [(5,), (8,), (5, 8)]
    assert [patches.text(0, w) for w in words] == ["cat", "dog", "cat dog"]
    rows = Rows((0, 0), (False, True))
    cond = torch.cat([host.cond, host.uncond] * 3)
    out: Any = patches.condition(0)(cond, windows, rows, (32, 32))
    for k, positions in enumerate(words):
        assert torch.equal(out[2 * k], host.encode_prompt(host.job.prompt, [p - 1 for p in positions])[0])
        assert torch.equal(out[2 * k + 1], host.uncond[0])
    assert not warnings
    several = patches.condition(0)(torch.cat([host.cond, host.cond, host.uncond]), windows[:1],
                                   Rows((0, 0, 0), (False, False, True)), (32, 32))
    assert torch.equal(several, torch.cat([host.cond, host.cond, host.uncond])) and len(warnings) == 1
    assert isinstance(patches.prompt(0, (5,)), PromptCond)


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("method", ["demofusion", "accdiffusion"])
def test_unet_restored_after_an_error_in_an_upscaling_phase(models: Models, method: str) -> None:
    host = TestHost(models, Job(width=256, height=256, steps=2), native_size=NATIVE)
    job = plan(host, method)
    before = module_state(models.unet)
    calls = []

    def explode(_module: Any, args: Any) -> None:
        calls.append(args[0].shape[0])
        if len(calls) == 4:  # inside phase 2
            raise Boom()

    handle = models.unet.register_forward_pre_hook(explode)
    try:
        with pytest.raises(Boom):
            run_direct(host, job)
    finally:
        handle.remove()
    assert module_state(models.unet) == before


def test_interrupt_in_phase_two_returns_its_size(sd1: Models) -> None:
    host = TestHost(sd1, Job(width=384, height=384, steps=2), native_size=NATIVE)
    job = plan(host, "demofusion")
    seen = []

    def stop(_module: Any, args: Any) -> None:
        seen.append(args[0].shape)
        if len(seen) == 3:
            host.interrupt = True

    handle = sd1.unet.register_forward_pre_hook(stop)
    try:
        out = run_direct(host, job)
    finally:
        handle.remove()
    assert out.shape == (1, 4, 32, 32)
