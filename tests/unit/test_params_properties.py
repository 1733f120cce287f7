"""Property-based tests of every way user input arrives: API dicts, the UI's positional values, infotext.

The strategies are derived from the parameter declarations in `params.py` (types, ranges, choices,
block syntax), each field drawing valid values and values that are wrong by construction (wrong
type, out of range, non-finite, junk). For every input, either settings come back that survive the
infotext exactly, or a `ParamError` names the offending fields; nothing else may happen. Fixed
example counts and derandomized generation keep the run reproducible and within the CI budget.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lib_hires.api import request_problem, settings_from_args
from lib_hires.params import (
    BLOCK_FACTORS, BLOCK_LIST, COMBINATION_GROUPS, GROUPS, INFOTEXT_VERSION, MASK, MAX_DILATION, MAX_REFINE_STAGES, STRENGTHS,
    VERSION_KEY,
    Field, General, ParamError, Settings, all_fields, combination_problems, format_infotext, from_infotext, parse_infotext,
    to_api_dict, to_infotext, validate_api_dict,
)
from lib_hires.unet import ALL_BLOCKS, SAMPLER_BLOCKS

FIELDS = all_fields(GROUPS)
BY_KEY = {f.api_key: f for f in FIELDS}
PROPERTY = settings(max_examples=300, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

JUNK = st.one_of(st.none(), st.text(max_size=12), st.lists(st.integers(), max_size=2),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


# --- block text, from the grammar -----------------------------------------------------------------

@st.composite
def block_keys(draw: st.DrawFn, unique: bool = True) -> list[str]:
    """Valid block keys in a valid order: each block whole first, then its parts; none twice."""
    blocks = draw(st.lists(st.sampled_from(ALL_BLOCKS), max_size=5, unique=True))
    keys: list[str] = []
    for block in blocks:
        parts = ["resnets"] + (["sampler"] if block in SAMPLER_BLOCKS else [])
        chosen = draw(st.lists(st.sampled_from(parts), max_size=2, unique=True))
        if draw(st.booleans()) or not chosen:
            keys.append(block)
        keys += [f"{block}.{part}" for part in chosen]
    return keys


FACTORS = st.one_of(st.integers(1, int(MAX_DILATION)), st.floats(1, MAX_DILATION, allow_nan=False))
SEPARATOR = st.sampled_from([" ", ", ", "  ", ","])


@st.composite
def block_factor_text(draw: st.DrawFn) -> str:
    keys = draw(block_keys())
    return draw(SEPARATOR).join(f"{key}={draw(FACTORS)!r}".replace("'", "") for key in keys)


@st.composite
def block_list_text(draw: st.DrawFn) -> str:
    return draw(SEPARATOR).join(draw(block_keys()))


BAD_BLOCK_TEXT = st.sampled_from([
    "DB4=2", "DB2=", "DB2", "=2", "DB2=0.5", f"DB2={MAX_DILATION + 1}", "DB2=inf", "DB2=nan", "DB2=2 DB2=3",
    "DB2.sampler=4 DB2=3", "DB3.sampler=2", "MB.attn=2", "UB9=2", "db2=2",
])
BAD_BLOCK_LIST = st.sampled_from(["DB4", "DB2 DB2", "DB2=2", "DB3.sampler", "MB.attn", "DB2.sampler DB2", "db2"])
TINY_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAIAAAABCAAAAADRSSBWAAAAC0lEQVR4nGNg+A8AAQIBAEK+vGgAAAAASUVORK5CYII="
"""A 2x1 greyscale PNG (black, white): a region mask."""
BAD_MASKS = st.sampled_from(["not base64!", "aGVsbG8=", "data:image/png;base64,aGVsbG8=", TINY_PNG[:-8]])
BAD_STRENGTHS = st.sampled_from(["0", "-0.1", "1.5", "nan", "inf", "0.2 x", "0.1;0.2", " ".join(["0.2"] * (MAX_REFINE_STAGES + 1))])


@st.composite
def strengths_text(draw: st.DrawFn) -> str:
    values = draw(st.lists(st.floats(0.001, 1.0), max_size=MAX_REFINE_STAGES))
    return draw(st.sampled_from([" ", ", ", ","])).join(repr(v) for v in values)


# --- values per field -----------------------------------------------------------------------------

def valid_values(f: Field, positional: bool = False) -> st.SearchStrategy[Any]:
    """Values the field accepts (positional: choices by UI label or key, ints as gradio's floats)."""
    spec = f.spec
    if spec.choices is not None:
        options = list(spec.choices) + (list(spec.choice_labels or ()) if positional else [])
        return st.sampled_from(options)
    if f.type is bool:
        return st.booleans()
    if spec.syntax is BLOCK_FACTORS:
        return block_factor_text()
    if spec.syntax is BLOCK_LIST:
        return block_list_text()
    if spec.syntax is STRENGTHS:
        return strengths_text()
    if spec.syntax is MASK:
        return st.sampled_from(["", TINY_PNG, "data:image/png;base64," + TINY_PNG])
    assert spec.minimum is not None and spec.maximum is not None, f"no strategy for {f.api_key}"
    if f.type is int:
        values = st.integers(int(spec.minimum), int(spec.maximum))
        if positional:
            values = values.map(float)
    else:
        values = st.floats(spec.minimum, spec.maximum, allow_nan=False)
    return st.one_of(values, st.just(0)) if spec.zero is not None else values


def invalid_values(f: Field) -> st.SearchStrategy[Any]:
    """Values the field must refuse, by construction."""
    spec = f.spec
    non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
    if spec.choices is not None:
        return st.one_of(st.sampled_from([c.upper() + "?" for c in spec.choices]), st.integers(), st.none())
    if f.type is bool:
        return st.one_of(st.integers(0, 1), st.sampled_from(["true", "False", None]))
    if f.type is str:
        bad_text = {BLOCK_LIST: BAD_BLOCK_LIST, STRENGTHS: BAD_STRENGTHS, MASK: BAD_MASKS}.get(spec.syntax, BAD_BLOCK_TEXT)
        return st.one_of(bad_text, st.integers(), st.none(), st.booleans())
    assert spec.minimum is not None and spec.maximum is not None
    below, above = spec.minimum - 1, spec.maximum + 1
    if spec.zero is not None:
        below = min(below, -1)  # 0 is allowed
    out = st.one_of(st.floats(max_value=below, allow_nan=False, allow_infinity=False),
                    st.floats(min_value=above, allow_nan=False, allow_infinity=False), non_finite,
                    st.text(max_size=4), st.booleans(), st.none())
    if f.type is int:
        out = st.one_of(out, st.floats(spec.minimum + 0.25, spec.maximum - 0.25).filter(lambda v: not v.is_integer()))
    if spec.zero is not None and spec.minimum > 1:
        out = st.one_of(out, st.integers(1, int(spec.minimum) - 1))
    return out


# --- properties -----------------------------------------------------------------------------------

def refused_combination(error: ParamError) -> bool:
    """Whether `error` refuses a switched-on combination that does not fit the method (`combination_problems`,
    run on otherwise valid values): then every problem is a switch's refusal, also where it names a field of
    the method."""
    switches = {error.problems[key] for g in COMBINATION_GROUPS if (key := f"{g.KEY}_enabled") in error.problems}
    if not switches:
        return False
    event("combination refused")
    assert set(error.problems.values()) <= switches
    return True


def assert_round_trips(values: Settings) -> None:
    """Through the infotext line as the WebUI writes and parses it, and through the API dict."""
    event("accepted")
    assert validate_api_dict(GROUPS, to_api_dict(values.values.values())).values == values.values
    general = values[General]
    if combination_problems({**values.values, General: dataclasses.replace(general, enabled=True)}):
        assert not general.enabled  # off, a combination that could not run is kept: the job writes no infotext
        return
    line = "Steps: 20, Sampler: Euler a, " + format_infotext(to_infotext(values.values.values())) + ", Hires steps: 4"
    back = validate_api_dict(GROUPS, from_infotext(GROUPS, parse_infotext(line)))
    api_only = {f.api_key: f.default for f in all_fields(GROUPS) if f.spec.api_only}  # never in the infotext
    assert back.values == values.with_overrides({"enabled": True, **api_only}).values  # an infotext means "it ran"
    assert validate_api_dict(GROUPS, to_api_dict(values.values.values())).values == values.values


@st.composite
def api_dicts(draw: st.DrawFn) -> tuple[dict[str, Any], set[str]]:
    """A dict of some fields (valid or invalid values), maybe junk keys and versions; the keys whose
    values are invalid by construction."""
    data: dict[str, Any] = {}
    bad: set[str] = set()
    for f in draw(st.lists(st.sampled_from(FIELDS), max_size=len(FIELDS), unique_by=lambda f: f.api_key)):
        if draw(st.integers(0, 9)) == 0:
            data[f.api_key] = draw(invalid_values(f))
            if f.type is not str or not isinstance(data[f.api_key], str) or f.spec.syntax is not None:
                bad.add(f.api_key)
        else:
            data[f.api_key] = draw(valid_values(f))
    if draw(st.integers(0, 5)) == 0:
        data["version"] = draw(st.one_of(st.just(1), st.integers(2, 3), JUNK))
        if data["version"] != 1:
            bad.add("version")
    if draw(st.integers(0, 5)) == 0:
        key = draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in BY_KEY and k != "version"))
        data[key] = draw(JUNK)
        bad.add(key)
    return data, bad


