"""One module per method: each turns its parameters into a plan per pass and the hooks that run it
(the protocol is in `base.py`). `METHODS` is the registry the job planner and the WebUI glue read;
its keys are the `method` choices of `params.General` (a test keeps the two in step)."""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ..params import METHOD_GROUPS
from .accdiffusion import AccDiffusion
from .apldm import APLDM
from .base import Method
from .demofusion import DemoFusion
from .freescale import FreeScale
from .fstd import FSTD
from .multidiffusion import MultiDiffusion
from .scalecrafter import ScaleCrafter

_ALL: tuple[Method, ...] = (ScaleCrafter(), APLDM(), DemoFusion(), AccDiffusion(), FreeScale(), FSTD(), MultiDiffusion())
METHODS: Mapping[str, Method] = MappingProxyType(
    {group.KEY: next(m for m in _ALL if m.params is group) for group in METHOD_GROUPS})  # menu order
