"""Snapshots of a module tree's state, for "nothing leaked" assertions."""
from __future__ import annotations

import hashlib

from torch import nn


def module_state(model: nn.Module) -> dict[str, object]:
    """Identity of every attribute of every module (which object each name holds) and a hash of the
    parameter and buffer data. Equal snapshots mean the same objects and the same weights."""
    state: dict[str, object] = {}
    for name, module in model.named_modules():
        for key, value in vars(module).items():
            state[f"{name}:{key}"] = {k: id(v) for k, v in value.items()} if isinstance(value, dict) else id(value)
    digest = hashlib.sha256()
    for tensor in [*model.parameters(), *model.buffers()]:
        digest.update(tensor.detach().cpu().numpy().tobytes())
    state["data"] = digest.hexdigest()
    return state
