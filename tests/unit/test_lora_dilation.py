"""A1111's functional LoRA form follows re-dilation (hosts.a1111.lora_branches_follow).

With A1111's option "LoRA: use the functional form", `network_forward` runs the conv and then adds each
LoRA branch, `NetworkModuleLora.forward(x, y) = y + up(down(x)) * scale`, its `down` a conv built with
the conv's padding at load time and dilation 1. `Branch` below has that interface and behaviour. A
re-dilated conv (`ops.redilation.redilated_forward` sets the conv's dilation and padding for the call)
must give the same output as the conv with the LoRA merged into its weight, run at that dilation.
"""
from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib_hires.hosts.a1111 import lora_branches_follow
from lib_hires.ops.redilation import redilated_forward
from lib_hires.patching import PatchScope


class Branch:
    """A LoRA branch as A1111's `NetworkModuleLora` (3x3 down conv, 1x1 up conv, a scale)."""

    def __init__(self, conv: nn.Conv2d, rank: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.sd_module = conv
        self.down = nn.Conv2d(conv.in_channels, rank, conv.kernel_size, conv.stride, conv.padding, bias=False)
        self.up = nn.Conv2d(rank, conv.out_channels, 1, bias=False)
        with torch.no_grad():
            self.down.weight.copy_(torch.randn(self.down.weight.shape, generator=generator) * 0.2)
            self.up.weight.copy_(torch.randn(self.up.weight.shape, generator=generator) * 0.2)
        self.scale = 0.7

    def calc_updown(self, weight: torch.Tensor) -> tuple[torch.Tensor, None]:
        delta = torch.einsum("or,rikl->oikl", self.up.weight[:, :, 0, 0], self.down.weight) * self.scale
        return delta, None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y + self.up(self.down(x)) * self.scale


class Network:
    def __init__(self, modules: dict[str, Branch]) -> None:
        self.modules = modules


def functional_forward(conv: nn.Conv2d, network: Network) -> Callable[[torch.Tensor], torch.Tensor]:
    """`network_forward`: the conv's own forward, then every branch of the conv."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        y = conv._conv_forward(x, conv.weight, conv.bias)
        for branch in network.modules.values():
            if branch.sd_module is conv:
                y = branch.forward(x, y)
        return y
    return forward


@pytest.mark.parametrize("factor", [2.0, 3.0, 1.5])
def test_a_functional_lora_branch_is_re_dilated_with_its_conv(factor: float) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, padding=1)
    network = Network({"conv": Branch(conv, 3, 1)})
    x = torch.randn(2, 6, 20, 24)
    merged = nn.Conv2d(6, 5, 3, padding=1)
    with torch.no_grad():
        merged.weight.copy_(conv.weight + network.modules["conv"].calc_updown(conv.weight)[0])
        merged.bias.copy_(conv.bias)
    expected = redilated_forward(merged, merged.forward, x, factor)

    forward = functional_forward(conv, network)
    unpatched = redilated_forward(conv, forward, x, factor)
    assert not torch.allclose(unpatched, expected, atol=1e-4)  # the branch ran undilated
    original_forward = network.modules["conv"].forward
    with PatchScope() as scope:
        lora_branches_follow([network], scope)
        assert torch.allclose(redilated_forward(conv, forward, x, factor), expected, atol=1e-5)
        assert torch.allclose(forward(x), merged(x), atol=1e-5)  # undilated: the network's own forward
    assert network.modules["conv"].forward == original_forward and "forward" not in vars(network.modules["conv"])
    assert conv.dilation == (1, 1) and conv.padding == (1, 1)


def test_branches_of_1x1_convs_and_linears_are_left_alone() -> None:
    conv1 = nn.Conv2d(4, 4, 1)
    linear = nn.Linear(4, 4)
    branch_conv = Branch(nn.Conv2d(4, 4, 3, padding=1), 2, 0)
    branch_conv.sd_module = conv1
    branch_linear = Branch(nn.Conv2d(4, 4, 3, padding=1), 2, 0)
    branch_linear.sd_module = linear  # type: ignore[assignment]
    with PatchScope() as scope:
        lora_branches_follow([Network({"a": branch_conv, "b": branch_linear})], scope)
        assert "forward" not in vars(branch_conv) and "forward" not in vars(branch_linear)


def test_unpatched_forward_matches_merged_weights() -> None:
    conv = nn.Conv2d(3, 3, 3, padding=1)
    branch = Branch(conv, 2, 4)
    x = torch.randn(1, 3, 8, 8)
    delta = branch.calc_updown(conv.weight)[0]
    assert torch.allclose(branch.forward(x, conv(x)), F.conv2d(x, conv.weight + delta, conv.bias, padding=1), atol=1e-5)