@PROPERTY
@given(api_dicts())
def test_api_dicts(case: tuple[dict[str, Any], set[str]]) -> None:
    data, bad = case
    try:
        values = validate_api_dict(GROUPS, data)
    except ParamError as error:
        event("refused")
        if not bad and refused_combination(error):  # combinations are judged once every value is valid
            return
        assert error.problems and set(error.problems) <= set(data)
        assert bad <= set(error.problems)
        assert all(key in str(error) for key in error.problems)
        return
    assert not bad
    assert values.given == set(data) - {"version"}
    assert_round_trips(values)


@st.composite
def positional_lists(draw: st.DrawFn) -> tuple[list[Any], set[str]]:
    count = draw(st.integers(0, len(FIELDS)))
    args: list[Any] = []
    bad: set[str] = set()
    for f in FIELDS[:count]:
        if draw(st.integers(0, 14)) == 0:
            value = draw(invalid_values(f))
            args.append(value)
            if f.type is not str or not isinstance(value, str) or f.spec.syntax is not None:
                bad.add(f.api_key)
        else:
            args.append(draw(valid_values(f, positional=True)))
    return args, bad


@PROPERTY
@given(positional_lists())
def test_positional_args(case: tuple[list[Any], set[str]]) -> None:
    args, bad = case
    if args and isinstance(args[0], dict):
        return  # a dict in the first slot is the dict form (test_api_dicts)
    try:
        values = settings_from_args(args)
    except ParamError as error:
        event("refused")
        if not bad and refused_combination(error):  # combinations are judged once every value is valid
            return
        assert error.problems and set(error.problems) <= {f.api_key for f in FIELDS[:len(args)]}
        assert bad <= set(error.problems)
        return
    assert not bad
    assert_round_trips(values)


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=16)


