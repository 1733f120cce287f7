"""The parameter machinery on a sample parameter set: API validation, infotext round trip, XYZ."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from lib_hires.params import GROUPS as REAL_GROUPS
from lib_hires.params import (
    WEBUI_HIRES_KEYS, ParamError, ParamGroup, Syntax, all_fields, fields, format_infotext, from_infotext, is_ours,
    param, parse_infotext, read_infotext, to_api_dict, to_infotext, validate_api_dict, xyz_axes,
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
    tau, mode = fields(Demo)[0], fields(Demo)[2]
    assert (tau.api_key, tau.infotext_key, tau.xyz_label) == ("demo_tau", "Demo tau", "[Hires Methods] Demo tau")
    assert (mode.infotext_key, mode.legacy_infotext_key) == ("Demo mode", "Hires Demo mode")
    enabled, method = fields(Shared)
    assert (enabled.api_key, enabled.infotext_key, enabled.xyz_label) == (
        "enabled", "Hires Methods enabled", "[Hires Methods] Enabled")
    assert (method.infotext_key, method.legacy_infotext_key) == ("Hires Methods method", "Hires method")
    # the real declarations: a group's switch is its title, the method the extension's name; acronyms kept
    keys = {f.api_key: f.infotext_key for f in all_fields(REAL_GROUPS)}
    assert (keys["method"], keys["tiled_vae_enabled"], keys["scalecrafter_ndcfg_tau"]) == (
        "Hires Methods", "Tiled VAE", "ScaleCrafter ND-CFG steps")


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
                                        "demo_blocks": "DB1=2.5 UB0=3", "demo_tile": 0})
    entries = to_infotext(values.values.values())
    assert entries["Hires Methods version"] == "2" and "Hires Methods enabled" not in entries  # implied
    assert entries["Demo tau"] == repr(0.1 + 0.2) and entries["Demo tile"] == "auto"
    assert entries["Hires Methods method"] == "Demo"  # choices are written as the UI labels them
    assert all("," not in v and ":" not in v for v in entries.values())
    line = "Steps: 20, Sampler: Euler a, " + format_infotext(entries) + ", Hires upscale: 2"
    parsed = parse_infotext(line)
    assert parsed["Steps"] == "20" and parsed["Hires upscale"] == "2"
    back = validate_api_dict(GROUPS, from_infotext(GROUPS, parsed))
    assert back.values == values.values
    assert back[Demo].tau == 0.1 + 0.2  # bit-exact float


def test_empty_text_survives_the_webui_format() -> None:
    values = validate_api_dict(GROUPS, {"enabled": True, "demo_blocks": ""})
    entries = to_infotext(values.values.values())
    assert entries["Demo blocks"] == '""'
    line = format_infotext(entries)
    assert 'Demo blocks: ""' in line
    parsed = parse_infotext(line)
    assert parsed["Demo blocks"] == ""
    assert validate_api_dict(GROUPS, from_infotext(GROUPS, parsed)).values == values.values
    assert from_infotext(GROUPS, {"Demo blocks": '""'}) == {"demo_blocks": "", "enabled": True}  # still quoted


def test_infotext_partial_quoted_and_bad_values() -> None:
    assert from_infotext(GROUPS, {"Demo steps": "12"}) == {"demo_steps": 12, "enabled": True}
    assert from_infotext(GROUPS, {"Steps": "12", "Hires steps": "4"}) == {}  # nothing of ours: not enabled
    assert parse_infotext(format_infotext({"Demo blocks": "a, b: c"})) == {"Demo blocks": "a, b: c"}
    assert parse_infotext('Demo blocks: "\\x", Steps: 3') == {"Demo blocks": '"\\x"', "Steps": "3"}  # bad JSON kept
    with pytest.raises(ParamError, match="Demo tau.*allowed: a number from 0 to 1"):
        from_infotext(GROUPS, {"Demo tau": "high"})
    with pytest.raises(ParamError, match="Hires Methods version: got '9'; allowed: 2"):
        from_infotext(GROUPS, {"Hires Methods version": "9"})
    with pytest.raises(ParamError, match="Demo tile: got 'none'"):
        from_infotext(GROUPS, {"Demo tile": "none"})
    assert read_infotext(GROUPS, {"Demo tau": "high", "Demo steps": "3"}) == (
        {"demo_steps": 3, "enabled": True}, {"Demo tau": "got 'high'; allowed: a number from 0 to 1"})


def test_version_1_infotext_still_reads() -> None:
    """Keys written before version 2: `Hires <title> <field name>`, choices by key, `Hires enabled`."""
    v1 = {"Hires version": "1", "Hires enabled": "True", "Hires method": "demo", "Hires Demo tau": "0.25",
          "Hires Demo mode": "exact", "Hires Demo tile": "0", "Hires steps": "10", "Hires upscale": "2"}
    assert from_infotext(GROUPS, v1) == {"enabled": True, "method": "demo", "demo_tau": 0.25, "demo_mode": "exact",
                                         "demo_tile": 0}
    assert from_infotext(GROUPS, {**v1, "Hires enabled": "False"})["enabled"] is False
    assert from_infotext(GROUPS, {**v1, "Demo tau": "0.5"})["demo_tau"] == 0.5  # a version-2 key wins
    with pytest.raises(ParamError, match="Hires version: got '3'; allowed: 1"):
        from_infotext(GROUPS, {**v1, "Hires version": "3"})


def test_which_keys_are_ours() -> None:
    ours = ["Hires Methods", "Hires Methods version", "Hires Methods warning", "ScaleCrafter dilated steps",
            "ScaleCrafter setting", "Tiled VAE", "Tiled VAE fp32", "Hires ScaleCrafter tau", "Hires version",
            "Hires method", "Hires warning"]
    theirs = ["Hires upscale", "Hires steps", "Steps", "Tiled Diffusion", "Tiled VAE stuff", "ControlNet 0"]
    assert [key for key in ours + theirs if is_ours(key, REAL_GROUPS)] == ours


def test_choice_labels_both_ways() -> None:
    method, mode = (next(f for f in all_fields(GROUPS) if f.api_key == key) for key in ("method", "demo_mode"))
    assert (method.label_of("demo"), method.choice_of("Demo"), method.choice_of("demo")) == ("Demo", "demo", "demo")
    assert (method.label_of("other"), method.choice_of("Other")) == ("other", "Other")  # not a choice: unchanged
    assert (mode.label_of("fast"), mode.choice_of("fast")) == ("fast", "fast")  # a field without labels


def test_xyz_axes() -> None:
    axes = {axis.label.removeprefix("[Hires Methods] "): axis for axis in xyz_axes(GROUPS)}
    assert list(axes) == ["Enabled", "Method", "Demo tau", "Demo steps", "Demo mode", "Demo progressive",
                          "Demo tile"]  # not blocks: xyz=False
    assert axes["Method"].choices == ("None", "Demo")
    assert axes["Method"].parse("Demo") == "demo"
    assert axes["Method"].parse("none") == "none"
    assert axes["Enabled"].choices == ("True", "False")
    assert axes["Enabled"].parse("false") is False
    assert axes["Demo tau"].parse(" 0.25 ") == 0.25
    assert axes["Demo tile"].parse("auto") == 0 and axes["Demo tile"].parse("32") == 32
    assert axes["Demo mode"].choices == ("fast", "exact")
    with pytest.raises(ValueError, match="allowed: an integer from 1 to 150"):
        axes["Demo steps"].parse("500")


def test_real_keys_and_labels_are_unique_and_unmistakable() -> None:
    """No key a reader could take for hires fix's, none the WebUI cannot parse back, none twice."""
    import re

    fields_ = all_fields(REAL_GROUPS)
    keys = [f.infotext_key for f in fields_]
    assert len(set(keys)) == len(keys) and not set(keys) & WEBUI_HIRES_KEYS
    assert all(not key.startswith("Hires ") or key.startswith("Hires Methods") for key in keys)
    assert all(re.fullmatch(r"\w[\w \-/]+", key) for key in keys)
    labels = [axis.label for axis in xyz_axes(REAL_GROUPS)]
    assert len(set(labels)) == len(labels) and all(label.startswith("[Hires Methods] ") for label in labels)


