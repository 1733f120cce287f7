"""k-diffusion samplers and sigma schedules for the test host.

The WebUIs run crowsonkb/k-diffusion's sampler functions. The PyPI k-diffusion cannot be imported
beside the CPU PyTorch build used here (it needs torchvision), so the test host implements the same
algorithms with the same calling convention, `sampler(model, x, sigmas, extra_args=None,
callback=None, disable=None, ...)`, from their papers: Euler and Euler ancestral (Karras et al. 2022,
Alg. 2, with ancestral noise), DPM-Solver++(2M) and its SDE variant with the midpoint correction
(Lu et al. 2022). The ancestral/SDE noise comes from a `noise_sampler(sigma, sigma_next)` the caller
seeds (the WebUI seeds its own from the image seeds).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

Model = Callable[..., torch.Tensor]
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros(1)])


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero(((hi + ramp * (lo - hi)) ** rho).float())


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp().float())


def _ancestral_step(sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    if not eta:
        return sigma_next, torch.zeros_like(sigma_next)
    up = torch.minimum(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
    return (sigma_next**2 - up**2) ** 0.5, up


def sample_euler(model: Model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict[str, Any] | None = None,
                 callback: Callable[[dict[str, Any]], None] | None = None, disable: bool | None = None) -> torch.Tensor:
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = (x - denoised) / sigmas[i]
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "denoised": denoised})
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


def sample_euler_ancestral(model: Model, x: torch.Tensor, sigmas: torch.Tensor,
                           extra_args: dict[str, Any] | None = None,
                           callback: Callable[[dict[str, Any]], None] | None = None, disable: bool | None = None,
                           eta: float = 1.0, noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    extra_args = extra_args or {}
    assert noise_sampler is not None, "the test host always passes a seeded noise sampler"
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        down, up = _ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "denoised": denoised})
        x = x + (x - denoised) / sigmas[i] * (down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * up
    return x


def sample_dpmpp_2m(model: Model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict[str, Any] | None = None,
                    callback: Callable[[dict[str, Any]], None] | None = None,
                    disable: bool | None = None) -> torch.Tensor:
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "denoised": denoised})
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            target = denoised
        else:
            r = (t - (-sigmas[i - 1].log())) / h
            target = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * target
        old_denoised = denoised
    return x


def sample_dpmpp_2m_sde(model: Model, x: torch.Tensor, sigmas: torch.Tensor,
                        extra_args: dict[str, Any] | None = None,
                        callback: Callable[[dict[str, Any]], None] | None = None, disable: bool | None = None,
                        eta: float = 1.0, s_noise: float = 1.0,
                        noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    extra_args = extra_args or {}
    assert noise_sampler is not None, "the test host always passes a seeded noise sampler"
    s_in = x.new_ones([x.shape[0]])
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "denoised": denoised})
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        h = sigmas[i].log() - sigmas[i + 1].log()
        eta_h = eta * h
        x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
        if old_denoised is not None:
            r = h_last / h
            x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
        if eta:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
        old_denoised, h_last = denoised, h
    return x


def sample_heun(model: Model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict[str, Any] | None = None,
                callback: Callable[[dict[str, Any]], None] | None = None, disable: bool | None = None) -> torch.Tensor:
    """k-diffusion's Heun (no churn): a second evaluation at the next noise level, except at the last step."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = (x - denoised) / sigmas[i]
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - model(x_2, sigmas[i + 1] * s_in, **extra_args)) / sigmas[i + 1]
            x = x + (d + d_2) / 2 * dt
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "Euler": sample_euler,
    "Heun": sample_heun,
    "Euler a": sample_euler_ancestral,
    "DPM++ 2M": sample_dpmpp_2m,
    "DPM++ 2M SDE": sample_dpmpp_2m_sde,
}
STOCHASTIC = {"Euler a", "DPM++ 2M SDE"}