@st.composite
def infotext_lines(draw: st.DrawFn) -> tuple[str, set[str]]:
    """A parameters line with some of our entries (valid texts, or junk) among the WebUI's own."""
    entries: dict[str, str] = {}
    for f in draw(st.lists(st.sampled_from(FIELDS), max_size=len(FIELDS), unique_by=lambda f: f.api_key)):
        entries[f.infotext_key] = f.to_text(draw(valid_values(f))) if draw(st.integers(0, 9)) else draw(TEXT)
    if draw(st.integers(0, 5)) == 0:
        entries[VERSION_KEY] = draw(st.one_of(st.just(str(INFOTEXT_VERSION)), TEXT))
    if draw(st.integers(0, 5)) == 0:  # keys of version 1 images too
        f = draw(st.sampled_from(FIELDS))
        entries[f.legacy_infotext_key] = draw(st.one_of(valid_values(f).map(str), TEXT))
    ours = format_infotext(entries)
    theirs = "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Hires upscale: 2"
    return (f"{theirs}, {ours}" if ours else theirs), set(entries)


@PROPERTY
@given(infotext_lines())
def test_infotext_lines(case: tuple[str, set[str]]) -> None:
    line, keys = case
    try:
        data = from_infotext(GROUPS, parse_infotext(line))
    except ParamError as error:
        event("refused")
        assert error.problems and set(error.problems) <= keys
        return
    try:
        values = validate_api_dict(GROUPS, data)  # what infotext gives back is valid, or a combination refused
    except ParamError as error:
        assert refused_combination(error)
        return
    assert_round_trips(values)


@PROPERTY
@given(st.one_of(api_dicts().map(lambda case: [case[0]]), positional_lists().map(lambda case: case[0]), JUNK),
       st.sampled_from(["hires methods", "Hires Methods", "other"]))
def test_requests_are_judged_never_crash(args: Any, key: str) -> None:
    body = json.dumps({"prompt": "x", "alwayson_scripts": {key: {"args": args}}}).encode()
    problem = request_problem(body)
    if key == "other":
        assert problem is None
    elif problem is not None:
        assert problem["errors"] and json.dumps(problem)
