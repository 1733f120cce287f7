"""Re-dilated / dispersed conv forwards and the progressive schedule (scalecrafter.md §2, §3, §5.1)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lib_hires.ops.dispersion import disperse_kernel, solve_dispersion
from lib_hires.ops.redilation import dispersed_forward, progressive_factor, redilated_forward


class RecordingConv(nn.Conv2d):
    """A conv that records every assignment to `dilation`/`padding` after construction."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.assignments: list[str] = []

    def __setattr__(self, name: str, value: object) -> None:
        if name in ("dilation", "padding") and "assignments" in self.__dict__:
            self.assignments.append(name)
        super().__setattr__(name, value)


def make_conv(stride: int = 1, channels: int = 4, seed: int = 0,
              cls: type[nn.Conv2d] = nn.Conv2d) -> nn.Conv2d:
    torch.manual_seed(seed)
    return cls(channels, channels + 2, 3, stride=stride, padding=1)


def inputs(height: int = 16, width: int = 20, channels: int = 4, seed: int = 1) -> Tensor:
    return torch.randn(2, channels, height, width, generator=torch.Generator().manual_seed(seed))


def test_factor_one_is_the_forward_bit_for_bit_and_touches_nothing() -> None:
    conv = make_conv(cls=RecordingConv)
    x = inputs()
    calls: list[tuple] = []

    def forward(t: Tensor) -> Tensor:
        calls.append((conv.dilation, conv.padding))
        return conv(t)

    out = redilated_forward(conv, forward, x, 1)
    assert torch.equal(out, conv(x))
    assert calls == [((1, 1), (1, 1))]
    assert conv.assignments == []


