"""The model as the accordion sees it (shared by the A1111 and Forge adapters)."""
from __future__ import annotations

from typing import NamedTuple

from torch import nn

from ..unet import ModelFamily


class UiModel(NamedTuple):
    """What the accordion plans against: the UNet (None before it is loaded), its native size, the family
    when only that is known, and the identity of the checkpoint (as the WebUI's checkpoint menu shows it,
    so the page can tell when the plan is for another model than the one selected)."""

    unet: nn.Module | None
    native: int | None
    family: ModelFamily | None
    identity: str
