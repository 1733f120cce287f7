"""Every user-facing parameter, declared once.

A parameter is a field of a frozen dataclass (one dataclass per method, plus the shared ones),
declared with `param(...)`: default, range or choices, help text and UI label. Everything else is
derived from that one declaration, so adding a parameter is one edit:

* API: the `alwayson_scripts["hires methods"]["args"][0]` dict is flat; a group's field `tau` in
  group `scalecrafter` has the key `scalecrafter_tau` (shared fields keep their bare name).
  `validate_api_dict` turns such a dict into values, with defaults for omitted keys, and raises one
  `ParamError` naming every bad field and what it allows.
* Infotext: `Hires <Group title> <field name with spaces>` keys (shared: `Hires <field>`), plus
  `Hires version`. Values are written so that they contain no `,` or `:` (else JSON-quoted, as the
  WebUI does), and parse back to the same values (floats via `repr`, exact round trip).
* XYZ: one axis per field with `xyz=True`, labelled `[Hires] <Group title> <label>`.
* UI: label, help, range/step or choices for the component (built by the WebUI glue).

This module is pure: the WebUI glue turns these specs into gradio components and XYZ axes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from .presets import PRESETS
from .unet import BLOCK_NAMES_TEXT, format_block_values, parse_block_list, parse_block_values

API_VERSION = 1
INFOTEXT_PREFIX = "Hires "
XYZ_PREFIX = "[Hires] "
# the WebUIs' own hires-fix infotext keys share our prefix: ours must never collide with them
WEBUI_HIRES_KEYS = frozenset({
    "Hires upscale", "Hires resize", "Hires resize-1", "Hires resize-2", "Hires steps", "Hires upscaler", "Hires sampler",
    "Hires schedule type", "Hires checkpoint", "Hires prompt", "Hires negative prompt", "Hires CFG Scale",
    "Hires Distilled CFG Scale", "Hires VAE/TE", "Hires Module 1", "Hires Module 2", "Hires Module 3",
})


@dataclass(frozen=True)
class Spec:
    """How one parameter is shown, validated and serialised (stored in the field's metadata)."""

    label: str
    help: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[str, ...] | None = None
    choice_labels: tuple[str, ...] | None = None  # UI/XYZ names of `choices`, same order
    syntax: Syntax | None = None  # the grammar of a free-text value
    zero: str | None = None  # what 0 means when it lies outside [minimum, maximum], e.g. "auto"
    xyz: bool = True
    from_preset: bool = False  # taken from the group's preset unless given explicitly (see `Settings`)


@dataclass(frozen=True)
class Syntax:
    """The grammar of a free-text parameter: `parse` returns the canonical text or raises `ValueError`
    saying what is wrong; `describe` says what is allowed (422 messages, docs/parameters.md)."""

    parse: Callable[[str], str]
    describe: str


def param(default: Any, label: str, help: str, *, minimum: float | None = None, maximum: float | None = None,
          step: float | None = None, choices: Sequence[str] | None = None,
          choice_labels: Sequence[str] | None = None, syntax: Syntax | None = None, zero: str | None = None,
          xyz: bool = True, from_preset: bool = False) -> Any:
    """Declare a parameter field: `tau: float = param(0.7, "Tau", "...", minimum=0, maximum=1)`."""
    spec = Spec(label, help, minimum, maximum, step, tuple(choices) if choices is not None else None,
                tuple(choice_labels) if choice_labels is not None else None, syntax, zero, xyz, from_preset)
    return dataclasses.field(default=default, metadata={"spec": spec})


class ParamError(ValueError):
    """Invalid user input. `problems` maps each bad API key to what is wrong and what is allowed."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        super().__init__("; ".join(f"{key}: {text}" for key, text in self.problems.items()))


class ParamGroup:
    """Base of the parameter dataclasses. `KEY` prefixes API keys ("" for shared parameters) and
    `TITLE` names the group in infotext keys, XYZ labels and the UI."""

    KEY: ClassVar[str] = ""
    TITLE: ClassVar[str] = ""

    def check(self) -> dict[str, str]:
        """Cross-field problems, keyed by API key (override where fields constrain each other)."""
        return {}


@dataclass(frozen=True)
class Field:
    """One parameter with everything derived from its declaration."""

    group: type[ParamGroup]
    name: str
    type: type
    default: Any
    spec: Spec

    @property
    def api_key(self) -> str:
        return f"{self.group.KEY}_{self.name}" if self.group.KEY else self.name

    @property
    def infotext_key(self) -> str:
        words = self.name.replace("_", " ")
        return f"{INFOTEXT_PREFIX}{self.group.TITLE} {words}" if self.group.KEY else f"{INFOTEXT_PREFIX}{words}"

    @property
    def xyz_label(self) -> str:
        return f"{XYZ_PREFIX}{self.group.TITLE} {self.spec.label}" if self.group.KEY else f"{XYZ_PREFIX}{self.spec.label}"

    def label_of(self, value: object) -> object:
        """The UI label of a choice; any other value unchanged."""
        spec = self.spec
        if spec.choices is not None and spec.choice_labels is not None and value in spec.choices:
            return spec.choice_labels[spec.choices.index(value)]
        return value

    def choice_of(self, value: object) -> object:
        """The choice a UI label stands for; any other value (a choice key included) unchanged."""
        spec = self.spec
        if spec.choices is not None and spec.choice_labels is not None and value in spec.choice_labels:
            return spec.choices[spec.choice_labels.index(value)]
        return value

    def allowed(self) -> str:
        """What values are allowed, in words (used in error messages and the API docs)."""
        spec = self.spec
        if spec.choices is not None:
            return "one of " + ", ".join(repr(c) for c in spec.choices)
        if self.type is bool:
            return "true or false"
        if spec.syntax is not None:
            return spec.syntax.describe
        kind = "an integer" if self.type is int else "a number" if self.type is float else "a string"
        zero = f"0 ({spec.zero}) or " if spec.zero is not None else ""
        if spec.minimum is not None and spec.maximum is not None:
            return f"{zero}{kind} from {_num(spec.minimum)} to {_num(spec.maximum)}"
        if spec.minimum is not None:
            return f"{zero}{kind} >= {_num(spec.minimum)}"
        return kind

    def coerce(self, value: object) -> Any:
        """The value as this field's type, or `ValueError` saying what is allowed. Strict for API input:
        no strings for numbers or bools, no infinities or NaN; ints are accepted for floats (and floats
        with an integer value for ints)."""
        problem = ValueError(f"got {value!r}; allowed: {self.allowed()}")
        if isinstance(value, float) and not math.isfinite(value):
            raise problem
        if self.type is bool:
            if not isinstance(value, bool):
                raise problem
        elif self.type is int:
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise problem
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise problem
            value = float(value)
        elif self.type is str:
            if not isinstance(value, str):
                raise problem
        spec = self.spec
        if spec.choices is not None and value not in spec.choices:
            raise problem
        if not (spec.zero is not None and value == 0):
            if spec.minimum is not None and value < spec.minimum:  # type: ignore[operator]
                raise problem
            if spec.maximum is not None and value > spec.maximum:  # type: ignore[operator]
                raise problem
        if spec.syntax is not None:
            try:
                value = spec.syntax.parse(value)  # type: ignore[arg-type]
            except ValueError as exc:
                raise ValueError(f"got {value!r}: {exc}") from None
        return value

    def to_text(self, value: Any) -> str:
        """Infotext form of a value (inverse of `from_text`). The empty text is written `""`: the WebUIs
        cannot parse an empty value (`Key: ,`) and unquote `""` to the empty text."""
        if self.type is float:
            return repr(float(value))
        return str(value) or '""'

    def from_text(self, text: str) -> Any:
        """Parse an infotext value (unquoted) and validate it like an API value."""
        raw: object
        if self.type is bool:
            if text not in ("True", "False"):
                raise ValueError(f"got {text!r}; allowed: True or False")
            raw = text == "True"
        elif self.type is int:
            try:
                raw = int(text)
            except ValueError:
                raise ValueError(f"got {text!r}; allowed: {self.allowed()}") from None
        elif self.type is float:
            try:
                raw = float(text)
            except ValueError:
                raise ValueError(f"got {text!r}; allowed: {self.allowed()}") from None
        else:
            raw = "" if text == '""' else text
        return self.coerce(raw)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def fields(group: type[ParamGroup]) -> tuple[Field, ...]:
    """The parameters of a group, in declaration order."""
    hints = typing.get_type_hints(group)
    return tuple(
        Field(group, f.name, hints[f.name], f.default, f.metadata["spec"])
        for f in dataclasses.fields(group)  # type: ignore[arg-type]
        if "spec" in f.metadata
    )


def all_fields(groups: Iterable[type[ParamGroup]]) -> tuple[Field, ...]:
    return tuple(f for group in groups for f in fields(group))


@dataclass(frozen=True)
class Settings:
    """The values of every group, and which API keys the user gave explicitly.

    Fields declared `from_preset=True` take their value from the group's preset unless their key is
    in `given` (an API dict key, an X/Y/Z axis, or a UI control while the preset is "custom").
    """

    values: Mapping[type[ParamGroup], ParamGroup]
    given: frozenset[str]

    def __getitem__(self, group: type[ParamGroup]) -> Any:
        return self.values[group]

    def with_overrides(self, data: Mapping[str, object]) -> Settings:
        """These settings with some keys set (validated) and marked as given, e.g. by X/Y/Z axes."""
        merged = {**to_api_dict(self.values.values()), **data}
        values = validate_api_dict(tuple(self.values), merged).values
        return Settings(values, self.given | frozenset(k for k in data if k != "version"))


def validate_api_dict(groups: Sequence[type[ParamGroup]], data: Mapping[str, object]) -> Settings:
    """Values of every group from a flat API dict; omitted keys take defaults.

    Raises `ParamError` naming every unknown key, wrong type, out-of-range value, bad version and
    failed cross-field check, with what is allowed.
    """
    if not isinstance(data, Mapping):
        raise ParamError({"args[0]": f"expected a dict of parameters, got {type(data).__name__}"})
    by_key = {f.api_key: f for f in all_fields(groups)}
    problems: dict[str, str] = {}
    version = data.get("version", API_VERSION)
    if version != API_VERSION:
        problems["version"] = f"got {version!r}; allowed: {API_VERSION}"
    kwargs: dict[type[ParamGroup], dict[str, Any]] = {group: {} for group in groups}
    for key, value in data.items():
        if key == "version":
            continue
        field = by_key.get(key)
        if field is None:
            problems[key] = f"unknown key; allowed keys: version, {', '.join(by_key)}"
            continue
        try:
            kwargs[field.group][field.name] = field.coerce(value)
        except ValueError as exc:
            problems[key] = str(exc)
    values = {group: group(**kwargs[group]) for group in groups} if not problems else {}
    for value in values.values():
        problems.update(value.check())
    if problems:
        raise ParamError(problems)
    return Settings(values, frozenset(k for k in data if k != "version"))


def from_ui(groups: Sequence[type[ParamGroup]], data: Mapping[str, object]) -> Settings:
    """Settings from the UI's controls (all keys present). The UI shows every control, so nothing is
    "given" in the API's sense except the `from_preset` fields of the selected method's group while its
    preset is "custom" (otherwise the preset decides them; the controls only display its values)."""
    settings = validate_api_dict(groups, data)
    method = data.get("method")
    given = {f.api_key for group in groups for f in fields(group)
             if f.spec.from_preset and getattr(settings[group], "preset", None) == "custom"
             and (group not in METHOD_GROUPS or group.KEY == method)}
    return Settings(settings.values, frozenset(given))


def to_api_dict(values: Iterable[ParamGroup]) -> dict[str, object]:
    """The flat API dict of some values (inverse of `validate_api_dict`)."""
    data: dict[str, object] = {"version": API_VERSION}
    for value in values:
        for f in fields(type(value)):
            data[f.api_key] = getattr(value, f.name)
    return data


def to_infotext(values: Iterable[ParamGroup]) -> dict[str, str]:
    """Infotext entries (key -> unquoted text) for the given values, led by `Hires version`."""
    entries = {f"{INFOTEXT_PREFIX}version": str(API_VERSION)}
    for value in values:
        for f in fields(type(value)):
            entries[f.infotext_key] = f.to_text(getattr(value, f.name))
    return entries


def from_infotext(groups: Sequence[type[ParamGroup]], entries: Mapping[str, str]) -> dict[str, object]:
    """Parse infotext entries back into a flat API dict, for the keys present (others keep defaults).

    Raises `ParamError` for a malformed value or an unsupported `Hires version`.
    """
    problems: dict[str, str] = {}
    data: dict[str, object] = {}
    version = entries.get(f"{INFOTEXT_PREFIX}version")
    if version is not None and version != str(API_VERSION):
        problems[f"{INFOTEXT_PREFIX}version"] = f"got {version!r}; this extension reads version {API_VERSION}"
    for f in all_fields(groups):
        text = entries.get(f.infotext_key)
        if text is None:
            continue
        try:
            data[f.api_key] = f.from_text(text)
        except ValueError as exc:
            problems[f.infotext_key] = str(exc)
    if problems:
        raise ParamError(problems)
    return data


# --- infotext text form, compatible with the WebUI's `Key: value, Key: "quoted, value"` lines ---

def quote(text: str) -> str:
    """JSON-quote a value that contains `,`, `:` or a newline (the WebUI's own rule)."""
    return json.dumps(text, ensure_ascii=False) if re.search(r"[,:\n]", text) else text


def format_infotext(entries: Mapping[str, str]) -> str:
    return ", ".join(f"{key}: {quote(value)}" for key, value in entries.items())


_ENTRY = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
"""One `Key: value` entry, exactly as the WebUIs' `infotext_utils.parse_generation_parameters` reads it
(so a key must be a word character followed by word characters, spaces, `-` or `/`)."""


def parse_infotext(line: str) -> dict[str, str]:
    """Parse a `Key: value, Key: "quoted"` line (the WebUI's parameters line) into unquoted entries, as
    the WebUIs do: a quoted value that is not valid JSON is kept as it is."""
    entries: dict[str, str] = {}
    for key, value in _ENTRY.findall(line):
        value = value.strip()
        if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        entries[key.strip()] = str(value)
    return entries


# --- XYZ axes ---

@dataclass(frozen=True)
class Axis:
    """One XYZ axis: the parameter it sets, its label, and (for enums and bools) its choices."""

    field: Field

    @property
    def label(self) -> str:
        return self.field.xyz_label

    @property
    def choices(self) -> tuple[str, ...] | None:
        if self.field.type is bool:
            return ("True", "False")
        return self.field.spec.choice_labels or self.field.spec.choices

    def parse(self, text: str) -> Any:
        """The value an XYZ cell's text stands for (enum choices by key or label; bools any case)."""
        text = str(self.field.choice_of(text.strip()))
        if self.field.type is bool and text.lower() in ("true", "false"):
            text = text.capitalize()
        return self.field.from_text(text)


def xyz_axes(groups: Iterable[type[ParamGroup]]) -> tuple[Axis, ...]:
    """One axis per XYZ-enabled field of the groups, in declaration order."""
    return tuple(Axis(f) for f in all_fields(groups) if f.spec.xyz)


# --- the parameters of Hires Methods ---

MAX_DILATION = 8
"""Largest perception-field factor a user may give: twice the largest official or paper setting (4).
A factor f pads each re-dilated conv's input by ceil(f) pixels per side; where that is not smaller
than the feature map, the plan leaves the pass unchanged and says so (`methods.scalecrafter.bind`)."""

BLOCK_FACTORS = Syntax(
    lambda text: format_block_values(parse_block_values(text, MAX_DILATION)),
    f"block factors such as 'DB2=3 MB=4' (or empty): blocks {BLOCK_NAMES_TEXT}; each key once, a whole "
    f"block before its parts; factors from 1 to {MAX_DILATION} (a factor f pads each conv's input by "
    "ceil(f) pixels per side: never beyond the feature map it pads, else that pass is left unchanged "
    "with a warning)")
BLOCK_LIST = Syntax(
    lambda text: " ".join(parse_block_list(text)),
    f"block names such as 'DB3 MB UB0' (or empty): {BLOCK_NAMES_TEXT}; each once")


@dataclass(frozen=True)
class ScaleCrafterParams(ParamGroup):
    """ScaleCrafter (He et al., ICLR 2024); the values are explained in docs/scalecrafter.md."""

    KEY = "scalecrafter"
    TITLE = "ScaleCrafter"

    preset: str = param(
        "auto", "Preset",
        "Where dilation, steps and ND-CFG come from: Auto picks the official setting nearest to the pass's "
        "size and scales it; a named preset is one official (code) or paper setting as is; Custom uses the "
        "fields below. Fields you give explicitly (API, X/Y/Z) override the preset.",
        choices=("auto", *(p.key for p in PRESETS), "custom"),
        choice_labels=("Auto", *(p.label for p in PRESETS), "Custom"))
    apply_to: str = param(
        "auto", "Apply to",
        "Which pass is re-dilated, each for its own size. Auto: the hires pass when hires fix is on, else "
        "the first pass. (The Auto preset leaves a pass at or below the model's native size unchanged.)",
        choices=("auto", "first", "hires", "both"), choice_labels=("Auto", "First pass", "Hires pass", "Both"))
    dilation: str = param(
        "DB1=2 DB2=2 DB3=2 MB=2 UB0=2 UB1=2 UB2=2", "Dilation",
        "Perception-field factor per block (DB0-DB3, MB, UB0-UB3; SDXL DB0-DB2, MB, UB0-UB2), e.g. "
        "'DB2=3 DB3=4 MB=4'; '.resnets' or '.sampler' after a block selects part of it. Fractional factors "
        "use the official resize trick.", syntax=BLOCK_FACTORS, from_preset=True)
    tau: float = param(
        0.6, "Dilated steps",
        "Fraction of the pass's steps, from the noisiest, that use re-dilation (the paper's tau / 50).",
        minimum=0.0, maximum=1.0, step=0.02, from_preset=True)
    progressive: bool = param(
        False, "Progressive", "Decay each factor toward 2 over the dilated steps: f_i = max(ceil(f (tau-i)/tau), 2).",
        from_preset=True)
    ndcfg: bool = param(
        True, "Noise-damped CFG",
        "Where the setting has a noise-damped block set, take the unconditional prediction from a UNet "
        "dilated only on those blocks (one extra unconditional pass per step while active).")
    ndcfg_dilation: str = param(
        "", "ND-CFG dilation", "Per-block factors of the noise-damped model (same form as Dilation); empty: off.",
        syntax=BLOCK_FACTORS, from_preset=True)
    ndcfg_tau: float = param(
        0.0, "ND-CFG steps", "Fraction of the pass's steps that use noise-damped CFG.",
        minimum=0.0, maximum=1.0, step=0.02, from_preset=True)
    disperse: bool = param(
        False, "Dispersed convolution",
        "Use the dispersed 5x5 kernel (paper App. F) on the dispersed blocks; off in every official config.")
    disperse_blocks: str = param(
        "", "Dispersed blocks", "Blocks whose convs use the dispersed kernel while dilated, e.g. 'DB3 MB UB0'.",
        syntax=BLOCK_LIST, from_preset=True)


@dataclass(frozen=True)
class TiledVAEParams(ParamGroup):
    """Tiled VAE with GroupNorm statistics synchronised over all tiles (docs/tiled_vae.md)."""

    KEY = "tiled_vae"
    TITLE = "Tiled VAE"

    enabled: bool = param(
        False, "Tiled VAE",
        "Decode and encode in tiles with every GroupNorm's statistics pooled over all tiles: the same "
        "pixels as the untiled VAE (within 1e-4) at a fraction of its peak memory. Works with any method "
        "or alone (Method: None).")
    decoder_tile: int = param(
        0, "Decoder tile", "Core size of a decoder tile in latent pixels (x8 in the image); 0 = from free memory.",
        minimum=16, maximum=512, step=16, zero="auto")  # minimum: vae.memory.MIN_TILE_LATENT (halo cost)
    encoder_tile: int = param(
        0, "Encoder tile", "Core size of an encoder tile in image pixels; 0 = from free memory.",
        minimum=128, maximum=4096, step=128, zero="auto")
    fp32: str = param(
        "on_nan", "fp32",
        "Run the VAE math in fp32, tile by tile: On NaN retries a decode/encode whose fp16 VAE overflowed "
        "(NaN/inf, black or speckled images) in fp32; Always does so from the start.",
        choices=("off", "on_nan", "always"), choice_labels=("Off", "On NaN", "Always"))


METHOD_GROUPS: tuple[type[ParamGroup], ...] = (ScaleCrafterParams,)
"""One group per method (`methods.METHODS` has the same keys), in the order the method menu lists them."""
FEATURE_GROUPS: tuple[type[ParamGroup], ...] = (TiledVAEParams,)
"""Shared features that work with any method or alone."""


@dataclass(frozen=True)
class General(ParamGroup):
    """Shared by every method. The method choices are the method groups' keys and titles."""

    enabled: bool = param(False, "Enabled", "Run Hires Methods for this job (the accordion's switch). An API "
                          "dict turns it on unless it says \"enabled\": false.")
    method: str = param("scalecrafter", "Method", "The high-resolution method. None runs only what is enabled "
                        "besides a method (e.g. Tiled VAE).", choices=("none", *(g.KEY for g in METHOD_GROUPS)),
                        choice_labels=("None", *(g.TITLE for g in METHOD_GROUPS)))


GROUPS: tuple[type[ParamGroup], ...] = (General, *METHOD_GROUPS, *FEATURE_GROUPS)


def reference_markdown(groups: Sequence[type[ParamGroup]] = GROUPS) -> str:
    """docs/parameters.md: every parameter with its API key, allowed values, default, infotext key and
    X/Y/Z label (generated from this module; a test keeps the file in step)."""
    lines = ["# Parameters", "",
             "Generated from `lib_hires/params.py` by `python tools/gen_params_doc.py`; do not edit by hand.",
             "", f"API dict version: {API_VERSION} (`\"version\": {API_VERSION}`, optional).", ""]
    for group in groups:
        lines += [f"## {group.TITLE or 'General'}", "", "| API key | allowed | default | infotext key | X/Y/Z axis | what it does |",
                  "|---|---|---|---|---|---|"]
        for f in fields(group):
            default = json.dumps(f.default)
            axis = f.xyz_label if f.spec.xyz else "-"
            help_text = f.spec.help.replace("|", "\\|")
            if f.spec.from_preset:
                help_text += " *(from the preset unless given)*"
            lines.append(f"| `{f.api_key}` | {f.allowed()} | `{default}` | `{f.infotext_key}` | `{axis}` | {help_text} |")
        lines.append("")
    return "\n".join(lines)
