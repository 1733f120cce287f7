"""The tiled VAE as a job installs it: the host's decode/encode tiled, exact, restored, fp32 fallback."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from lib_hires.job import PassSize, plan_job, tiled_vae
from lib_hires.params import GROUPS, TiledVAEParams, validate_api_dict
from lib_hires.patching import PatchScope
from lib_hires.vae import NonFiniteError, TiledVAEInterrupted
from lib_hires.vae.hook import VaeTiling
from tests.host.host import Models, TestHost
from tests.host.models import build_vae
from tests.host.state import module_state


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiled runs are many small ops: a second intra-op thread only adds wake-up latency."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FirstStage(torch.nn.Module):
    """What the WebUIs hand the tiling: a module with `.decoder` and `.encoder`."""

    def __init__(self, decoder: torch.nn.Module, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.decoder, self.encoder = decoder, encoder


def tiling(statuses: list[str] | None = None, warnings: list[str] | None = None, interrupted=lambda: False,
           **params: object) -> VaeTiling:
    return VaeTiling(TiledVAEParams(enabled=True, **params), interrupted, (statuses if statuses is not None else []).append,
                     (warnings if warnings is not None else []).append)


def test_host_decode_and_encode_are_tiled_exactly_and_restored(sd1: Models) -> None:
    host = TestHost(sd1)
    stage = FirstStage(sd1.decoder, sd1.encoder)
    latent = torch.randn(1, 4, 20, 28)
    plain_image = host.decode(latent)
    plain_latent = host.encode(plain_image)
    before = module_state(stage)  # after the plain forwards, which record `last_z_shape` themselves
    statuses: list[str] = []
    with PatchScope() as scope:
        tiling(statuses, decoder_tile=8, encoder_tile=64).install(stage, scope)
        image = host.decode(latent)
        encoded = host.encode(image)
    assert (image - plain_image).abs().max() <= 1e-4
    assert (encoded - host.encode(image)).abs().max() <= 1e-4
    assert any(s.startswith("Tiled VAE decode") for s in statuses) and any("encode" in s for s in statuses)
    assert module_state(stage) == before
    assert torch.equal(host.decode(latent), plain_image) and torch.equal(host.encode(plain_image), plain_latent)


def test_restored_after_an_interrupt_during_the_decode(sd1: Models) -> None:
    host = TestHost(sd1)
    stage = FirstStage(sd1.decoder, sd1.encoder)
    host.decode(torch.randn(1, 4, 8, 8))
    before = module_state(stage)
    polls = iter([False] + [False] * 3 + [True] * 100)  # not interrupted at the start, then interrupted
    with pytest.raises(TiledVAEInterrupted):
        with PatchScope() as scope:
            tiling(interrupted=lambda: next(polls), decoder_tile=8).install(stage, scope)
            host.decode(torch.randn(1, 4, 24, 24))
    assert module_state(stage) == before


def test_an_interrupt_from_before_the_decode_does_not_stop_it(sd1: Models) -> None:
    host = TestHost(sd1)
    latent = torch.randn(1, 4, 16, 16)
    with PatchScope() as scope:
        tiling(interrupted=lambda: True, decoder_tile=8).install(FirstStage(sd1.decoder, sd1.encoder), scope)
        image = host.decode(latent)
    assert (image - host.decode(latent)).abs().max() <= 1e-4


def overflowing_half_vae() -> FirstStage:
    decoder, encoder = build_vae(seed=3)
    return FirstStage(decoder.half(), encoder.half())


def test_fp16_overflow_falls_back_to_fp32() -> None:
    stage = overflowing_half_vae()
    z = torch.full((1, 4, 12, 12), 6e4, dtype=torch.float16)  # conv_in's output overflows fp16
    warnings: list[str] = []
    with PatchScope() as scope:
        tiling(warnings=warnings, decoder_tile=8, fp32="on_nan").install(stage, scope)
        image = stage.decoder(z)
    assert torch.isfinite(image).all() and image.dtype == torch.float32
    assert warnings == ["Tiled VAE: the decode overflowed (NaN/inf); redone in fp32"]
    with PatchScope() as scope:
        tiling(decoder_tile=8, fp32="off").install(stage, scope)
        with pytest.raises(NonFiniteError, match="fp32"):
            stage.decoder(z)


def test_a_vae_of_another_layout_falls_back_to_its_own_forward() -> None:
    class Other(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    stage = FirstStage(Other(), Other())
    warnings: list[str] = []
    with PatchScope() as scope:
        tiling(warnings=warnings).install(stage, scope)
        assert torch.equal(stage.decoder(torch.ones(1, 4, 4, 4)), torch.full((1, 4, 4, 4), 2.0))
    assert warnings and warnings[0].startswith("Tiled VAE not used")


def test_plan_runs_the_tiled_vae_alone_or_with_a_method(sd1: Models) -> None:
    size = PassSize("first", 512, 512, 20)
    alone_settings = validate_api_dict(GROUPS, {"enabled": True, "method": "none", "tiled_vae_enabled": True})
    alone = plan_job(alone_settings, sd1.unet, None, size, None)
    assert tiled_vae(alone_settings) is not None and not alone.runs
    assert alone.infotext["Tiled VAE"] == "True" and alone.infotext["Hires Methods"] == "None"
    assert alone.infotext["Tiled VAE decoder tile"] == "auto" and alone.infotext["Tiled VAE fp32"] == "On NaN"
    assert alone.summary == "Tiled VAE (decoder auto, encoder auto, fp32 on NaN)"
    off_settings = validate_api_dict(GROUPS, {"enabled": True, "method": "none"})
    off = plan_job(off_settings, sd1.unet, None, size, None)
    assert tiled_vae(off_settings) is None and off.infotext == {}
    both_settings = validate_api_dict(GROUPS, {"enabled": True, "tiled_vae_enabled": True,
                                               "scalecrafter_preset": "custom"})
    both = plan_job(both_settings, sd1.unet, None, size, None)
    assert tiled_vae(both_settings) is not None and both.runs and "ScaleCrafter dilation" in both.infotext
    switched_off = validate_api_dict(GROUPS, {"enabled": False, "tiled_vae_enabled": True})
    assert tiled_vae(switched_off) is None and plan_job(switched_off, sd1.unet, None, size, None).infotext == {}
