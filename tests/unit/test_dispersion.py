"""The dispersion transform R (ScaleCrafter App. F; scalecrafter.md §5.2) and kernel dispersion."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from lib_hires.ops.dispersion import disperse_kernel, solve_dispersion

CSV = Path(__file__).resolve().parents[1] / "data" / "scalecrafter_R_disperse_3x3_to_5x5.csv"


@pytest.fixture(scope="module")
def R() -> Tensor:
    return solve_dispersion()


def test_R_matches_the_official_transform(R: Tensor) -> None:
    reference = torch.from_numpy(np.loadtxt(CSV, delimiter=",", comments="#"))
    assert R.dtype == torch.float64 and R.shape == (25, 9)
    assert (R - reference).abs().max().item() <= 1e-9


def test_other_eta_gives_a_different_R(R: Tensor) -> None:
    # eta actually weights the pixel-level equations (the CSV is only reproduced with 0.05).
    assert (solve_dispersion(eta=0.5) - R).abs().max().item() > 1e-3


def test_centre_tap_maps_only_to_the_centre(R: Tensor) -> None:
    expected = torch.zeros(25, dtype=torch.float64)
    expected[12] = 1.0
    torch.testing.assert_close(R[:, 4], expected, rtol=0, atol=1e-12)
    assert R[12, 4].item() == pytest.approx(1.0, abs=1e-12)


def _dihedral(kernel: Tensor) -> list[Tensor]:
    rotations = [torch.rot90(kernel, k, dims=(-2, -1)) for k in range(4)]
    return rotations + [r.transpose(-2, -1) for r in rotations]


def test_R_commutes_with_the_symmetries_of_the_square(R: Tensor) -> None:
    small = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    apply = lambda k: (R @ k.reshape(9)).reshape(5, 5)  # noqa: E731
    for g_small, g_large in zip(_dihedral(small), _dihedral(apply(small))):
        torch.testing.assert_close(apply(g_small), g_large, rtol=0, atol=1e-12)


def test_column_sums(R: Tensor) -> None:
    sums = R.sum(dim=0).reshape(3, 3)
    corner, edge = sums[0, 0].item(), sums[0, 1].item()
    assert corner == pytest.approx(1.127, abs=5e-4)
    assert edge == pytest.approx(1.061, abs=5e-4)
    assert sums[1, 1].item() == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(sums, torch.tensor([[corner, edge, corner], [edge, 1.0, edge],
                                                   [corner, edge, corner]], dtype=torch.float64))


def test_disperse_kernel_applies_R_per_channel_pair_row_major(R: Tensor) -> None:
    weight = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    out = disperse_kernel(weight, R)
    assert out.shape == (6, 4, 5, 5) and out.dtype == weight.dtype
    for o, i in ((0, 0), (5, 3), (2, 1)):
        expected = (R @ weight[o, i].double().reshape(9)).reshape(5, 5).float()
        torch.testing.assert_close(out[o, i], expected)


def test_disperse_kernel_keeps_half_precision_and_is_accurate(R: Tensor) -> None:
    weight = torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(2)).half()
    out = disperse_kernel(weight, R)
    assert out.dtype == torch.float16
    exact = disperse_kernel(weight.double(), R)
    # Correctly rounded to float16 (half an ulp, plus float32 noise), not accumulated in float16.
    error = (out.double() - exact).abs()
    assert bool((error <= exact.abs() * 2.0**-11 * 1.01 + 2.0**-25).all())


def test_disperse_kernel_rejects_mismatched_shapes(R: Tensor) -> None:
    with pytest.raises(ValueError):
        disperse_kernel(torch.zeros(2, 2, 5, 5), R)
    with pytest.raises(ValueError):
        disperse_kernel(torch.zeros(2, 2, 3), R)


@pytest.mark.parametrize("bad", [dict(small=2), dict(large=4), dict(input_size=0), dict(scale=0),
                                 dict(eta=-1.0)])
def test_solve_dispersion_rejects_bad_parameters(bad: dict) -> None:
    with pytest.raises(ValueError):
        solve_dispersion(**bad)
