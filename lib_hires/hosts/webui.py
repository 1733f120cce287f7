"""WebUI glue shared by A1111 and Forge: the accordion, infotext, X/Y/Z axes, API validation, jobs.

`scripts/hires_methods.py` only forwards the Script hooks here. Everything the user can set comes
from `params.py` and everything a method does from its declaration (`methods.METHODS`): one
component per field, in field order (so the UI's positional args, the API's positional fallback and
the infotext fields cannot drift apart), one titled group per method and per shared feature. Nothing
here names a method.
"""
from __future__ import annotations

import html
import importlib.util
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
import torch
from modules import script_callbacks, scripts, shared
from modules.ui_components import InputAccordion

from ..api import ApiValidation, settings_from_args
from ..job import JobPlan, PassSize, plan_job, tiled_vae
from ..methods import METHODS
from ..params import (
    COMBINATION_GROUPS,
    FEATURE_GROUPS,
    GROUPS,
    METHOD_GROUPS,
    NAME,
    VERSION_KEY,
    WARNING_KEY,
    Field,
    ParamError,
    ParamGroup,
    Settings,
    all_fields,
    fields,
    is_ours,
    read_infotext,
    xyz_axes,
)
from ..patching import LIVE, PatchScope
from ..sampling.hooks import PassSlot
from ..ui import LatestOnly, hires_size, panel, preset_menu, summary_html
from ..vae.hook import VaeTiling

IS_FORGE = importlib.util.find_spec("modules_forge") is not None
if IS_FORGE:
    from . import forge as host
else:
    from . import a1111 as host
from . import cascade

TITLE = NAME  # the script's title; the API key is its lower case: never rename
JOB_ATTR = "hires_methods_job"  # the job's state, kept on `p` (X/Y/Z copies `p` per cell)
XYZ_ATTR = "hires_methods_xyz"  # X/Y/Z overrides for the cell: {api_key: value}
# the tab's controls the summary line follows (elem_id without the "txt2img_"/"img2img_" prefix),
# captured as the WebUI creates them; img2img has no hires fix
CORE_IDS = ("width", "height", "steps", "hr-checkbox", "hr_scale", "hr_resize_x", "hr_resize_y", "hires_steps")
GRADIO_4 = int(gr.__version__.split(".")[0]) >= 4
QUIET = {"show_progress": "hidden" if GRADIO_4 else False}
STAMP = "hires-methods-stamp"  # the stamp textbox's value, replaced per event by javascript/hires_methods.js


def log(text: str) -> None:
    print(f"[{TITLE}] {text}")


