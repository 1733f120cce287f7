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


def test_dependencies_point_down() -> None:
    """Nothing outside `hosts/` imports the host adapters (the protocol lives in `lib_hires/host.py`)."""
    offenders = []
    for path in (ROOT / "lib_hires").rglob("*.py"):
        if path.relative_to(ROOT / "lib_hires").parts[0] == "hosts":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and "hosts" in node.module.split("."):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_no_glue_names_a_method() -> None:
    """The planner, the API and the WebUI glue work from the method declarations only: adding a method is
    its module, its parameter group and a registry entry."""
    from lib_hires.methods import METHODS
    from lib_hires.params import METHOD_GROUPS

    assert list(METHODS) == [group.KEY for group in METHOD_GROUPS]
    assert all(METHODS[group.KEY].params is group for group in METHOD_GROUPS)
    glue = [ROOT / "lib_hires" / "job.py", ROOT / "lib_hires" / "api.py", *(ROOT / "lib_hires" / "hosts").glob("*.py"),
            *(ROOT / "scripts").glob("*.py"), ROOT / "javascript" / "hires_methods.js"]
    names = {name.lower() for group in METHOD_GROUPS for name in (group.KEY, group.TITLE)}
    mentions = {str(path.relative_to(ROOT)): sorted(n for n in names if n in path.read_text().lower()) for path in glue}
    assert {path: found for path, found in mentions.items() if found} == {}
