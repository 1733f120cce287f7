"""The test host: `lib_hires.host.Host` implemented with real LDM modules at tiny sizes.

It mirrors how the WebUIs sample: a k-diffusion sampler function drives a CFG denoiser, which
batches the cond and uncond rows of every image into one model call (cond rows first, as A1111's
CFGDenoiser does; uncond rows are skipped at CFG scale 1), and the model call runs an eps-prediction
UNet behind the CompVis discrete-schedule wrapper (sigma -> timestep by log-sigma interpolation over
SD's 1000 training steps). Model calls go through the current `SamplingPass` when one is sampling,
exactly where the A1111/Forge adapters install their model-call wrapper.

A `TestControl` stands for a ControlNet: where the adapters hand the ControlNet the hint of each
call's rows (the hint of the job's size, resized to the pass's latent, then the call's `pixels`), it
adds a residual to the prediction: each latent pixel gets a fixed mix of the mean of its own 8x8 block
of hint pixels. So a call that got the wrong pixels shows in the output, pixel for pixel.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lib_hires.ops import control_hint
from lib_hires.ops.conditioning import PromptCond
from lib_hires.sampling.hooks import ModelCall, PassHooks, PassSlot, Rows, hooked_sampler, take_rows
from lib_hires.sampling.steps import Step
from lib_hires.unet import ModelFamily

from .models import LAYOUTS, build_unet, build_vae
from .samplers import SAMPLERS, STOCHASTIC, exponential_sigmas, karras_sigmas
from .text import WordEncoder
from .text import words as text_words

VAE_SCALE = 0.18215
NATIVE = {"sd1": 512, "sd2": 512, "sdxl": 1024}


@dataclass(frozen=True)
class Models:
    """The random-weight modules of one model family (built once per test session)."""

    family: str
    unet: nn.Module
    text: WordEncoder
    decoder: nn.Module
    encoder: nn.Module


def build_models(family: str, model_channels: int = 32, seed: int = 0) -> Models:
    text = WordEncoder(dim=32, seed=seed)
    decoder, encoder = build_vae(seed=seed)
    return Models(family, build_unet(LAYOUTS[family], model_channels=model_channels, seed=seed), text,
                  decoder, encoder)


@dataclass(frozen=True)
class Job:
    """What the user asked for, as the WebUI's processing object holds it."""

    prompt: str = "a photo of a cat"
    negative: str = "blurry"
    width: int = 256
    height: int = 256
    steps: int = 4
    cfg_scale: float = 7.0
    sampler: str = "Euler"
    scheduler: str = "automatic"  # or "karras", "exponential"
    seed: int = 1
    batch_size: int = 1


class DiscreteEpsDenoiser:
    """x -> denoised for an eps-prediction UNet trained on SD's scaled-linear 1000-step schedule."""

    def __init__(self, unet: nn.Module) -> None:
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float()
        self.log_sigmas = self.sigmas.log()
        self.unet = unet

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.log()
        low = (torch.searchsorted(self.log_sigmas, log_sigma, right=True) - 1).clamp(0, len(self.sigmas) - 2)
        lo, hi = self.log_sigmas[low], self.log_sigmas[low + 1]
        w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        return low + w

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        low = t.floor().long().clamp(0, len(self.sigmas) - 2)
        w = t - low
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[low + 1]).exp()

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        """`cond`: the cross-attention context, or for SDXL {"crossattn": context, "vector": y} as in A1111."""
        c_in = 1 / (sigma**2 + 1) ** 0.5
        context, vector = (cond["crossattn"], cond["vector"]) if isinstance(cond, dict) else (cond, None)
        eps = self.unet(x * c_in[:, None, None, None], self.sigma_to_t(sigma), context=context, y=vector)
        return x - eps * sigma[:, None, None, None]


