"""Run by the WebUI at startup. Hires Methods needs nothing beyond what the WebUI installs, so this
only checks the environment and says what is wrong; it never installs, pins or upgrades packages."""
from __future__ import annotations

import sys


def problems() -> list[str]:
    found = []
    if sys.version_info < (3, 10):
        found.append(f"Python 3.10 or newer is needed (this is {sys.version.split()[0]})")
    try:
        import torch
    except ImportError:
        found.append("PyTorch is not importable")
    else:
        major, minor = (int(part) for part in torch.__version__.split(".")[:2])
        if (major, minor) < (2, 0):
            found.append(f"PyTorch 2.0 or newer is needed (this is {torch.__version__})")
    return found


for problem in problems():
    print(f"[Hires Methods] {problem}; the extension will not work.", file=sys.stderr)
