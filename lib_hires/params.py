"""Every user-facing parameter, declared once.

A parameter is a field of a frozen dataclass (one dataclass per method, plus the shared ones),
declared with `param(...)`: default, range or choices, help text and UI label. Everything else is
derived from that one declaration, so adding a parameter is one edit:

* API: the `alwayson_scripts["hires methods"]["args"][0]` dict is flat; a group's field `tau` in
  group `scalecrafter` has the key `scalecrafter_tau` (shared fields keep their bare name).
  `validate_api_dict` turns such a dict into values, with defaults for omitted keys, and raises one
  `ParamError` naming every bad field and what it allows.
* Infotext (version 2): keys named like the UI: `<Group title> <label>` (`ScaleCrafter dilated steps`;
  a group's `enabled` field is the title alone, `Tiled VAE`), the shared fields under the extension's
  name (`Hires Methods: ScaleCrafter` is the method; `Hires Methods version`). Nothing is written for
  a disabled job, so our keys' presence means "enabled". Values are written as the UI shows them
  (choice labels, `auto` for a 0 that means auto), contain no `,` or `:` (else JSON-quoted, as the
  WebUI does), and parse back to the same values (floats via `repr`, exact round trip). Version-1
  keys (`Hires ScaleCrafter tau`, `Hires method`, ...) are still read.
* XYZ: one axis per field with `xyz=True`, labelled `[Hires Methods] <infotext name>`.
* UI: label, help, range/step or choices for the component, and the tabs it shows in (built by the
  WebUI glue).

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
INFOTEXT_VERSION = 2
NAME = "Hires Methods"  # the extension: the infotext key of the method, and the prefix of shared keys
VERSION_KEY = f"{NAME} version"
WARNING_KEY = f"{NAME} warning"
XYZ_PREFIX = f"[{NAME}] "
MASTER = "enabled"  # the switch of the whole extension: never written (our keys' presence means on)
TABS = ("txt2img", "img2img")
LEGACY_PREFIX = "Hires "  # version-1 infotext keys: "Hires version", "Hires method", "Hires ScaleCrafter tau"
# the WebUIs' own hires-fix infotext keys, which version-1 keys shared a prefix with
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
    tabs: tuple[str, ...] = TABS  # where the UI shows the control
    infotext: str | None = None  # infotext key, when not the derived one
    xyz: bool = True
    from_preset: bool = False  # taken from the group's preset unless given explicitly (see `Settings`)
    api_only: bool = False  # e.g. an image: no UI control, X/Y/Z axis or infotext entry (the method notes it)


@dataclass(frozen=True)
class Syntax:
    """The grammar of a free-text parameter: `parse` returns the canonical text or raises `ValueError`
    saying what is wrong; `describe` says what is allowed (422 messages, docs/parameters.md)."""

    parse: Callable[[str], str]
    describe: str


def param(default: Any, label: str, help: str, *, minimum: float | None = None, maximum: float | None = None,
          step: float | None = None, choices: Sequence[str] | None = None,
          choice_labels: Sequence[str] | None = None, syntax: Syntax | None = None, zero: str | None = None,
          tabs: Sequence[str] = TABS, infotext: str | None = None, xyz: bool = True,
          from_preset: bool = False, api_only: bool = False) -> Any:
    """Declare a parameter field: `tau: float = param(0.7, "Tau", "...", minimum=0, maximum=1)`."""
    spec = Spec(label, help, minimum, maximum, step, tuple(choices) if choices is not None else None,
                tuple(choice_labels) if choice_labels is not None else None, syntax, zero,
                () if api_only else tuple(tabs), infotext, xyz and not api_only, from_preset, api_only)
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
        """`ScaleCrafter dilated steps`, `Tiled VAE` (a group's `enabled`), `Hires Methods <label>`."""
        if self.spec.infotext is not None:
            return self.spec.infotext
        if not self.group.KEY:
            return f"{NAME} {_sentence(self.spec.label)}"
        return self.group.TITLE if self.name == MASTER else f"{self.group.TITLE} {_sentence(self.spec.label)}"

    @property
    def legacy_infotext_key(self) -> str:
        """The version-1 key: `Hires <Group title> <field name>` (shared fields: `Hires <field name>`)."""
        words = self.name.replace("_", " ")
        return f"{LEGACY_PREFIX}{self.group.TITLE} {words}" if self.group.KEY else f"{LEGACY_PREFIX}{words}"

    @property
    def xyz_label(self) -> str:
        """`[Hires Methods] ScaleCrafter dilated steps`; shared fields: `[Hires Methods] Method`."""
        return f"{XYZ_PREFIX}{self.spec.label if not self.group.KEY else self.infotext_key}"

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
        """Infotext form of a value, as the UI shows it (inverse of `from_text`): a choice's label, the
        meaning of a special 0 (`auto`), floats by `repr`. The empty text is written `""`: the WebUIs
        cannot parse an empty value (`Key: ,`) and unquote `""` to the empty text."""
        if self.spec.zero is not None and value == 0:
            return self.spec.zero
        if self.type is float:
            return repr(float(value))
        return str(self.label_of(value)) or '""'

    def from_text(self, text: str) -> Any:
        """Parse an infotext value (unquoted; a choice by label or key) and validate it like an API value."""
        raw: object
        if self.spec.zero is not None and text == self.spec.zero:
            raw = 0
        elif self.spec.choices is not None:
            raw = self.choice_of(text)
        elif self.type is bool:
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


def _sentence(label: str) -> str:
    """A UI label as the rest of a key: first letter lower-cased unless the word is an acronym
    ("Dilated steps" -> "dilated steps", "ND-CFG steps" stays)."""
    word = label.split(" ")[0]
    return label if sum(c.isupper() for c in word) > 1 else label[:1].lower() + label[1:]


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
    if not problems:
        problems.update(combination_problems(values))
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
    """Infotext entries (key -> unquoted text) for the values of an enabled job, led by the version.
    The master switch is not written: the entries' presence says the extension ran."""
    entries = {VERSION_KEY: str(INFOTEXT_VERSION)}
    for value in values:
        for f in fields(type(value)):
            if f.api_key != MASTER and not f.spec.api_only:
                entries[f.infotext_key] = f.to_text(getattr(value, f.name))
    return entries


def read_infotext(groups: Sequence[type[ParamGroup]], entries: Mapping[str, str],
                  ) -> tuple[dict[str, object], dict[str, str]]:
    """The flat API dict an infotext's entries describe, and the problems of those that could not be read.

    Reads version-2 keys, and version-1 keys where an entry has no version-2 key. Only the keys present
    are in the dict (the rest keep their defaults); when any of ours is present the master switch is
    on (unless a version-1 `Hires enabled` says otherwise). Problems are keyed by infotext key.
    """
    problems: dict[str, str] = {}
    data: dict[str, object] = {}
    versions = {VERSION_KEY: str(INFOTEXT_VERSION), f"{LEGACY_PREFIX}version": "1"}
    for key, expected in versions.items():
        if key in entries and entries[key] != expected:
            problems[key] = f"got {entries[key]!r}; allowed: {expected}"
    found = any(key in entries for key in versions)
    for f in all_fields(groups):
        key = f.infotext_key if f.infotext_key in entries else f.legacy_infotext_key
        if key not in entries or key in WEBUI_HIRES_KEYS or f.spec.api_only:
            continue
        found = True
        try:
            data[f.api_key] = f.from_text(entries[key])
        except ValueError as exc:
            problems[key] = str(exc)
    if found and any(f.api_key == MASTER for f in all_fields(groups)):
        data.setdefault(MASTER, True)
    return data, problems


def is_ours(key: str, groups: Sequence[type[ParamGroup]]) -> bool:
    """Whether an infotext key is one this extension writes (or wrote, in version 1): under its name, a
    field's key, or a method's note (`<method title> ...`). Used to clear stale keys between X/Y/Z cells,
    which share one dict."""
    if key == NAME or key.startswith(f"{NAME} "):
        return True
    if key.startswith(LEGACY_PREFIX) and key not in WEBUI_HIRES_KEYS and not key.startswith(NAME):
        return any(key == f.legacy_infotext_key for f in all_fields(groups)) or key in (
            f"{LEGACY_PREFIX}version", f"{LEGACY_PREFIX}warning")
    return any(key == f.infotext_key for f in all_fields(groups)) or any(
        key.startswith(f"{group.TITLE} ") for group in METHOD_GROUPS)


def from_infotext(groups: Sequence[type[ParamGroup]], entries: Mapping[str, str]) -> dict[str, object]:
    """Parse infotext entries back into a flat API dict (see `read_infotext`); `ParamError` naming the
    infotext keys of malformed values or an unsupported version."""
    data, problems = read_infotext(groups, entries)
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


def _apply_to(what: str) -> Any:
    """The "Apply to" choice of a method that runs in the first pass, the hires pass or both."""
    return param("auto", "Apply to", f"Which pass to {what}. Auto: the hires-fix pass when hires fix is on, else the "
                 "only pass.", choices=("auto", "first", "hires", "both"),
                 choice_labels=("Auto", "First pass", "Hires pass", "Both"), tabs=("txt2img",))


def _tile_size() -> Any:
    return param(0, "Tile size", "The side of a tile in latent pixels (8 image pixels each). 0: the model's native "
                 "size (64 for SD1.5, 96 for SD2 768-v, 128 for SDXL).", minimum=16, maximum=256, step=8, zero="auto")


def _tile_batch() -> Any:
    return param(4, "Tile batch", "Tiles run through the model together: more is faster and takes more memory.",
                 minimum=1, maximum=16, step=1)


def _blending(default: str) -> Any:
    return param(default, "Blending", "How tiles are averaged where they overlap: Uniform, every tile the same; "
                 "Gaussian, a tile's centre counts more than its edges.", choices=("uniform", "gaussian"),
                 choice_labels=("Uniform", "Gaussian"))


@dataclass(frozen=True)
class ScaleCrafterParams(ParamGroup):
    """ScaleCrafter (He et al., ICLR 2024); the values are explained in docs/scalecrafter.md."""

    KEY = "scalecrafter"
    TITLE = "ScaleCrafter"

    preset: str = param(
        "auto", "Preset",
        "Where the settings below come from. Auto: the official setting nearest to each pass's size, scaled "
        "to it (a pass at or below the model's native size is left as it is). A named setting is used as "
        "published: (code) the official repository's config; (code-effective) the official SDXL config as "
        "the official code really runs it, skipping the blocks SDXL lacks; (intended) that config with its "
        "SD block names mapped onto SDXL's, our reading of what was meant; (paper) the paper's appendix "
        "table. Custom: edit the settings yourself.",
        choices=("auto", *(p.key for p in PRESETS), "custom"),
        choice_labels=("Auto", *(p.label for p in PRESETS), "Custom"))
    apply_to: str = _apply_to("re-dilate, each for its own size")
    dilation: str = param(
        "DB1=2 DB2=2 DB3=2 MB=2 UB0=2 UB1=2 UB2=2", "Dilation",
        "How much wider each UNet block looks, as a factor per block, e.g. 'DB2=3 DB3=4 MB=4': down blocks "
        "DB0-DB3, middle MB, up blocks UB0-UB3 (SDXL: DB0-DB2, UB0-UB2). Add .resnets or .sampler to a "
        "block to set only that part of it. Factors from 1 to 8, fractions allowed.",
        syntax=BLOCK_FACTORS, from_preset=True)
    tau: float = param(
        0.6, "Dilated steps",
        "The share of the pass's steps, from the noisiest, that use the wider convolutions (0.6: the first "
        "60%).", minimum=0.0, maximum=1.0, step=0.02, from_preset=True)
    progressive: bool = param(
        False, "Progressive",
        "Shrink each factor step by step toward 2 over the dilated steps (the official setting for the "
        "largest sizes).", from_preset=True)
    ndcfg: bool = param(
        True, "Noise-damped CFG",
        "Where the setting has one, take the negative prompt's prediction from a less dilated UNet: fewer "
        "repeated objects at large sizes, for one extra UNet pass per step while it is active.")
    ndcfg_dilation: str = param(
        "", "ND-CFG dilation",
        "The factors of that less dilated UNet, written like Dilation; empty: no noise-damped CFG.",
        syntax=BLOCK_FACTORS, from_preset=True)
    ndcfg_tau: float = param(
        0.0, "ND-CFG steps", "The share of the pass's steps, from the noisiest, that use noise-damped CFG.",
        minimum=0.0, maximum=1.0, step=0.02, from_preset=True)
    disperse: bool = param(
        False, "Dispersed convolution",
        "Use dispersed 5x5 kernels (paper App. F) on the dispersed blocks while they are dilated. Off in "
        "every official setting.")
    disperse_blocks: str = param(
        "", "Dispersed blocks", "Blocks whose convolutions use dispersed kernels, e.g. 'DB3 MB UB0'.",
        syntax=BLOCK_LIST, from_preset=True)


@dataclass(frozen=True)
class MultiDiffusionParams(ParamGroup):
    """MultiDiffusion (Bar-Tal et al., ICML 2023): explicit-overlap tiled sampling (docs/tiled_sampling.md)."""

    KEY = "multidiffusion"
    TITLE = "MultiDiffusion"

    apply_to: str = _apply_to("sample tile by tile")
    tile_size: int = _tile_size()
    overlap: int = param(0, "Overlap", "How far neighbouring tiles overlap, in latent pixels; every step runs about "
                         "(tile / (tile - overlap))^2 times as many tiles as there are without overlap. 0: half a tile.",
                         minimum=8, maximum=248, step=8, zero="auto")
    blending: str = _blending("uniform")
    tile_batch: int = _tile_batch()


@dataclass(frozen=True)
class FSTDParams(ParamGroup):
    """FSTD, Any-Size-Diffusion (Zheng et al., AAAI 2024): implicit-overlap tiled sampling (docs/tiled_sampling.md)."""

    KEY = "fstd"
    TITLE = "FSTD"

    apply_to: str = _apply_to("sample tile by tile")
    tile_size: int = _tile_size()
    offset_range: int = param(0, "Offset range", "Each step the whole tile grid moves by one random offset below "
                              "this many latent pixels per axis, so tile borders never stay in place and no overlap "
                              "is needed. 0: half a tile (the paper's setting).", minimum=1, maximum=256, step=1,
                              zero="auto")
    reset_period: int = param(4, "Reset period", "Every this-many-th step, the first included, runs the grid "
                              "unshifted (the official 4). 1: never shifted.", minimum=1, maximum=50, step=1)
    blending: str = _blending("gaussian")
    tile_batch: int = _tile_batch()


MAX_REFINE_STAGES = 4


def parse_strengths(text: str) -> tuple[float, ...]:
    """'0.1 0.2' (spaces or commas) -> (0.1, 0.2): each in (0, 1], at most MAX_REFINE_STAGES."""
    parts = [part for part in re.split(r"[\s,]+", text.strip()) if part]
    if len(parts) > MAX_REFINE_STAGES:
        raise ValueError(f"at most {MAX_REFINE_STAGES} strengths, got {len(parts)}")
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"{part!r} is not a number") from None
        if not (math.isfinite(value) and 0 < value <= 1):
            raise ValueError(f"strength {part} is not in (0, 1]")
        values.append(value)
    return tuple(values)


