"""A1111's ControlNet units through one model call (hosts.a1111.ControlUnits).

`Unit` has the attributes sd-webui-controlnet's hook reads from a `ControlParams` (its hint and hires
hint, the caches derived from them, the region mask, start/end and the on/off state it sets from
A1111's step counter). During the call the model sees each unit's hint for the call's rows and
geometry and the on/off state of the stage's own step; afterwards, also after an error, every value
is the unit's own again.
"""
from __future__ import annotations

import pytest
import torch

from lib_hires.hosts.a1111 import ControlUnits
from lib_hires.ops import control_hint
from lib_hires.ops.windows import Window
from lib_hires.sampling.hooks import ModelCall, Rows
from lib_hires.sampling.steps import Step

PASS_ROWS = Rows((0, 0), (False, True))


class Unit:
    def __init__(self, hint: torch.Tensor, hr_hint: torch.Tensor | None = None, start: float = 0.0,
                 stop: float = 1.0) -> None:
        self._hint_cond = hint
        self.hr_hint_cond = hr_hint
        self.used_hint_cond: torch.Tensor | None = None
        self.used_hint_cond_latent = "latent cache"
        self.used_hint_inpaint_hijack = None
        self.effective_region_mask: torch.Tensor | None = None
        self.start_guidance_percent = start
        self.stop_guidance_percent = stop
        self.guidance_stopped = False

    @property
    def hint_cond(self) -> torch.Tensor:
        return self._hint_cond

    def state(self) -> dict[str, object]:
        return dict(vars(self))


def call_at(step: Step, x: torch.Tensor, pixels: object = None) -> ModelCall:
    return ModelCall(x, torch.ones(x.shape[0]), None, PASS_ROWS, step, lambda c, idx: c, pixels=pixels)  # type: ignore[arg-type]


def test_a_tile_sees_its_crop_of_the_hint_resized_to_the_stage() -> None:
    hint = torch.rand(1, 3, 256, 256)
    unit = Unit(hint)
    before = unit.state()
    window = Window(4, 8, 8, 8)
    x = torch.zeros(2, 4, 16, 16)
    tile = call_at(Step(0, 4), x).with_pixels(lambda h: control_hint.crop(h, window), x=x[..., 4:12, 8:16])
    seen = {}

    def model() -> torch.Tensor:
        seen["hint"], seen["used"] = unit.hint_cond, unit.used_hint_cond
        seen["latent"], seen["hr"] = unit.used_hint_cond_latent, unit.hr_hint_cond
        return torch.zeros(1)

    ControlUnits([unit], hires=False).run(tile, PASS_ROWS, (16, 16), model)
    stage = control_hint.resize(hint, 128, 128)  # the stage's latent is 16 x 16: a 128 px hint
    assert torch.equal(seen["hint"], stage[[0, 0], :, 32:96, 64:128]) and seen["used"] is seen["hint"]
    assert seen["latent"] is None and seen["hr"] is None  # the first pass: no hires hint, so not "high res"
    assert unit.state() == before


def test_the_pass_call_at_the_hint_size_keeps_the_extensions_own_hint() -> None:
    hint = torch.rand(1, 3, 128, 128)
    unit = Unit(hint)
    seen = {}
    ControlUnits([unit], hires=False).run(call_at(Step(0, 4), torch.zeros(2, 4, 16, 16)), PASS_ROWS, (16, 16),
                                          lambda: seen.setdefault("hint", unit.hint_cond))
    assert seen["hint"] is hint


def test_hires_stages_use_the_hires_hint_and_stay_high_res() -> None:
    hint, hr_hint = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 256, 256)
    unit = Unit(hint, hr_hint)
    seen = {}

    def model() -> None:
        seen["hint"], seen["hr"] = unit.hint_cond, unit.hr_hint_cond

    ControlUnits([unit], hires=True).run(call_at(Step(1, 4), torch.zeros(2, 4, 24, 24)), PASS_ROWS, (24, 24), model)
    expected = control_hint.resize(hr_hint, 192, 192)[[0, 0]]
    assert torch.equal(seen["hint"], expected) and seen["hr"] is seen["hint"]  # equal sizes: the hook's "hires"


@pytest.mark.parametrize(("start", "stop", "on"), [(0.0, 1.0, [1, 1, 1, 1]), (0.0, 0.5, [1, 1, 1, 0]),
                                                   (0.5, 1.0, [0, 0, 1, 1])])
def test_start_and_end_are_fractions_of_the_stages_own_steps(start: float, stop: float, on: list[int]) -> None:
    unit = Unit(torch.rand(1, 3, 128, 128), start=start, stop=stop)
    unit.guidance_stopped = True  # what the extension set from the job's step counter
    seen = []
    for index in range(4):
        ControlUnits([unit], hires=False).run(call_at(Step(index, 4), torch.zeros(2, 4, 16, 16)), PASS_ROWS, (16, 16),
                                              lambda: seen.append(int(not unit.guidance_stopped)))
    assert seen == on and unit.guidance_stopped is True


def test_everything_restored_after_an_error() -> None:
    unit = Unit(torch.rand(1, 3, 256, 256))
    unit.effective_region_mask = torch.rand(1, 1, 256, 256)
    before = unit.state()
    x = torch.zeros(2, 4, 16, 16)
    tile = call_at(Step(2, 4), x).with_pixels(lambda h: h[..., :64, :64], x=x[..., :8, :8])

    def model() -> None:
        assert unit.effective_region_mask is not None and unit.effective_region_mask.shape == (2, 1, 64, 64)
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        ControlUnits([unit], hires=False).run(tile, PASS_ROWS, (16, 16), model)
    assert unit.state() == before
