"""Write docs/parameters.md from lib_hires/params.py (the single source of every parameter).

    python tools/gen_params_doc.py
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib_hires.params import reference_markdown  # noqa: E402

if __name__ == "__main__":
    (ROOT / "docs" / "parameters.md").write_text(reference_markdown() + "\n")