STRENGTHS = Syntax(
    lambda text: " ".join(repr(v) for v in parse_strengths(text)),
    f"numbers in (0, 1] separated by spaces, e.g. '0.1 0.2' (at most {MAX_REFINE_STAGES}), or empty for auto")


@dataclass(frozen=True)
class AttentiveGuidanceParams(ParamGroup):
    """AP-LDM's attentive guidance of a base pass, declared once: AP-LDM's own group and the Attentive base
    combination inherit these fields, each group with its own API and infotext keys."""

    preset: str = param(
        "paper", "Preset",
        "Where the guidance settings come from. Paper: gamma 0.004 from 6% of the steps to the end, cosine "
        "decay 3. Official code: the official notebook's gamma 0.005 on steps 6%-38%, no decay. Custom: edit "
        "them yourself.", choices=("paper", "code", "custom"), choice_labels=("Paper", "Official code", "Custom"))
    gamma: float = param(
        0.004, "Guidance scale",
        "How far each guided step moves the latent toward its parameter-free self-attention (gamma, Eq. 2): "
        "smoother, more coherent structure; 0 turns the guidance off.", minimum=0.0, maximum=0.1, step=0.001,
        from_preset=True)
    delay: float = param(
        0.06, "Guidance delay", "The share of the base stage's steps, from the noisiest, left unguided (eta1).",
        minimum=0.0, maximum=1.0, step=0.01, from_preset=True)
    end: float = param(
        1.0, "Guidance end", "Where guidance stops, as a share of the base stage's steps (1: the last step).",
        minimum=0.0, maximum=1.0, step=0.01, from_preset=True)
    decay: float = param(
        3.0, "Guidance decay", "Cosine decay of the scale over the guided steps, from gamma to 0 (beta, Eq. 3); "
        "0: constant.", minimum=0.0, maximum=10.0, step=0.5, from_preset=True)