@dataclass(frozen=True)
class TestControl:
    """A fake ControlNet (module docstring): `hint` (images, 3, height, width) at the job's size, in [0, 1]."""

    __test__ = False

    hint: torch.Tensor
    strength: float = 1.0

    def residual(self, hint: torch.Tensor) -> torch.Tensor:
        """Per latent pixel: the block means of the hint's 3 channels mixed into the latent's 4."""
        means = torch.nn.functional.avg_pool2d(hint, control_hint.SCALE)
        mix = torch.tensor([[1.0, -0.5, 0.25], [0.5, 1.0, -0.25], [-0.5, 0.25, 1.0], [0.25, 0.5, 0.5]])
        return self.strength * torch.einsum("oc,bchw->bohw", mix.to(means), means)

    def for_call(self, call: ModelCall, pass_rows: Rows, latent: tuple[int, int]) -> torch.Tensor:
        """The residual of a call, from the hint of the pass's call (its `pass_rows` and `latent` size)."""
        top = control_hint.resize(self.hint, latent[0] * control_hint.SCALE, latent[1] * control_hint.SCALE)
        per_row = top[[image % top.shape[0] for image in pass_rows.image]]
        return self.residual(call.pixel_map()(per_row))


def take_rows_cat(first: Any, second: Any) -> Any:
    """Two conditionings (tensors, or dicts of them) stacked row-wise."""
    if isinstance(first, dict):
        return {key: torch.cat([first[key], second[key]]) for key in first}
    return torch.cat([first, second])


