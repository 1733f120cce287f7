"""One module per method: each turns its parameters into a plan per pass and the hooks that run it
(the protocol is in `base.py`). `METHODS` is the registry the job planner and the WebUI glue read;
its keys are the `method` choices of `params.General` (a test keeps the two in step)."""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .base import Method
from .scalecrafter import ScaleCrafter

METHODS: Mapping[str, Method] = MappingProxyType({method.params.KEY: method for method in (ScaleCrafter(),)})