def console_logger() -> None:
    """Show the library's reports (logger `hires_methods`, e.g. the patch prompts a method chose) in the
    WebUI's console, like `log`. Idempotent."""
    logger = logging.getLogger("hires_methods")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter(f"[{TITLE}] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


# --- jobs -------------------------------------------------------------------------------------

@dataclass
class JobState:
    """One job (one `p`, so one X/Y/Z cell): its settings, plan, pass slot and job-long patches."""

    settings: Settings | None  # None: invalid settings, the job runs unmodified
    plan: JobPlan | None = None  # made at the first batch, once the WebUI knows the hires size
    slot: PassSlot = field(default_factory=PassSlot)
    scope: PatchScope = field(default_factory=PatchScope)
    tiling: VaeTiling | None = None
    first_latent: torch.Tensor | None = None  # the hires-fix entry of a cascade: this batch's first pass


def hires_target(p: Any) -> tuple[int, int]:
    """The hires pass's size: the WebUI's own value once `p.init` ran, else computed like it does."""
    if getattr(p, "hr_upscale_to_x", 0):
        return p.hr_upscale_to_x, p.hr_upscale_to_y
    return hires_size(p.width, p.height, p.hr_scale, p.hr_resize_x, p.hr_resize_y)


def _tab(p: Any) -> str:
    return "img2img" if hasattr(p, "init_images") else "txt2img"


def _warner(p: Any) -> Callable[[str], None]:
    def warn(text: str) -> None:
        log(text)
        p.extra_generation_params[WARNING_KEY] = text
    return warn


def _status(text: str) -> None:
    shared.state.textinfo = text


def start_job(p: Any, args: Sequence[object]) -> None:
    """`process` (before the WebUI's init encodes any image): settings, and the tiled VAE for the job.
    Never raises: a problem becomes a warning in the infotext and the job runs unmodified."""
    leftovers = LIVE.restore_all()
    if leftovers:
        log(f"restored {leftovers} patch scope(s) left over from an earlier job")
    for key in [key for key in p.extra_generation_params if is_ours(key, GROUPS)]:  # X/Y/Z cells share this dict
        del p.extra_generation_params[key]
    try:
        settings = settings_from_args(args)
        overrides = getattr(p, XYZ_ATTR, None)
        if overrides:
            settings = settings.with_overrides(overrides)
    except ParamError as error:
        log(f"invalid settings, job runs unmodified: {error}")
        p.extra_generation_params[WARNING_KEY] = f"invalid settings ({error}); not applied"
        setattr(p, JOB_ATTR, JobState(None))
        return
    state = JobState(settings)
    setattr(p, JOB_ATTR, state)
    tiles = tiled_vae(settings)
    if tiles is not None:
        state.tiling = VaeTiling(tiles, lambda: shared.state.interrupted, _status, _warner(p))
        host.use_vae_tiling(p, state.tiling, state.scope)


def plan_batch(p: Any) -> None:
    """`process_batch` of the first batch: the plan (the hires size is known now) and its infotext."""
    state: JobState | None = getattr(p, JOB_ATTR, None)
    if state is None or state.settings is None or state.plan is not None:
        return
    hires = None
    if getattr(p, "enable_hr", False):
        width, height = hires_target(p)
        hires = PassSize("hires", width, height, getattr(p, "hr_second_pass_steps", 0) or p.steps)
    try:
        unet, native = host.unet_of(p.sd_model), host.native_size(p.sd_model)
    except AttributeError:  # not a UNet model (e.g. Flux in Forge): plan_job says so
        unet, native = None, None
    first = PassSize("first", p.width, p.height, p.steps)
    seeds = getattr(p, "all_seeds", None) or [getattr(p, "seed", 0)]
    cfg = float(getattr(p, "hr_cfg", None) or p.cfg_scale) if hires is not None else float(p.cfg_scale)
    state.plan = plan_job(state.settings, unet, native, first, hires, _tab(p), seed=int(seeds[0]), cfg_scale=cfg)
    p.extra_generation_params.update(state.plan.infotext)
    if state.plan.summary != "off":
        log(state.plan.summary)


def before_sampling(p: Any) -> None:
    """`process_before_every_sampling`: hook this pass of the job's plan, or replace it by the plan's
    cascade (idempotent: Forge calls it twice for the hires pass)."""
    state: JobState | None = getattr(p, JOB_ATTR, None)
    if state is None or state.plan is None:
        return
    if state.tiling is not None:
        host.use_vae_tiling(p, state.tiling, state.scope)
    plan = state.plan
    pass_name = "hires" if getattr(p, "is_hr_pass", False) else "first"
    warn = _warner(p)
    cascades = [name for name in plan.passes if plan.cascade(name) is not None]
    if cascades and not cascade.is_k_diffusion(p.sampler):
        title = type(plan.method.resolved).TITLE if plan.method is not None else "this method"
        warn(f"{title} needs a k-diffusion sampler (DDIM, PLMS and UniPC are not): the {pass_name} pass ran "
             "unmodified")
        return
    if pass_name == "first" and plan.cascade("hires") is not None:
        state.first_latent = None
        cascade.keep_first_latent(p, lambda latent: setattr(state, "first_latent", latent))
    if pass_name not in plan.passes:
        return
    stages = plan.cascade(pass_name)
    if stages is None:
        host.before_sampling(p, plan, state.slot, warn)
    elif stages.from_noise:
        cascade.replace_first_pass(p, stages, host, warn)
    elif state.first_latent is not None:
        cascade.replace_hires_pass(p, stages, state.first_latent, host, warn)
    else:
        warn("the hires pass ran as usual: there was no first-pass latent to refine (hires fix from an image)")


def finish_job(p: Any) -> None:
    """`postprocess`: restore the job-long patches and forget the job (the UNet's are restored at the
    end of each sampler run already)."""
    state: JobState | None = getattr(p, JOB_ATTR, None)
    if state is None:
        return
    try:
        state.scope.restore()
    finally:
        setattr(p, JOB_ATTR, None)


# --- the accordion ----------------------------------------------------------------------------

def _component(f: Field, elem_id: str, visible: bool, choices: Sequence[str] | None = None) -> Any:
    spec = f.spec
    label = f"{spec.label} (0 = {spec.zero})" if spec.zero is not None else spec.label
    common = {"label": label, "value": f.label_of(f.default), "elem_id": elem_id, "visible": visible}
    if spec.choices is not None:
        return gr.Dropdown(choices=list(choices or spec.choice_labels or spec.choices), **common)
    if f.type is bool:
        return gr.Checkbox(**common)
    if f.type in (int, float) and spec.minimum is not None and spec.maximum is not None:
        minimum = 0 if spec.zero is not None else spec.minimum
        return gr.Slider(minimum=minimum, maximum=spec.maximum, step=spec.step or 1, **common)
    return gr.Textbox(lines=1, **common)


class Accordion:
    """Owns the components of one tab, their events, the infotext fields and the paste names."""

    def __init__(self, script: scripts.Script, tab: str) -> None:
        self.script = script
        self.tab = tab
        self.fields = all_fields(GROUPS)
        self.components: dict[str, Any] = {}
        self.core: dict[str, Any] = {}
        self.boxes: list[tuple[Any, tuple[str, ...]]] = []  # a settings group, the methods it shows for
        self.latest = LatestOnly()

    def capture(self, component: Any, elem_id: str | None) -> None:
        """`after_component`: remember the tab's controls the summary follows."""
        prefix = f"{self.tab}_"
        if elem_id and elem_id.startswith(prefix) and elem_id[len(prefix):] in CORE_IDS:
            self.core[elem_id[len(prefix):]] = component

    def _fields_of(self, group: type[ParamGroup]) -> None:
        """The group's controls, its switch first."""
        eid = self.script.elem_id
        for f in sorted(fields(group), key=lambda f: f.name != "enabled"):
            if f.api_key != "enabled":
                self.components[f.api_key] = _component(f, eid(f.api_key), self.tab in f.spec.tabs)

    def build(self) -> list[Any]:
        by_key = {f.api_key: f for f in self.fields}
        eid = self.script.elem_id
        method_field = by_key["method"]
        offered = ["none", *(key for key, method in METHODS.items() if self.tab in method.tabs)]
        with InputAccordion(False, label=TITLE, elem_id=eid("enabled")) as enabled:
            self.components["enabled"] = enabled
            self.components["method"] = _component(method_field, eid("method"), True,
                                                   [str(method_field.label_of(key)) for key in offered])
            for group in METHOD_GROUPS:
                with gr.Accordion(f"{group.TITLE} settings", open=True, visible=group.KEY == method_field.default,
                                  elem_id=eid(f"{group.KEY}_group"), elem_classes=["hires-methods-group"]) as box:
                    self._fields_of(group)
                self.boxes.append((box, (group.KEY,)))
            for combination in COMBINATION_GROUPS:
                shown = self.tab in by_key[f"{combination.KEY}_enabled"].spec.tabs
                with gr.Accordion(combination.TITLE, open=False, elem_id=eid(f"{combination.KEY}_group"),
                                  visible=shown and method_field.default in combination.APPLIES_TO,
                                  elem_classes=["hires-methods-group"]) as box:
                    self._fields_of(combination)
                self.boxes.append((box, combination.APPLIES_TO if shown else ()))
            for group in FEATURE_GROUPS:
                with gr.Accordion(group.TITLE, open=False, elem_id=eid(f"{group.KEY}_group"),
                                  elem_classes=["hires-methods-group"]):
                    self._fields_of(group)
            self.summary = gr.HTML(summary_html(["The plan appears here once the page has loaded."]),
                                   elem_id=eid("summary"), elem_classes=["hires-methods-summary"])
            self.stamp = gr.Textbox(STAMP, visible=False, elem_id=eid("stamp"))
            self.refresh_button = gr.Button("Refresh the plan", elem_id=eid("refresh"),
                                            elem_classes=["hires-methods-refresh"])
            gr.HTML(self._help_json(), elem_classes=["hires-methods-help"])
        ordered = [self.components[f.api_key] for f in self.fields]
        self._wire(ordered)
        self.script.infotext_fields = [(self.components[f.api_key], self._paste(f)) for f in self.fields]
        self.script.paste_field_names = [f.infotext_key for f in self.fields if f.api_key != "enabled"] + [VERSION_KEY]
        return ordered

    def _help_json(self) -> str:
        """For javascript/hires_methods.js: the hover help of every control ({elem_id: help}), and the
        elements whose edits the plan follows (ours and the tab's size/steps/hires controls)."""
        return html.escape(json.dumps({
            "tab": self.tab,
            "help": {self.script.elem_id(f.api_key): f.spec.help for f in self.fields},
            "follow": [self.script.elem_id("enabled").rsplit("_", 1)[0] + "_",
                       *(f"{self.tab}_{key}" for key in CORE_IDS), f"{self.tab}_hr"],
        }))

    def _paste(self, f: Field) -> Callable[[dict[str, str]], object]:
        """The component value for a pasted infotext: with our keys (version 2 or 1) it describes all our
        settings (a missing key is the default); without them only "enabled" is set (to off). A value
        that cannot be read leaves its control untouched (None)."""
        def value(params: dict[str, str]) -> object:
            data, problems = read_infotext(GROUPS, params)
            ours = bool(data or problems)
            if f.api_key == "enabled":
                return bool(data.get("enabled", False)) if ours else False
            if not ours:
                return None
            if f.api_key in data:
                return f.label_of(data[f.api_key])
            key = f.infotext_key if f.infotext_key in params else f.legacy_infotext_key
            return None if key in problems else f.label_of(f.default)
        return value

    def _wire(self, ordered: list[Any]) -> None:
        method = self.components["method"]
        method_field = next(f for f in self.fields if f.api_key == "method")
        def show(label: str) -> Any:
            updates = [gr.update(visible=method_field.choice_of(label) in methods) for _, methods in self.boxes]
            return updates[0] if len(updates) == 1 else updates  # gradio takes one output's value as it is

        method.change(show, inputs=[method], outputs=[box for box, _ in self.boxes], queue=False, **QUIET)
        core_ids = [k for k in CORE_IDS if k in self.core]
        inputs = [*ordered, *(self.core[k] for k in core_ids), self.stamp]
        outputs = [self.summary, *self._preset_outputs(), *self._locked_outputs()]

        def refresh(*values: Any) -> list[Any]:
            ours, theirs = values[:len(ordered)], dict(zip(core_ids, values[len(ordered):len(inputs) - 1]))
            stamp = values[len(inputs) - 1]
            answer = self.refresh(ours, theirs, stamp)
            return answer if self.latest.current(stamp) else [gr.update() for _ in answer]

        events = {"fn": refresh, "inputs": inputs, "outputs": outputs, "queue": False, **QUIET}
        for component in [*ordered, *(self.core[k] for k in core_ids)]:
            component.change(**events, _js="hiresMethodsStamp")
        self.refresh_button.click(**events, _js="hiresMethodsSettle")

    def _preset_fields(self) -> list[Field]:
        return [f for f in self.fields if f.group.KEY in METHODS and f.name == "preset"]

    def _preset_outputs(self) -> list[Any]:
        return [self.components[f.api_key] for f in self._preset_fields()]

    def _locked_fields(self) -> list[Field]:
        return [f for f in self.fields if f.spec.from_preset]

    def _locked_outputs(self) -> list[Any]:
        return [self.components[f.api_key] for f in self._locked_fields()]

    def refresh(self, ours: Sequence[Any], core: dict[str, Any], stamp: object = "") -> list[Any]:
        """The summary, the preset menus for the model's family, and the preset-controlled fields."""
        shown = panel(self.tab, ours, core, host.ui_model(), str(stamp), IS_FORGE)
        presets = [gr.update(choices=preset_menu(f, shown.family, ours[self.fields.index(f)]))
                   for f in self._preset_fields()]
        locked = []
        for f in self._locked_fields():
            decided = shown.locked_value(f)
            locked.append(gr.update(interactive=True, label=f.spec.label) if decided is None else
                          gr.update(value=f.label_of(decided[0]), interactive=False,
                                    label=f"{f.spec.label} (from the {decided[1]} preset)"))
        return [shown.html, *presets, *locked]


# --- X/Y/Z plot -------------------------------------------------------------------------------

def register_xyz_axes() -> None:
    """Add our axes to the X/Y/Z plot script (at import time, so the API sees them too)."""
    data = next((d for d in scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py"), None)
    if data is None:
        log("X/Y/Z plot script not found: no [Hires Methods] axes")
        return
    xyz = data.module
    known = {option.label for option in xyz.axis_options}
    for axis in xyz_axes(GROUPS):
        if axis.label in known:
            continue
        kind = axis.field.type if axis.field.type in (int, float) and axis.field.spec.zero is None else str

        def apply(p: Any, value: Any, _values: Any, axis: Any = axis) -> None:
            setattr(p, XYZ_ATTR, {**getattr(p, XYZ_ATTR, {}), axis.field.api_key: axis.parse(str(value))})

        def confirm(_p: Any, values: Sequence[Any], axis: Any = axis) -> None:
            for value in values:
                try:
                    axis.parse(str(value))
                except ValueError as error:
                    raise RuntimeError(f"{axis.label}: {error}") from None

        choices = (lambda axis=axis: list(axis.choices)) if axis.choices else None
        xyz.axis_options.append(xyz.AxisOption(axis.label, kind, apply, confirm=confirm, choices=choices))


# --- API --------------------------------------------------------------------------------------

def install_api_validation(_demo: Any, app: Any) -> None:
    """`on_app_started`: answer 422 for invalid Hires Methods args before a job starts."""
    if any(getattr(m, "cls", None) is ApiValidation for m in app.user_middleware):
        return
    app.middleware_stack = None  # as the WebUI does when it adds its own middleware
    app.add_middleware(ApiValidation)


def register_callbacks() -> None:
    console_logger()
    script_callbacks.on_app_started(install_api_validation)
    script_callbacks.on_script_unloaded(lambda: LIVE.restore_all())