def test_parameter_reference_is_up_to_date() -> None:
    from pathlib import Path

    from lib_hires.params import reference_markdown

    doc = Path(__file__).resolve().parents[2] / "docs" / "parameters.md"
    assert doc.read_text() == reference_markdown() + "\n", "run: python tools/gen_params_doc.py"


def test_groups_are_complete_and_positional_order_is_append_only() -> None:
    from lib_hires.params import COMBINATION_GROUPS, FEATURE_GROUPS, METHOD_GROUPS, General

    assert REAL_GROUPS[0] is General and set(REAL_GROUPS) == {General, *METHOD_GROUPS, *FEATURE_GROUPS,
                                                               *COMBINATION_GROUPS}
    assert len(REAL_GROUPS) == len(set(REAL_GROUPS))
    # the positions of the values released before FSTD and MultiDiffusion were added
    keys = [f.api_key for f in all_fields(REAL_GROUPS)]
    assert keys[:16] == ["enabled", "method", "scalecrafter_preset", "scalecrafter_apply_to", "scalecrafter_dilation",
                         "scalecrafter_tau", "scalecrafter_progressive", "scalecrafter_ndcfg",
                         "scalecrafter_ndcfg_dilation", "scalecrafter_ndcfg_tau", "scalecrafter_disperse",
                         "scalecrafter_disperse_blocks", "tiled_vae_enabled", "tiled_vae_decoder_tile",
                         "tiled_vae_encoder_tile", "tiled_vae_fp32"]