@dataclass(frozen=True)
class APLDMParams(AttentiveGuidanceParams):
    """AP-LDM (Cao et al., 2024): attentive base pass, then pixel-space progressive refinement (docs/ap_ldm.md)."""

    KEY = "apldm"
    TITLE = "AP-LDM"

    refine: str = param(
        "", "Refinement strengths",
        "One pixel-space refinement stage per number, from the base size up to the target (areas in equal "
        "steps): each number is the share of the schedule the stage re-denoises (eta2; like a denoising "
        "strength). Empty: by size, the paper's 0.2 up to 2x the base side, 0.2 0.2 up to 3x, 0.1 0.2 above.",
        syntax=STRENGTHS)
    encode: str = param(
        "mean", "Encoder output", "The latent of an upscaled image: the posterior mean (the official code) or a "
        "sample from it, seeded from the image seed.", choices=("mean", "sample"), choice_labels=("Mean", "Sample"))


@dataclass(frozen=True)
class DemoFusionParams(ParamGroup):
    """DemoFusion (Du et al., CVPR 2024): progressive upscaling with skip residual, jittered local windows
    and dilated global sampling (docs/demofusion.md)."""

    KEY = "demofusion"
    TITLE = "DemoFusion"

    preset: str = param(
        "official", "Preset",
        "Where the settings below come from. Official: the official README's values (skip residual decay 3, "
        "global and blur decay 1, blur sigma 0.8, windows of the native size every half window). Custom: edit "
        "them yourself.", choices=("official", "custom"), choice_labels=("Official", "Custom"))
    residual_decay: float = param(
        3.0, "Skip residual decay",
        "How long each phase keeps pulling toward the upscaled previous phase: its weight is cf^this, cf the "
        "cosine of the noise level (1 at the start, 0 at the end); higher lets go sooner (alpha1).",
        minimum=0.0, maximum=10.0, step=0.5, from_preset=True)
    global_decay: float = param(
        1.0, "Global decay",
        "The weight of the dilated global branch against the local windows is cf^this: higher hands over to "
        "the local windows sooner (alpha2).", minimum=0.0, maximum=10.0, step=0.5, from_preset=True)
    blur_decay: float = param(
        1.0, "Blur decay", "The global branch's blur shrinks as 0.99 cf^this + 0.01 (alpha3).",
        minimum=0.0, maximum=10.0, step=0.5, from_preset=True)
    sigma: float = param(
        0.8, "Blur sigma", "The Gaussian blur of the global branch's input at the start of a phase (in latent "
        "pixels of a sub-lattice).", minimum=0.1, maximum=4.0, step=0.1, from_preset=True)
    stride: int = param(
        0, "Window stride",
        "Local windows (of the model's native size) start every this many latent pixels; they are also "
        "jittered by a quarter of the overlap. 0: half a window (the official 64 for SDXL, 32 for SD1.5).",
        minimum=8, maximum=256, step=8, zero="auto", from_preset=True)
    view_batch: int = param(
        16, "View batch", "Windows or sub-lattices run through the model together: more is faster and takes "
        "more memory (the official 16).", minimum=1, maximum=64, step=1)
    local: str = param(
        "overlap", "Local branch",
        "How the local branch tiles the latent: Overlapping windows (the official method) or FSTD's shifted "
        "tiles without overlap (fewer model calls per step; ours).", choices=("overlap", "fstd"),
        choice_labels=("Overlapping windows", "FSTD"))


