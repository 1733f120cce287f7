"""What the accordion shows, host-independent: the plan line worded for a person, the values of the
preset-controlled fields, the preset menu for the model's family, and which answers reach the page.

`hosts/webui.py` turns a `Panel` into gradio updates; everything here is plain Python (tested in
tests/unit/test_ui.py without a WebUI).
"""
from __future__ import annotations

import html
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import nn

from .api import settings_from_args
from .job import PassSize, Preview, preview
from .methods import METHODS
from .params import GROUPS, Field, ParamError, ParamGroup, all_fields, fields
from .unet import ModelFamily, UnsupportedModel, detect_family


class UiModel(NamedTuple):
    """What the accordion plans against: the UNet (None before it is loaded), its native size, the family
    when only that is known, and the identity of the checkpoint (as the WebUI's checkpoint menu shows it,
    so the page can tell when the plan is for another model than the one selected)."""

    unet: nn.Module | None
    native: int | None
    family: ModelFamily | None
    identity: str

    @property
    def known_family(self) -> ModelFamily | None:
        if self.unet is None:
            return self.family
        try:
            return detect_family(self.unet)
        except UnsupportedModel:
            return None


def hires_size(width: int, height: int, scale: float, resize_x: int, resize_y: int) -> tuple[int, int]:
    """The hires-fix target as the WebUIs compute it from the tab's controls."""
    if not resize_x and not resize_y:
        return int(width * scale), int(height * scale)
    if not resize_y:
        return resize_x, resize_x * height // width
    if not resize_x:
        return resize_y * width // height, resize_y
    return resize_x, resize_y


def passes(tab: str, core: Mapping[str, Any]) -> tuple[PassSize, PassSize | None]:
    """The job's passes from the tab's controls (`CORE_IDS` of the glue; img2img has no hires fix)."""
    width, height = int(core.get("width", 512)), int(core.get("height", 512))
    steps = int(core.get("steps", 20))
    hires = None
    if tab == "txt2img" and core.get("hr-checkbox"):
        size = hires_size(width, height, float(core.get("hr_scale", 2.0)), int(core.get("hr_resize_x", 0)),
                          int(core.get("hr_resize_y", 0)))
        hires = PassSize("hires", *size, int(core.get("hires_steps", 0)) or steps)
    return PassSize("first", width, height, steps), hires


@dataclass(frozen=True)
class Panel:
    """What the accordion shows for the current controls: the summary (HTML, carrying the model and the
    event it answers for javascript/hires_methods.js), the groups whose preset-controlled fields a preset
    decides, with their values, and the label of that preset per group (the other groups' fields are the
    user's to edit), and the model family."""

    html: str
    locked: tuple[ParamGroup, ...]
    sources: tuple[str, ...]
    family: ModelFamily | None

    def locked_value(self, field: Field) -> tuple[object, str] | None:
        """The value a preset gives `field`, and the preset's label; None when the field is the user's."""
        for values, source in zip(self.locked, self.sources):
            if type(values) is field.group:
                return getattr(values, field.name), source
        return None


NOT_LOADED = "The plan appears once a model is loaded."
FORGE_NOT_LOADED = "The plan appears once a model is loaded (Forge loads it at the first generation)."
FORGE_EARLY = "Planned from the selected checkpoint; Forge loads it at the first generation."
NOTHING = "Nothing to run: choose a method, or turn on a shared feature such as Tiled VAE."
OFF = "Off: open this panel to use it. It would run:"


def panel(tab: str, values: Sequence[Any], core: Mapping[str, Any], model: UiModel, stamp: str = "",
          forge: bool = False) -> Panel:
    """The panel for the accordion's positional `values` and the tab's `core` controls."""
    tag = {"identity": model.identity, "stamp": stamp}
    family = model.known_family
    if model.unet is None and model.family is None:
        return Panel(summary_html([FORGE_NOT_LOADED if forge else NOT_LOADED], **tag), (), (), family)
    try:
        settings = settings_from_args(list(values))
    except ParamError as error:
        labels = {f.api_key: f.spec.label for f in all_fields(GROUPS)}
        errors = [f"Check {labels.get(key, key)}: {text}" for key, text in error.problems.items()]
        return Panel(summary_html([], errors=errors, **tag), (), (), family)
    first, hires = passes(tab, core)
    shown = preview(settings, model.unet, model.native, first, hires, tab, model.family)
    sources = tuple(str(next(f for f in fields(type(values)) if f.name == "preset").label_of(getattr(values, "preset")))
                    for values in shown.locked)
    return Panel(summary_html(describe(shown, early=model.unet is None), warnings=shown.warnings, **tag),
                 shown.locked, sources, family)


def describe(shown: Preview, early: bool = False) -> list[str]:
    """The plan's lines for a person: what will run, or why nothing will."""
    lines = list(shown.lines)
    if not lines and not shown.warnings:
        lines = [NOTHING]
    if early:
        lines.insert(0, FORGE_EARLY)
    if not shown.enabled:
        lines.insert(0, OFF)
    return lines


def summary_html(lines: Sequence[str], *, warnings: Sequence[str] = (), errors: Sequence[str] = (),
                 identity: str = "", stamp: str = "") -> str:
    parts = [f"<div>{html.escape(line)}</div>" for line in lines]
    parts += [f"<div class='hires-methods-warning'>Warning: {html.escape(w)}</div>" for w in warnings]
    parts += [f"<div class='hires-methods-error'>{html.escape(e)}</div>" for e in errors]
    data = f"data-model='{html.escape(identity, quote=True)}' data-stamp='{html.escape(stamp, quote=True)}'"
    return f"<div {data}>{''.join(parts)}</div>"


def preset_menu(field: Field, family: ModelFamily | None, current: str) -> list[str]:
    """The labels a method's preset menu offers for `family` (all while it is unknown), in menu order,
    keeping the current choice even when it is for another family (the plan then says so)."""
    labels = [str(field.label_of(key)) for key in METHODS[field.group.KEY].presets(family)]
    return labels if current in labels else [*labels, current]


class LatestOnly:
    """Drops answers to earlier UI events: every event carries a stamp `client:count` (set by
    javascript/hires_methods.js as the event fires), and an answer whose count is below one already
    given to that page is not sent, so the page always ends on the answer to its last event, however
    the server interleaved them."""

    LIMIT = 512  # pages remembered (oldest forgotten first)

    def __init__(self) -> None:
        self.latest: dict[str, int] = {}
        self.lock = threading.Lock()

    def current(self, stamp: object) -> bool:
        client, _, count = str(stamp).rpartition(":")
        if not client or not count.isdigit():
            return True  # an event without a stamp (the page's script not loaded): answer it
        with self.lock:
            if int(count) < self.latest.get(client, -1):
                return False
            self.latest.pop(client, None)
            self.latest[client] = int(count)
            while len(self.latest) > self.LIMIT:
                del self.latest[next(iter(self.latest))]
        return True
