"""The parameter machinery on a sample parameter set: API validation, infotext round trip, XYZ."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from lib_hires.params import (
    ParamError,
    ParamGroup,
    Syntax,
    all_fields,
    fields,
    format_infotext,
    from_infotext,
    param,
    parse_infotext,
    to_api_dict,
    to_infotext,
    validate_api_dict,
    xyz_axes,
)


def parse_blocks(text: str) -> str:
    for item in text.split():
        name, _, value = item.partition("=")
        if not name or float(value) < 1:
            raise ValueError("expected BLOCK=FACTOR items with factors >= 1")
    return text


@dataclass(frozen=True)
class Shared(ParamGroup):
    enabled: bool = param(False, "Enabled", "Run the method.")
    method: str = param("none", "Method", "Which method.", choices=("none", "demo"), choice_labels=("None", "Demo"))


@dataclass(frozen=True)
class Demo(ParamGroup):
    KEY = "demo"
    TITLE = "Demo"
    tau: float = param(0.6, "Tau", "Fraction of steps.", minimum=0.0, maximum=1.0, step=0.01)
    steps: int = param(10, "Steps", "Steps.", minimum=1, maximum=150)
    mode: str = param("fast", "Mode", "Mode.", choices=("fast", "exact"))
    blocks: str = param("DB1=2 MB=4", "Blocks", "Per-block factors.",
                        syntax=Syntax(parse_blocks, "BLOCK=FACTOR items"), xyz=False)
    progressive: bool = param(True, "Progressive", "Decay the factor.")
    tile: int = param(0, "Tile", "Tile size.", minimum=16, maximum=64, zero="auto")

    def check(self) -> dict[str, str]:
        if self.mode == "exact" and self.steps < 5:
            return {"demo_mode": "'exact' needs demo_steps >= 5"}
        return {}


GROUPS = (Shared, Demo)


def test_defaults_and_api_round_trip() -> None:
    values = validate_api_dict(GROUPS, {})
    assert values[Shared] == Shared() and values[Demo] == Demo() and values.given == frozenset()
    custom = validate_api_dict(GROUPS, {"version": 1, "enabled": True, "demo_tau": 1, "demo_steps": 20.0,
                                        "demo_mode": "exact", "demo_progressive": False})
    assert custom[Demo] == Demo(tau=1.0, steps=20, mode="exact", progressive=False)
    assert isinstance(custom[Demo].tau, float) and isinstance(custom[Demo].steps, int)
    assert validate_api_dict(GROUPS, {"demo_tile": 0})[Demo].tile == 0  # zero: "auto", outside the range
    assert validate_api_dict(GROUPS, {"demo_tile": 16.0})[Demo].tile == 16
    assert custom.given == {"enabled", "demo_tau", "demo_steps", "demo_mode", "demo_progressive"}
    assert validate_api_dict(GROUPS, to_api_dict(custom.values.values())).values == custom.values


def test_keys_labels() -> None:
    tau = fields(Demo)[0]
    assert (tau.api_key, tau.infotext_key, tau.xyz_label) == ("demo_tau", "Hires Demo tau", "[Hires] Demo Tau")
    enabled = fields(Shared)[0]
    assert (enabled.api_key, enabled.infotext_key, enabled.xyz_label) == ("enabled", "Hires enabled", "[Hires] Enabled")


@pytest.mark.parametrize("data, key, message", [
    ({"demo_tua": 0.5}, "demo_tua", "unknown key; allowed keys: version, enabled, method, demo_tau"),
    ({"demo_tau": "0.5"}, "demo_tau", "got '0.5'; allowed: a number from 0 to 1"),
    ({"demo_tau": 1.5}, "demo_tau", "got 1.5; allowed: a number from 0 to 1"),
    ({"demo_steps": 2.5}, "demo_steps", "allowed: an integer from 1 to 150"),
    ({"demo_steps": True}, "demo_steps", "got True"),
    ({"enabled": 1}, "enabled", "got 1; allowed: true or false"),
    ({"method": "demofusion"}, "method", "allowed: one of 'none', 'demo'"),
    ({"demo_blocks": "DB1=0.5"}, "demo_blocks", "factors >= 1"),
    ({"demo_tau": float("nan")}, "demo_tau", "got nan; allowed: a number from 0 to 1"),
    ({"demo_tau": float("inf")}, "demo_tau", "got inf"),
    ({"demo_steps": float("-inf")}, "demo_steps", "got -inf; allowed: an integer from 1 to 150"),
    ({"demo_tile": 8}, "demo_tile", "got 8; allowed: 0 (auto) or an integer from 16 to 64"),
    ({"demo_tile": 65}, "demo_tile", "0 (auto) or an integer from 16 to 64"),
    ({"version": 2}, "version", "got 2; allowed: 1"),
    ({"demo_mode": "exact", "demo_steps": 3}, "demo_mode", "'exact' needs demo_steps >= 5"),
])
def test_bad_input_names_the_field_and_what_is_allowed(data: dict[str, object], key: str, message: str) -> None:
    with pytest.raises(ParamError) as info:
        validate_api_dict(GROUPS, data)
    assert key in info.value.problems
    assert message in info.value.problems[key]
    assert key in str(info.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ParamError) as info:
        validate_api_dict(GROUPS, {"demo_tau": -1, "bogus": 1, "enabled": "yes"})
    assert set(info.value.problems) == {"demo_tau", "bogus", "enabled"}
    with pytest.raises(ParamError, match="expected a dict"):
        validate_api_dict(GROUPS, [True, "demo"])  # type: ignore[arg-type]


def test_infotext_round_trip_is_exact() -> None:
    values = validate_api_dict(GROUPS, {"enabled": True, "method": "demo", "demo_tau": 0.1 + 0.2,
                                        "demo_blocks": "DB1=2.5 UB0=3"})
    entries = to_infotext(values.values.values())
    assert entries["Hires version"] == "1"
    assert entries["Hires Demo tau"] == repr(0.1 + 0.2)
    assert all("," not in v and ":" not in v for v in entries.values())
    line = "Steps: 20, Sampler: Euler a, " + format_infotext(entries) + ", Hires upscale: 2"
    parsed = parse_infotext(line)
    assert parsed["Steps"] == "20" and parsed["Hires upscale"] == "2"
    back = validate_api_dict(GROUPS, from_infotext(GROUPS, parsed))
    assert back.values == values.values
    assert back[Demo].tau == 0.1 + 0.2  # bit-exact float


def test_empty_text_survives_the_webui_format() -> None:
    values = validate_api_dict(GROUPS, {"demo_blocks": ""})
    entries = to_infotext(values.values.values())
    assert entries["Hires Demo blocks"] == '""'
    line = format_infotext(entries)
    assert 'Hires Demo blocks: ""' in line
    parsed = parse_infotext(line)
    assert parsed["Hires Demo blocks"] == ""
    assert validate_api_dict(GROUPS, from_infotext(GROUPS, parsed)).values == values.values
    assert from_infotext(GROUPS, {"Hires Demo blocks": '""'}) == {"demo_blocks": ""}  # still quoted


def test_infotext_partial_quoted_and_bad_values() -> None:
    assert from_infotext(GROUPS, {"Hires Demo steps": "12"}) == {"demo_steps": 12}
    assert parse_infotext(format_infotext({"Hires Demo blocks": "a, b: c"})) == {"Hires Demo blocks": "a, b: c"}
    with pytest.raises(ParamError, match="Hires Demo tau.*allowed: a number from 0 to 1"):
        from_infotext(GROUPS, {"Hires Demo tau": "high"})
    with pytest.raises(ParamError, match="this extension reads version 1"):
        from_infotext(GROUPS, {"Hires version": "9"})
    with pytest.raises(ParamError, match="True or False"):
        from_infotext(GROUPS, {"Hires enabled": "yes"})


def test_choice_labels_both_ways() -> None:
    method, mode = (next(f for f in all_fields(GROUPS) if f.api_key == key) for key in ("method", "demo_mode"))
    assert (method.label_of("demo"), method.choice_of("Demo"), method.choice_of("demo")) == ("Demo", "demo", "demo")
    assert (method.label_of("other"), method.choice_of("Other")) == ("other", "Other")  # not a choice: unchanged
    assert (mode.label_of("fast"), mode.choice_of("fast")) == ("fast", "fast")  # a field without labels


def test_xyz_axes() -> None:
    axes = {axis.label: axis for axis in xyz_axes(GROUPS)}
    assert list(axes) == ["[Hires] Enabled", "[Hires] Method", "[Hires] Demo Tau", "[Hires] Demo Steps",
                          "[Hires] Demo Mode", "[Hires] Demo Progressive", "[Hires] Demo Tile"]  # not blocks: xyz=False
    assert axes["[Hires] Method"].choices == ("None", "Demo")
    assert axes["[Hires] Method"].parse("Demo") == "demo"
    assert axes["[Hires] Method"].parse("none") == "none"
    assert axes["[Hires] Enabled"].choices == ("True", "False")
    assert axes["[Hires] Enabled"].parse("false") is False
    assert axes["[Hires] Demo Tau"].parse(" 0.25 ") == 0.25
    assert axes["[Hires] Demo Mode"].choices == ("fast", "exact")
    with pytest.raises(ValueError, match="allowed: an integer from 1 to 150"):
        axes["[Hires] Demo Steps"].parse("500")


def test_parameter_reference_is_up_to_date() -> None:
    from pathlib import Path

    from lib_hires.params import reference_markdown

    doc = Path(__file__).resolve().parents[2] / "docs" / "parameters.md"
    assert doc.read_text() == reference_markdown() + "\n", "run: python tools/gen_params_doc.py"
