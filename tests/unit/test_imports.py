"""`lib_hires` outside `hosts/` imports nothing from the WebUI (DESIGN.md rule 1)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"modules", "backend", "ldm", "sgm", "gradio", "k_diffusion", "modules_forge", "scripts"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_library_is_pure() -> None:
    files = [p for p in (ROOT / "lib_hires").rglob("*.py") if "hosts" not in p.relative_to(ROOT / "lib_hires").parts[:1]]
    assert len(files) >= 5
    offenders = {str(p.relative_to(ROOT)): sorted(imported_roots(p) & FORBIDDEN) for p in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_checker_sees_forbidden_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import gradio as gr\nfrom modules import shared\nfrom ldm.util import x\nfrom . import local\n")
    assert imported_roots(sample) & FORBIDDEN == {"gradio", "modules", "ldm"}
