"""The tiled VAE in a WebUI job: the VAE's `decoder`/`encoder` forwards replaced by the tiled ones.

The host adapters decide where and for how long (A1111: for the job; Forge: during each call of its
VAE decode/encode wrappers); this module decides what a replaced forward does:

* run `tiled_decode`/`tiled_encode` with the user's tile sizes (0 = from free memory);
* fp32: "always" upcasts from the start; "on_nan" retries in fp32 when the VAE overflowed (NaN/inf, the
  known fp16 VAE failure), with a warning; "off" lets `NonFiniteError` (a clear message) through;
* stop between tiles when the user interrupts *during* the decode (an interrupt that ended the
  sampler earlier must not cost the image);
* fall back to the module's own forward, with a warning, for a VAE without the LDM layout.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ..params import TiledVAEParams
from ..patching import PatchScope
from .errors import NonFiniteError, UnsupportedVAE
from .tiled import tiled_decode, tiled_encode


class VaeTiling:
    """Replaces a VAE's decoder/encoder forwards (in a `PatchScope`) by their tiled versions."""

    def __init__(self, params: TiledVAEParams, interrupted: Callable[[], bool], status: Callable[[str], None],
                 warn: Callable[[str], None]) -> None:
        self.params = params
        self.interrupted = interrupted
        self.status = status
        self.warn = warn

    def install(self, vae: nn.Module, scope: PatchScope) -> None:
        """Patch `vae.decoder` and `vae.encoder` (an LDM first stage model) until `scope` exits."""
        scope.wrap_forward(vae.decoder, self._forward(vae.decoder, tiled_decode, self.params.decoder_tile, "decode"))
        scope.wrap_forward(vae.encoder, self._forward(vae.encoder, tiled_encode, self.params.encoder_tile, "encode"))

    def _forward(self, module: nn.Module, run: Callable[..., Tensor], tile: int, what: str) -> Callable[..., Tensor]:
        def forward(original: Callable[[Tensor], Tensor], x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            interrupted_before = self.interrupted()

            def tiled(upcast: bool) -> Tensor:
                return run(module, x, tile_size=tile or None, upcast=upcast,
                           progress=lambda done, total: self.status(f"Tiled VAE {what}: {done}/{total}"),
                           should_interrupt=lambda: not interrupted_before and self.interrupted())

            try:
                return tiled(self.params.fp32 == "always")
            except UnsupportedVAE as error:
                self.warn(f"Tiled VAE not used: {error}")
                return original(x, *args, **kwargs)
            except NonFiniteError:
                if self.params.fp32 != "on_nan":
                    raise
                self.warn(f"Tiled VAE: the {what} overflowed (NaN/inf); redone in fp32")
                return tiled(True)

        return forward