@pytest.mark.parametrize("factor", [2, 3, 4])
@pytest.mark.parametrize("stride", [1, 2])
def test_integer_factor_equals_dilated_conv2d(factor: int, stride: int) -> None:
    conv = make_conv(stride)
    x = inputs()
    out = redilated_forward(conv, conv.forward, x, float(factor))
    expected = F.conv2d(x, conv.weight, conv.bias, stride, padding=factor, dilation=factor)
    assert torch.equal(out, expected)
    assert out.shape[-2:] == (16 // stride, 20 // stride)
    assert conv.dilation == (1, 1) and conv.padding == (1, 1)


@pytest.mark.parametrize("stride", [1, 2])
def test_fractional_factor_resizes_by_ceil_over_f_and_back(stride: int) -> None:
    conv = make_conv(stride)
    x = inputs(16, 20)
    seen: list[tuple] = []

    def forward(t: Tensor) -> Tensor:
        seen.append((tuple(t.shape[-2:]), conv.dilation, conv.padding))
        return conv(t)

    out = redilated_forward(conv, forward, x, 2.5)
    # d = 3, input scaled by 3 / 2.5 = 1.2: 16 -> round(19.2) = 19, 20 -> 24.
    assert seen == [((19, 24), (3, 3), (3, 3))]
    assert out.shape == (2, 6, 16 // stride, 20 // stride)
    resized = F.interpolate(x, size=(19, 24), mode="bilinear", align_corners=False)
    y = F.conv2d(resized, conv.weight, conv.bias, stride, padding=3, dilation=3)
    expected = F.interpolate(y, size=(16 // stride, 20 // stride), mode="bilinear", align_corners=False)
    assert torch.equal(out, expected)
    assert conv.dilation == (1, 1) and conv.padding == (1, 1)


def test_odd_input_to_a_downsampler_uses_the_int_rule() -> None:
    conv = make_conv(stride=2)
    out = redilated_forward(conv, conv.forward, inputs(15, 17), 2.0)
    assert out.shape[-2:] == (7, 8)  # int(15 / 2), int(17 / 2); the plain conv would give 8 x 9


@pytest.mark.parametrize("factor", [1.5, 2.0, 2.2, 2.5, 3.0, 3.5])
def test_effective_dilation_on_the_original_grid_is_f(factor: float) -> None:
    # A kernel whose only tap is the right-hand one shifts its input by the dilation: on the
    # original grid, the shift (centroid of the response to an impulse) must be f, also when f
    # is reached through the resize trick (up to the sampling error of bilinear resizing).
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 2] = 1.0
    impulse = torch.zeros(1, 1, 41, 41)
    impulse[..., 20, 20] = 1.0
    with torch.no_grad():
        out = redilated_forward(conv, conv.forward, impulse, factor)[0, 0]
    positions = torch.arange(41.0)
    columns, rows = out.sum(0), out.sum(1)
    assert float((columns * positions).sum() / columns.sum()) == pytest.approx(20 - factor, abs=0.15)
    assert float((rows * positions).sum() / rows.sum()) == pytest.approx(20, abs=1e-4)


def test_attributes_are_restored_when_forward_raises() -> None:
    conv = make_conv()

    def forward(t: Tensor) -> Tensor:
        assert conv.dilation == (3, 3)
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        redilated_forward(conv, forward, inputs(), 2.5)
    assert conv.dilation == (1, 1) and conv.padding == (1, 1)


@pytest.mark.parametrize("factor", [0.5, 0.0, float("nan")])
def test_factors_below_one_are_rejected(factor: float) -> None:
    conv = make_conv()
    with pytest.raises(ValueError, match=">= 1"):
        redilated_forward(conv, conv.forward, inputs(), factor)


# --- progressive schedule: the worked table of scalecrafter.md §3 ------------------------------

@pytest.mark.parametrize(("tau", "factor", "stages"), [
    (35, 4, [(4, range(0, 9)), (3, range(9, 18)), (2, range(18, 35))]),
    (35, 3, [(3, range(0, 12)), (2, range(12, 35))]),
    (35, 2, [(2, range(0, 35))]),
    (37, 4, [(4, range(0, 10)), (3, range(10, 19)), (2, range(19, 37))]),
    (37, 3, [(3, range(0, 13)), (2, range(13, 37))]),
])
def test_progressive_schedule_matches_the_spec_table(tau: int, factor: int, stages: list) -> None:
    expected = [value for value, steps in stages for _ in steps]
    assert [progressive_factor(factor, tau, i) for i in range(tau)] == expected


def test_progressive_is_inactive_from_tau_on() -> None:
    assert [progressive_factor(4, 35, i) for i in (35, 36, 49)] == [1.0, 1.0, 1.0]
    assert progressive_factor(4, 0, 0) == 1.0


@pytest.mark.parametrize("factor", [1.0, 1.5, 2.0, 2.5, 3.5, 4.0])
def test_progressive_never_increases_a_factor(factor: float) -> None:
    schedule = [progressive_factor(factor, 35, i) for i in range(35)]
    assert max(schedule) <= factor
    assert schedule == sorted(schedule, reverse=True)
    assert schedule[-1] == min(factor, 2.0)


def test_progressive_keeps_a_fractional_factor_then_decays() -> None:
    assert progressive_factor(2.5, 35, 0) == 2.5
    assert progressive_factor(1.5, 35, 0) == 1.5  # the uncapped official formula would give 2
    assert progressive_factor(3.5, 35, 34) == 2.0


# --- dispersed convolution (§5.1) ---------------------------------------------------------------

@pytest.fixture(scope="module")
def R() -> Tensor:
    return solve_dispersion()


@pytest.mark.parametrize("stride", [1, 2])
def test_dispersed_integer_half_factor_is_a_dilated_5x5_conv(R: Tensor, stride: int) -> None:
    conv = make_conv(stride)
    kernel5 = disperse_kernel(conv.weight, R)
    x = inputs()
    out = dispersed_forward(conv, x, 4.0, kernel5)
    expected = F.conv2d(x, kernel5, conv.bias, stride, padding=4, dilation=2)
    assert torch.equal(out, expected)
    assert out.shape == conv(x).shape


@pytest.mark.parametrize("stride", [1, 2])
def test_dispersed_fractional_half_factor_uses_the_resize_trick(R: Tensor, stride: int) -> None:
    conv = make_conv(stride)
    kernel5 = disperse_kernel(conv.weight, R)
    x = inputs(16, 20)
    out = dispersed_forward(conv, x, 3.0, kernel5)  # f/2 = 1.5: dilation 2 on a 4/3 enlarged map
    resized = F.interpolate(x, size=(21, 27), mode="bilinear", align_corners=False)
    y = F.conv2d(resized, kernel5, conv.bias, stride, padding=4, dilation=2)
    expected = F.interpolate(y, size=(16 // stride, 20 // stride), mode="bilinear", align_corners=False)
    assert torch.equal(out, expected)


def test_dispersed_kernel_spans_the_same_window_as_the_redilated_3x3(R: Tensor) -> None:
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(1.0, 10.0).view(1, 1, 3, 3))
    impulse = torch.zeros(1, 1, 33, 33)
    impulse[..., 16, 16] = 1.0
    dispersed = dispersed_forward(conv, impulse, 4.0, disperse_kernel(conv.weight, R))
    redilated = redilated_forward(conv, conv.forward, impulse, 4.0)
    support = lambda t: (t[0, 0].abs() > 1e-9).nonzero()  # noqa: E731
    assert support(dispersed).min().item() == support(redilated).min().item() == 12
    assert support(dispersed).max().item() == support(redilated).max().item() == 20
    # The 5x5 kernel at dilation 2 also fills the taps between the 3x3's (a denser window).
    assert len(support(dispersed)) == 25 > len(support(redilated)) == 9


@pytest.mark.parametrize(("factor", "stride"), [(2.0, 1), (4.0, 1), (6.0, 1), (4.0, 2), (6.0, 2)])
def test_centre_tap_kernel_behaves_like_the_3x3_centre_tap(R: Tensor, factor: float, stride: int) -> None:
    conv = make_conv(stride)
    with torch.no_grad():
        centre = conv.weight[..., 1, 1].clone()
        conv.weight.zero_()
        conv.weight[..., 1, 1] = centre
    x = inputs()
    out = dispersed_forward(conv, x, factor, disperse_kernel(conv.weight, R))
    torch.testing.assert_close(out, conv(x), rtol=1e-5, atol=1e-6)


def test_dispersed_casts_kernel_to_the_input_dtype(R: Tensor) -> None:
    conv = make_conv()
    kernel5 = disperse_kernel(conv.weight, R)
    x = inputs().double()
    out = dispersed_forward(conv, x, 4.0, kernel5)
    assert out.dtype == torch.float64
    expected = F.conv2d(x, kernel5.double(), conv.bias.double(), 1, padding=4, dilation=2)
    torch.testing.assert_close(out, expected)


def test_dispersed_rejects_a_kernel_of_the_wrong_shape() -> None:
    conv = make_conv()
    with pytest.raises(ValueError, match="shape"):
        dispersed_forward(conv, inputs(), 4.0, conv.weight)
