"""Noise-damped CFG through the host's own CFG combination (ScaleCrafter §3.2)."""
from __future__ import annotations

import torch

from lib_hires.sampling.guidance import noise_damped_cfg
from lib_hires.sampling.hooks import Rows


def host_cfg(out: torch.Tensor, rows: Rows, image: int, weights: list[float]) -> torch.Tensor:
    """A1111-style CFG for one image: D_u + sum_k w_k (D_ck - D_u) over its cond rows."""
    uncond = next(i for i, (im, u) in enumerate(zip(rows.image, rows.uncond)) if im == image and u)
    conds = [i for i, (im, u) in enumerate(zip(rows.image, rows.uncond)) if im == image and not u]
    return out[uncond] + sum(w * (out[c] - out[uncond]) for w, c in zip(weights, conds))


def test_shift_turns_the_hosts_cfg_into_the_noise_damped_formula() -> None:
    torch.manual_seed(0)
    # A1111 layout with an AND prompt on image 0: cond 0, cond 0, cond 1, uncond 0, uncond 1
    rows = Rows((0, 0, 1, 0, 1), (False, False, False, True, True))
    out = torch.randn(5, 4, 8, 8)
    nd_rows = rows.take(rows.where(uncond=True))
    nd = torch.randn(2, 4, 8, 8)
    shifted = noise_damped_cfg(out, rows, nd, nd_rows)
    for image, weights in ((0, [4.0, 3.0]), (1, [7.5])):
        expected = nd[image] + sum(w * (out[c] - out[3 + image])
                                   for w, c in zip(weights, [i for i in (0, 1, 2) if rows.image[i] == image]))
        assert torch.allclose(host_cfg(shifted, rows, image, weights), expected, atol=1e-5)
    assert torch.equal(out, out.clone())  # input untouched


def test_forge_layout_uncond_first_and_scale_one() -> None:
    torch.manual_seed(1)
    rows = Rows((0, 1, 0, 1), (True, True, False, False))
    out, nd = torch.randn(4, 3), torch.randn(2, 3)
    shifted = noise_damped_cfg(out, rows, nd, rows.take([0, 1]))
    assert torch.allclose(shifted[0], nd[0]) and torch.allclose(shifted[1], nd[1])
    # at CFG scale 1 the host returns the cond row: cond + (nd_u - u), the formula with w = 1
    assert torch.allclose(host_cfg(shifted, rows, 1, [1.0]), nd[1] + out[3] - out[1])


def test_images_without_an_uncond_row_in_this_call_are_left_alone() -> None:
    rows = Rows((0, 1, 0), (False, False, True))
    out, nd = torch.randn(3, 2), torch.randn(1, 2)
    shifted = noise_damped_cfg(out, rows, nd, rows.take([2]))
    assert torch.equal(shifted[1], out[1])
    assert torch.allclose(shifted[0] - out[0], nd[0] - out[2])