class TestHost:
    """One job on the test host (see the module docstring)."""

    __test__ = False  # not a pytest test class

    def __init__(self, models: Models, job: Job = Job(), native_size: int | None = None) -> None:
        self.models = models
        self.job = job
        self._native = native_size or NATIVE[models.family]
        self.denoiser = DiscreteEpsDenoiser(models.unet)
        self.slot = PassSlot()
        self.cond = self.conditioning(job.prompt)
        self.uncond = self.conditioning(job.negative)
        self.interrupt = False
        self.control: TestControl | None = None
        self.progress_log: list[tuple[int, int]] = []
        self.stage_steps: list[int] = []
        self.stage_inputs: list[tuple[tuple[int, ...], int]] = []  # (latent shape, schedule length) per stage

    # --- model ---
    @property
    def family(self) -> ModelFamily:
        return ModelFamily(self.models.family)

    @property
    def native_size(self) -> int:
        return self._native

    @property
    def unet(self) -> nn.Module:
        return self.models.unet

    @property
    def batch_size(self) -> int:
        return self.job.batch_size

    # --- schedule, noise, sampling ---
    def sigmas(self, steps: int) -> torch.Tensor:
        smin, smax = float(self.denoiser.sigmas[0]), float(self.denoiser.sigmas[-1])
        if self.job.scheduler == "karras":
            return karras_sigmas(steps, smin, smax)
        if self.job.scheduler == "exponential":
            return exponential_sigmas(steps, smin, smax)
        t = torch.linspace(len(self.denoiser.sigmas) - 1, 0, steps)
        return torch.cat([self.denoiser.t_to_sigma(t), torch.zeros(1)])

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.denoiser.sigma_to_t(sigma.float())

    def _generator(self, image: int, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.job.seed + image) + (stream << 32))

    def noise(self, shape: Sequence[int], stage: int) -> torch.Tensor:
        return torch.stack([torch.randn(tuple(shape[1:]), generator=self._generator(i, stage))
                            for i in range(shape[0])])

    def _sampler_kwargs(self, x: torch.Tensor, stage: int) -> dict[str, Any]:
        if self.job.sampler not in STOCHASTIC:
            return {}
        generators = [self._generator(i, 1000 + stage) for i in range(x.shape[0])]

        def noise_sampler(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
            return torch.stack([torch.randn(tuple(x.shape[1:]), generator=g) for g in generators])

        return {"noise_sampler": noise_sampler}

    def _extra_args(self) -> dict[str, Any]:
        return {"cond": self.cond, "uncond": self.uncond, "cond_scale": self.job.cfg_scale}

    def cfg_denoiser(self, x: torch.Tensor, sigma: torch.Tensor, *, cond: Any, uncond: Any,
                     cond_scale: float) -> torch.Tensor:
        """CFG over one batched model call: cond rows, then uncond rows (none at scale 1)."""
        b = x.shape[0]
        with_uncond = cond_scale != 1.0
        x_in = torch.cat([x, x]) if with_uncond else x
        sigma_in = torch.cat([sigma, sigma]) if with_uncond else sigma
        context = take_rows_cat(cond, uncond) if with_uncond else cond
        rows = Rows(tuple(range(b)) * (2 if with_uncond else 1), (False,) * b + (True,) * (b if with_uncond else 0))
        out = self.model_call(x_in, sigma_in, context, rows)
        if not with_uncond:
            return out
        denoised_cond, denoised_uncond = out[:b], out[b:]
        return denoised_uncond + (denoised_cond - denoised_uncond) * cond_scale

    def model_call(self, x: torch.Tensor, sigma: torch.Tensor, context: Any, rows: Rows) -> torch.Tensor:
        latent = (x.shape[-2], x.shape[-1])

        def base(call: ModelCall) -> torch.Tensor:
            out = self.denoiser(call.x, call.sigma, call.cond)
            return out if self.control is None else out + self.control.for_call(call, rows, latent)

        current = self.slot.current
        if current is None or current.step is None:
            call = ModelCall(x, sigma, context, rows, Step(0, 1), lambda c, idx: c)
            return base(call)
        call = ModelCall(x, sigma, context, rows, current.step, take_cond=lambda c, idx: take_rows(c, idx, x.shape[0]),
                         controlled=self.control is not None)
        return current.call(call, base)

    @torch.no_grad()
    def sample(self, x: torch.Tensor, sigmas: torch.Tensor, hooks: PassHooks, stage: int) -> torch.Tensor:
        self.stage_inputs.append((tuple(x.shape), sigmas.numel()))
        sampler = hooked_sampler(SAMPLERS[self.job.sampler], hooks, self.slot)
        return sampler(self.cfg_denoiser, x, sigmas, extra_args=self._extra_args(), **self._sampler_kwargs(x, stage))

    @torch.no_grad()
    def sample_plain(self, x: torch.Tensor, sigmas: torch.Tensor, stage: int) -> torch.Tensor:
        """The sampler function called directly, with no hook machinery (the reference)."""
        return SAMPLERS[self.job.sampler](self.cfg_denoiser, x, sigmas, extra_args=self._extra_args(),
                                          **self._sampler_kwargs(x, stage))

    def conditioning(self, prompt: str) -> Any:
        """The batch's conditioning for a prompt: the context, with SDXL's vector as A1111 builds it
        (pooled text 1280, then original size, crop (0, 0) and target size in pixels, 256 channels each)."""
        context = self.encode_prompt(prompt).expand(self.job.batch_size, -1, -1)
        if self.models.family != "sdxl":
            return context
        from ldm.modules.diffusionmodules.util import timestep_embedding

        pooled = self._pooled(context)
        sizes = torch.tensor([[self.job.height, self.job.width, 0, 0, self.job.height, self.job.width]],
                             dtype=torch.float32)
        embedded = timestep_embedding(sizes.flatten(), 256).reshape(1, -1).expand(self.job.batch_size, -1)
        return {"crossattn": context, "vector": torch.cat([pooled, embedded], dim=1)}

    # --- prompts, VAE, progress ---
    def encode_prompt(self, prompt: str, words: Sequence[int] | None = None) -> torch.Tensor:
        return self.models.text.encode(prompt, words)

    def prompt_tokens(self, image: int) -> list[tuple[int, str]]:
        """Word j of the prompt sits at context position j + 1 (after BOS)."""
        return [(j + 1, word) for j, word in enumerate(text_words(self.job.prompt))]

    def patch_prompt(self, image: int, positions: Sequence[int], mode: str) -> PromptCond:
        """Words are tokens here, so both modes give the same context."""
        context = self.encode_prompt(self.job.prompt, [p - 1 for p in positions])
        return PromptCond(context, self._pooled(context) if self.models.family == "sdxl" else None)

    @staticmethod
    def _pooled(context: torch.Tensor) -> torch.Tensor:
        return context.mean(dim=1).repeat(1, 1280 // context.shape[-1] + 1)[:, :1280]

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.models.decoder(latent / VAE_SCALE)

    @torch.no_grad()
    def encode(self, image: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        moments = self.models.encoder(image)
        mean, logvar = moments[:, :4], moments[:, 4:]
        latent = mean if noise is None else mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * noise
        return latent * VAE_SCALE

    def interrupted(self) -> bool:
        return self.interrupt

    def progress(self, done: int, total: int) -> None:
        self.progress_log.append((done, total))

    def begin_stages(self, steps: Sequence[int]) -> None:
        self.stage_steps = list(steps)
