"""Re-dilated and dispersed convolution forwards, and the progressive dilation schedule.

ScaleCrafter (§3.1 re-dilation, §3.3 dispersed convolution, App. F) enlarges a pre-trained 3x3
convolution's perception field by a factor ``f`` at inference time. The official implementation
(methods/scalecrafter.md §2) runs the conv with the integer dilation ``d = ceil(f)``; a fractional
``f`` is reached by bilinearly resizing the input by ``d/f`` first and the output back to its nominal
size afterwards, so that the dilation measured on the original grid is ``d / (d/f) = f``.

Everything here is a pure function of its arguments: the module's attributes are changed only for
the duration of one call and restored in ``finally``.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn


def _check_factor(factor: float) -> None:
    if not math.isfinite(factor) or factor < 1:
        raise ValueError(f"perception-field factor must be a finite number >= 1, got {factor}")


def _same_padding(kernel_size: tuple[int, ...], dilation: int) -> tuple[int, int]:
    """``d * (1 + (k - 3) // 2)`` per axis: "same" padding of a k x k kernel at dilation d (§2)."""
    return dilation * (1 + (kernel_size[0] - 3) // 2), dilation * (1 + (kernel_size[1] - 3) // 2)


def _resized_dilated(conv: Callable[[Tensor, int], Tensor], x: Tensor, factor: float,
                     stride: tuple[int, ...]) -> Tensor:
    """Run ``conv(x_resized, d)``, ``d = ceil(factor)``, with the official resize trick (scalecrafter.md §2).

    The input is resized to ``round(H * d / factor)`` (bilinear, ``align_corners=False``) and the
    output to the nominal ``(int(H / stride), int(W / stride))``; both resizes are skipped when the
    size already matches, so an integer factor is a plain dilated convolution, bit for bit.
    """
    dilation = math.ceil(factor)
    height, width = x.shape[-2:]
    resize = dilation / factor
    size = (round(height * resize), round(width * resize))
    if size != (height, width):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    y = conv(x, dilation)
    nominal = (int(height / stride[0]), int(width / stride[1]))
    if tuple(y.shape[-2:]) != nominal:
        y = F.interpolate(y, size=nominal, mode="bilinear", align_corners=False)
    return y


def redilated_forward(module: nn.Conv2d, forward: Callable[[Tensor], Tensor], x: Tensor,
                      factor: float) -> Tensor:
    """``module`` applied to ``x`` as a re-dilated convolution with perception-field factor ``factor``.

    ScaleCrafter §3.1; scalecrafter.md §2. ``forward`` is the module's own forward (the WebUI's,
    so LoRA-patched weights and Forge's casting ops are used); it is called with ``module.dilation``
    and ``module.padding`` temporarily set to ``d = ceil(factor)`` and ``d * (1 + (k-3)//2)``, and
    both are restored afterwards, also when ``forward`` raises. A fractional factor uses the resize
    trick of :func:`_resized_dilated`; the output always has the nominal size ``int(H / stride)``
    (the official rule: for an odd input to a stride-2 conv it is one less than the plain conv's).

    ``factor == 1`` returns ``forward(x)`` without touching the module. Factors below 1 are rejected.
    """
    _check_factor(factor)
    if factor == 1:
        return forward(x)
    if module.padding_mode != "zeros":
        raise ValueError(f"re-dilation needs zero padding, not padding_mode={module.padding_mode!r}")

    def conv(inputs: Tensor, dilation: int) -> Tensor:
        saved = module.dilation, module.padding
        module.dilation = (dilation, dilation)
        module.padding = _same_padding(module.kernel_size, dilation)
        try:
            return forward(inputs)
        finally:
            module.dilation, module.padding = saved

    return _resized_dilated(conv, x, factor, module.stride)


def dispersed_forward(module: nn.Conv2d, x: Tensor, factor: float, kernel5: Tensor) -> Tensor:
    """``module`` applied to ``x`` with its dispersed 5x5 kernel, at perception-field factor ``factor``.

    ScaleCrafter §3.3; scalecrafter.md §5.1. ``kernel5`` is ``disperse_kernel(module.weight, R)``
    (``lib_hires.ops.dispersion``): dispersion reads ``module.weight`` directly, not through the
    module's forward, so a host that applies LoRA lazily in the forward must have applied it to
    ``module.weight`` before the kernel is computed. The 5x5 kernel spans the window of the 3x3 one
    at dilation ``factor`` when run at ``factor / 2``: dilation ``d = ceil(factor / 2)``, padding
    ``2d``, with the same resize trick as :func:`redilated_forward` for a fractional ``factor / 2``,
    and the module's stride, groups and bias. Kernel and bias are cast to ``x``'s dtype and device.
    """
    _check_factor(factor)
    expected = (module.out_channels, module.in_channels // module.groups, 5, 5)
    if tuple(kernel5.shape) != expected:
        raise ValueError(f"dispersed kernel must have shape {expected}, got {tuple(kernel5.shape)}")
    weight = kernel5.to(device=x.device, dtype=x.dtype)
    bias = None if module.bias is None else module.bias.to(device=x.device, dtype=x.dtype)

    def conv(inputs: Tensor, dilation: int) -> Tensor:
        return F.conv2d(inputs, weight, bias, module.stride, _same_padding((5, 5), dilation), dilation,
                        module.groups)

    return _resized_dilated(conv, x, factor / 2, module.stride)


def progressive_factor(factor: float, tau: int, step: int) -> float:
    """The factor used at step ``step`` (0 = noisiest) by progressive re-dilation (scalecrafter.md §3).

    For ``step < tau``: ``f_i = min(f, max(ceil(f * (tau - step) / tau), 2))``. The official formula
    is the ``max(ceil(.), 2)`` part, which decays an integer factor stage by stage down to 2. The
    ``min(f, .)`` cap makes the schedule never exceed the configured factor: it changes nothing for
    integer ``f >= 2`` (all official progressive configs), keeps a factor ``f <= 2`` unchanged (the
    official formula would raise 1.5 to 2) and keeps a fractional ``f > 2`` as is for its first
    stage (the official formula would round 2.5 up to 3). For ``step >= tau`` re-dilation is not
    active and the result is 1.0, the factor :func:`redilated_forward` treats as the original conv.
    """
    _check_factor(factor)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step >= tau:
        return 1.0
    return float(min(factor, max(math.ceil(factor * (tau - step) / tau), 2)))