@dataclass(frozen=True)
class AccDiffusionParams(DemoFusionParams):
    """AccDiffusion (Lin et al., ECCV 2024): DemoFusion with patch-content-aware prompts for the local windows
    and window interaction in the global branch (docs/demofusion.md). The DemoFusion fields are inherited:
    declared once, with their own API and infotext keys here."""

    KEY = "accdiffusion"
    TITLE = "AccDiffusion"

    patch_prompts: bool = param(
        True, "Patch prompts",
        "Give each local window only the words of the prompt whose cross-attention (from the first phase) "
        "covers enough of it, so that a subject is not repeated in every window.")
    threshold: float = param(
        0.3, "Word threshold", "A word goes into a window's prompt when its attention mask covers at least this "
        "share of the window (c).", minimum=0.0, maximum=1.0, step=0.05)
    patch_cfg: float = param(
        0.0, "Patch CFG", "CFG scale of the local windows; 0: the job's CFG scale (the official 7.5 for both).",
        minimum=1.0, maximum=30.0, step=0.5, zero="same")
    prompt_mode: str = param(
        "tokens", "Patch prompt text",
        "How a window's prompt is built: Token subset, the chosen tokens of your prompt with their emphasis "
        "(ours); Decoded words, the official code's decode-and-re-encode of the chosen tokens (emphasis lost).",
        choices=("tokens", "decode"), choice_labels=("Token subset", "Decoded words"))
    interaction: str = param(
        "element", "Window interaction",
        "Mix the global branch's sub-lattices each step: every latent element is swapped among them by a "
        "random permutation and swapped back after the model call. Element: per channel too (the official "
        "code); Position: one permutation per pixel (the paper); Off.",
        choices=("element", "position", "off"), choice_labels=("Element", "Position", "Off"))


