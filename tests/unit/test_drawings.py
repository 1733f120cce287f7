"""docs/images/plans/*.svg are what tools/draw_plans.py makes from today's planner (regenerate them with
`python tools/draw_plans.py` after a change to a method's stages or windows)."""
from __future__ import annotations

from tests.host.host import Models
from tools.draw_plans import OUT, drawings


def test_plan_drawings_are_up_to_date(sd1: Models) -> None:
    made = drawings(sd1.unet)
    assert sorted(path.name for path in OUT.glob("*.svg")) == sorted(made)
    for name, text in made.items():
        assert (OUT / name).read_text() == text, f"{name}: run python tools/draw_plans.py"
