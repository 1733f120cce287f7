"""Writing the random-weight files of the developer tools (`make_random_*.py`): one safetensors file,
written under a temporary name next to its destination and renamed at the end (a reader never sees a
partial file), with a single metadata key (safetensors writes several keys in a random order, which
would make the bytes, and so the hosts' "Model hash", differ between runs with the same seed)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch


def write_weights(state: dict[str, torch.Tensor], out: Path, key: str, info: dict[str, object]) -> str:
    """Write `state` to `out` with metadata `{key: json(info)}`; the first 10 hex digits of the file's
    sha256 (what A1111 shows as a model's hash)."""
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        save_file(state, str(tmp), metadata={key: json.dumps(info, sort_keys=True)})
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    digest = hashlib.sha256()
    with open(out, "rb") as file:
        for block in iter(lambda: file.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()[:10]