def parse_mask(text: str) -> str:
    """A region mask given as base64 image data (PNG, JPEG or WebP; a `data:image/...;base64,` prefix is
    allowed) -> the base64 text without the prefix; '' (no mask) stays ''. `ValueError` for anything
    that does not decode to an image."""
    import base64
    import binascii
    import io

    data = text.strip()
    if not data:
        return ""
    data = data.split(",", 1)[1] if data.startswith("data:") and "," in data else data
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64 image data") from None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise ValueError("the base64 data is not an image (PNG, JPEG or WebP)") from None
    return data


MASK = Syntax(parse_mask, "base64 image data (PNG, JPEG or WebP; non-black pixels are the foreground), or empty")


@dataclass(frozen=True)
class FreeScaleParams(ParamGroup):
    """FreeScale (Qiu et al., 2024): self-cascade upscaling in RGB with detail control, restrained dilation
    and scale-fusion self-attention (docs/freescale.md)."""

    KEY = "freescale"
    TITLE = "FreeScale"

    preset: str = param(
        "official", "Preset",
        "Where the settings below come from. Official: the official run script (detail 2, each upscaling stage "
        "restarts at 30% of the schedule, restrained dilation for the first 70%). 8K: detail 1, the README's "
        "advice for 8K images (about 8x the native side). Custom: edit them yourself.",
        choices=("official", "8k", "custom"), choice_labels=("Official", "8K", "Custom"))
    stages: int = param(
        0, "Upscaling stages",
        "How many times the image is upscaled (about 2x each, the last exactly to the target) after the base "
        "image at the model's native pixel count. 0: by size, one per doubling of the side.",
        minimum=1, maximum=4, step=1, zero="auto")
    detail: float = param(
        2.0, "Detail control",
        "Each upscaling step first pulls the latent toward the upscaled previous image, noised to the step's "
        "level, with weight cf^this (cf the cosine of the noise level: 1 at the start, 0 at the end): higher "
        "lets go sooner, giving more new detail (alpha). With a region mask: the foreground's value.",
        minimum=0.0, maximum=10.0, step=0.1, from_preset=True)
    restart: float = param(
        0.3, "Restart", "The share of the schedule each upscaling stage skips: it re-noises the upscaled image to "
        "that point and samples the rest (the official 0.3, int(0.3 N)).", minimum=0.0, maximum=0.95, step=0.05,
        from_preset=True)
    dilation_end: float = param(
        0.7, "Dilation end", "Restrained dilation runs up to this share of the schedule (the official step 35 of "
        "50) in every upscaling stage.", minimum=0.0, maximum=1.0, step=0.05, from_preset=True)
    dilation: bool = param(
        True, "Restrained dilation",
        "Dilate the convolutions of the deepest down block, the downsampler before it and the middle block by "
        "stage width // native width (2 at 2x).")
    fusion: bool = param(
        True, "Scale fusion",
        "Every self-attention in an upscaling stage runs on native-size windows (local) and on all tokens "
        "(global): the output keeps the local result's low frequencies and the global one's high frequencies.")
    blur: str = param(
        "hwc", "Fusion low-pass",
        "The Gaussian that splits the frequencies: over space and channels (the official code) or over space "
        "only (the paper).", choices=("hwc", "hw"), choice_labels=("Space and channels", "Space only"))
    background_detail: float = param(
        0.5, "Background detail",
        "With a region mask: the detail control of the background (black pixels), e.g. lower for a softer "
        "background (the official image-generation script's 0.5).", minimum=0.0, maximum=10.0, step=0.1)
    mask: str = param(
        "", "Region mask",
        "API only: an image (base64) whose non-black pixels mark the foreground, resized to each stage; the "
        "foreground gets Detail control, the rest Background detail. Empty: one value everywhere.",
        syntax=MASK, api_only=True)


@dataclass(frozen=True)
class TiledVAEParams(ParamGroup):
    """Tiled VAE with GroupNorm statistics synchronised over all tiles (docs/tiled_vae.md)."""

    KEY = "tiled_vae"
    TITLE = "Tiled VAE"

    enabled: bool = param(
        False, "Use tiled VAE",
        "Decode and encode images tile by tile: the same pixels as without tiles (within 1e-4), at a "
        "fraction of the memory. Works with any method, or alone (Method: None).")
    decoder_tile: int = param(
        0, "Decoder tile",
        "Size of a decoder tile in latent pixels (one latent pixel is 8 image pixels). 0: as large as free "
        "memory allows.",
        minimum=16, maximum=512, step=16, zero="auto")  # minimum: vae.memory.MIN_TILE_LATENT (halo cost)
    encoder_tile: int = param(
        0, "Encoder tile", "Size of an encoder tile in image pixels. 0: as large as free memory allows.",
        minimum=128, maximum=4096, step=128, zero="auto")
    fp32: str = param(
        "on_nan", "fp32",
        "Full precision for the VAE math. On NaN: redo a decode or encode in fp32 when the half-precision "
        "VAE fails (black or speckled images); Always: fp32 from the start; Off: never.",
        choices=("off", "on_nan", "always"), choice_labels=("Off", "On NaN", "Always"))


class Combination(ParamGroup):
    """A part of one method run inside another's plan (methods/README.md §4; lib_hires/methods/combine.py),
    switched by its `enabled` field. `APPLIES_TO` lists the method keys it combines with; `refuse` names
    the fields of a combination that makes no sense (the job is refused before sampling)."""

    APPLIES_TO: ClassVar[tuple[str, ...]] = ()
    NOT_WITH: ClassVar[Mapping[str, str]] = {}  # method key -> why not, for the other methods

    enabled: bool

    def refuse(self, method: str, values: Mapping[type[ParamGroup], ParamGroup]) -> dict[str, str]:
        """Why this combination cannot run with `method` (key: API key -> text), given every group's values."""
        if method in self.APPLIES_TO:
            return {}
        names = ", ".join(TITLES[key] for key in self.APPLIES_TO)
        why = self.NOT_WITH.get(method, "")
        return {f"{self.KEY}_enabled": f"{self.TITLE} combines with {names}; the method is {TITLES[method]}"
                                       + (f" ({why})" if why else "")}


@dataclass(frozen=True)
class AttentiveBaseParams(AttentiveGuidanceParams, Combination):
    """AP-LDM's attentive guidance in the base pass of another method: DemoFusion/AccDiffusion's first phase,
    FreeScale's base stage, or the first pass before FSTD/MultiDiffusion's tiled pass (docs/choosing.md)."""

    KEY = "attentive_base"
    TITLE = "Attentive base"
    APPLIES_TO = ("demofusion", "accdiffusion", "freescale", "fstd", "multidiffusion")
    NOT_WITH = {"apldm": "AP-LDM guides its own base stage: set its guidance in the AP-LDM settings",
                "scalecrafter": "ScaleCrafter samples in one pass, there is no base pass to guide",
                "none": "no method runs"}

    enabled: bool = param(
        False, "Attentive base pass",
        "Guide the base pass with AP-LDM's parameter-free self-attention: DemoFusion/AccDiffusion's first phase, "
        "FreeScale's base image, or (FSTD, MultiDiffusion) a base image at the model's native pixel count that "
        "the tiled pass refines. Coherent structure before the method adds detail.", tabs=("txt2img",))
    strength: float = param(
        0.4, "Tiled refinement strength",
        "FSTD and MultiDiffusion without hires fix: the guided base image is upscaled to Width x Height in pixel "
        "space and the tiled pass re-denoises this share of the schedule (like hires fix's denoising strength). "
        "With hires fix the hires pass's own denoising strength applies.", minimum=0.05, maximum=1.0, step=0.05,
        tabs=("txt2img",))

    def refuse(self, method: str, values: Mapping[type[ParamGroup], ParamGroup]) -> dict[str, str]:
        problems = super().refuse(method, values)
        tiled = next((g for g in (FSTDParams, MultiDiffusionParams) if g.KEY == method), None)
        if tiled is not None and values.get(tiled) is not None:
            apply_to = getattr(values[tiled], "apply_to")
            if apply_to in ("first", "both"):
                label = next(f for f in fields(tiled) if f.name == "apply_to").label_of(apply_to)
                text = (f"the attentive base pass runs before {tiled.TITLE}'s tiled pass; {tiled.TITLE} Apply to is "
                        f"{label}: set it to Auto or Hires pass, or turn the attentive base off")
                problems[f"{self.KEY}_enabled"] = text
                problems[f"{tiled.KEY}_apply_to"] = text
        return problems


@dataclass(frozen=True)
class StageDilationParams(Combination):
    """ScaleCrafter's re-dilation inside the stages of a cascade: every stage of AP-LDM's refinement or
    FreeScale's upscaling re-dilated with the ScaleCrafter setting resolved for its size (docs/choosing.md)."""

    KEY = "stage_dilation"
    TITLE = "ScaleCrafter in stages"
    APPLIES_TO = ("apldm", "freescale")
    NOT_WITH = {"scalecrafter": "it is the method already",
                "demofusion": "its windows are at the native size and its global branch samples dilated already",
                "accdiffusion": "its windows are at the native size and its global branch samples dilated already",
                "fstd": "its tiles are at the native size", "multidiffusion": "its tiles are at the native size",
                "none": "no method runs"}

    enabled: bool = param(
        False, "ScaleCrafter in stages",
        "Re-dilate the convolutions of every refinement stage (AP-LDM) or upscaling stage (FreeScale) with "
        "ScaleCrafter's Auto setting for that stage's size, over the stage's own steps. With FreeScale, turn "
        "its Restrained dilation off: both dilate the same stages.", tabs=("txt2img",))

    def refuse(self, method: str, values: Mapping[type[ParamGroup], ParamGroup]) -> dict[str, str]:
        problems = super().refuse(method, values)
        freescale = values.get(FreeScaleParams)
        if method == FreeScaleParams.KEY and freescale is not None and getattr(freescale, "dilation"):
            text = ("FreeScale's Restrained dilation and ScaleCrafter in stages both dilate FreeScale's upscaling "
                    "stages: turn one off")
            problems[f"{self.KEY}_enabled"] = text
            problems["freescale_dilation"] = text
        return problems


METHOD_GROUPS: tuple[type[ParamGroup], ...] = (ScaleCrafterParams, APLDMParams, DemoFusionParams, AccDiffusionParams,
                                               FreeScaleParams, FSTDParams, MultiDiffusionParams)
"""One group per method (`methods.METHODS` has the same keys), in the order the method menu lists them."""
FEATURE_GROUPS: tuple[type[ParamGroup], ...] = (TiledVAEParams,)
"""Shared features that work with any method or alone."""
COMBINATION_GROUPS: tuple[type[Combination], ...] = (AttentiveBaseParams, StageDilationParams)
"""Parts of one method that run inside another (`Combination`), in the order the UI shows them."""
TITLES = {"none": "None", **{g.KEY: g.TITLE for g in METHOD_GROUPS}}


@dataclass(frozen=True)
class General(ParamGroup):
    """Shared by every method. The method choices are the method groups' keys and titles."""

    enabled: bool = param(False, "Enabled", "Turn Hires Methods on for this generation: opening the panel turns "
                          "it on, closing it turns off everything in it.")
    method: str = param("scalecrafter", "Method", "The high-resolution method. None: no method, only the shared "
                        "features below (e.g. Tiled VAE).", choices=("none", *(g.KEY for g in METHOD_GROUPS)),
                        choice_labels=("None", *(g.TITLE for g in METHOD_GROUPS)), infotext=NAME)


def combination_problems(values: Mapping[type[ParamGroup], ParamGroup]) -> dict[str, str]:
    """The fields of every switched-on combination that cannot run with the chosen method (nothing while the
    extension is off: then nothing runs)."""
    general = values.get(General)
    if not isinstance(general, General) or not general.enabled:
        return {}
    problems: dict[str, str] = {}
    for group in COMBINATION_GROUPS:
        value = values.get(group)
        if isinstance(value, Combination) and value.enabled:
            problems.update(value.refuse(general.method, values))
    return problems


GROUPS: tuple[type[ParamGroup], ...] = (General, ScaleCrafterParams, TiledVAEParams, FSTDParams, MultiDiffusionParams,
                                        APLDMParams, DemoFusionParams, AccDiffusionParams, FreeScaleParams,
                                        AttentiveBaseParams, StageDilationParams)
"""Every group, in the order of the UI's positional values (what `script-info` lists and the API's positional
form sends): append-only, so that a new group never moves the values of an older one."""


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
            infotext = "-" if f.spec.api_only else f"`{f.infotext_key}`"
            help_text = f.spec.help.replace("|", "\\|")
            if f.spec.from_preset:
                help_text += " *(from the preset unless given)*"
            lines.append(f"| `{f.api_key}` | {f.allowed()} | `{default}` | {infotext} | `{axis}` | {help_text} |")
        lines.append("")
    return "\n".join(lines)
