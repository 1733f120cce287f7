"""WebUI glue shared by A1111 and Forge: the accordion, infotext, X/Y/Z axes, API validation, jobs.

`scripts/hires_methods.py` only forwards the Script hooks here. Everything the user can set comes
from `params.py`: one component per field, in field order (so the UI's positional args, the API's
positional fallback and the infotext fields cannot drift apart).
"""
from __future__ import annotations

import html
import importlib.util
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from modules import script_callbacks, scripts, shared
from modules.ui_components import InputAccordion

from ..api import ApiValidation, settings_from_args
from ..job import JobPlan, PassSize, plan_job, preview, tiled_vae
from ..params import (
    GROUPS, INFOTEXT_PREFIX, WEBUI_HIRES_KEYS, Field, ParamError, ScaleCrafterParams, Settings,
    TiledVAEParams, all_fields, xyz_axes,
)
from ..patching import LIVE, PatchScope
from ..sampling.hooks import PassSlot
from ..vae.hook import VaeTiling

IS_FORGE = importlib.util.find_spec("modules_forge") is not None
if IS_FORGE:
    from . import forge as host
else:
    from . import a1111 as host

TITLE = "Hires Methods"  # the API key is its lower case: never rename
JOB_ATTR = "hires_methods_job"  # the job's state, kept on `p` (X/Y/Z copies `p` per cell)
XYZ_ATTR = "hires_methods_xyz"  # X/Y/Z overrides for the cell: {api_key: value}
# the tab's controls the summary line follows (elem_id without the "txt2img_"/"img2img_" prefix),
# captured as the WebUI creates them; img2img has no hires fix
CORE_IDS = ("width", "height", "steps", "hr-checkbox", "hr_scale", "hr_resize_x", "hr_resize_y", "hires_steps")


def log(text: str) -> None:
    print(f"[{TITLE}] {text}")


# --- jobs -------------------------------------------------------------------------------------

@dataclass
class JobState:
    """One job (one `p`, so one X/Y/Z cell): its settings, plan, pass slot and job-long patches."""

    settings: Settings | None  # None: invalid settings, the job runs unmodified
    plan: JobPlan | None = None  # made at the first batch, once the WebUI knows the hires size
    slot: PassSlot = field(default_factory=PassSlot)
    scope: PatchScope = field(default_factory=PatchScope)
    tiling: VaeTiling | None = None


def _our_keys(params: dict[str, Any]) -> list[str]:
    return [key for key in params if key.startswith(INFOTEXT_PREFIX) and key not in WEBUI_HIRES_KEYS]


def hires_target(p: Any) -> tuple[int, int]:
    """The hires pass's size: the WebUI's own value once `p.init` ran, else computed like it does."""
    if getattr(p, "hr_upscale_to_x", 0):
        return p.hr_upscale_to_x, p.hr_upscale_to_y
    return _hires_size(p.width, p.height, p.hr_scale, p.hr_resize_x, p.hr_resize_y)


def _hires_size(width: int, height: int, scale: float, resize_x: int, resize_y: int) -> tuple[int, int]:
    if not resize_x and not resize_y:
        return int(width * scale), int(height * scale)
    if not resize_y:
        return resize_x, resize_x * height // width
    if not resize_x:
        return resize_y * width // height, resize_y
    return resize_x, resize_y


def _warner(p: Any) -> Callable[[str], None]:
    def warn(text: str) -> None:
        log(text)
        p.extra_generation_params[f"{INFOTEXT_PREFIX}warning"] = text
    return warn


def _status(text: str) -> None:
    shared.state.textinfo = text


def start_job(p: Any, args: Sequence[object]) -> None:
    """`process` (before the WebUI's init encodes any image): settings, and the tiled VAE for the job.
    Never raises: a problem becomes a warning in the infotext and the job runs unmodified."""
    leftovers = LIVE.restore_all()
    if leftovers:
        log(f"restored {leftovers} patch scope(s) left over from an earlier job")
    for key in _our_keys(p.extra_generation_params):  # X/Y/Z cells share this dict
        del p.extra_generation_params[key]
    try:
        settings = settings_from_args(args)
        overrides = getattr(p, XYZ_ATTR, None)
        if overrides:
            settings = settings.with_overrides(overrides)
    except ParamError as error:
        log(f"invalid settings, job runs unmodified: {error}")
        p.extra_generation_params[f"{INFOTEXT_PREFIX}warning"] = f"invalid settings ({error}); not applied"
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
    state.plan = plan_job(state.settings, unet, native, PassSize("first", p.width, p.height, p.steps), hires)
    p.extra_generation_params.update(state.plan.infotext)
    if state.plan.summary != "off":
        log(state.plan.summary)


def before_sampling(p: Any) -> None:
    """`process_before_every_sampling`: hook this pass of the job's plan (idempotent)."""
    state: JobState | None = getattr(p, JOB_ATTR, None)
    if state is None or state.plan is None:
        return
    if state.tiling is not None:
        host.use_vae_tiling(p, state.tiling, state.scope)
    if state.plan.runs:
        host.before_sampling(p, state.plan, state.slot, _warner(p))


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

def _component(field: Field, elem_id: str) -> Any:
    spec = field.spec
    value = field.label_of(field.default)
    if spec.choices is not None:
        return gr.Dropdown(label=spec.label, choices=list(spec.choice_labels or spec.choices), value=value,
                           elem_id=elem_id)
    if field.type is bool:
        return gr.Checkbox(label=spec.label, value=value, elem_id=elem_id)
    if field.type in (int, float) and spec.minimum is not None and spec.maximum is not None:
        minimum = 0 if spec.zero is not None else spec.minimum
        return gr.Slider(label=spec.label, minimum=minimum, maximum=spec.maximum, step=spec.step or 1,
                         value=value, elem_id=elem_id)
    return gr.Textbox(label=spec.label, value=value, lines=1, elem_id=elem_id)


class Accordion:
    """Owns the components, their events, the infotext fields and the paste names."""

    def __init__(self, script: scripts.Script) -> None:
        self.script = script
        self.fields = all_fields(GROUPS)
        self.components: dict[str, Any] = {}
        self.core: dict[str, Any] = {}

    def capture(self, component: Any, elem_id: str | None, tab: str) -> None:
        """`after_component`: remember the tab's controls the summary follows."""
        prefix = f"{tab}_"
        if elem_id and elem_id.startswith(prefix) and elem_id[len(prefix):] in CORE_IDS:
            self.core[elem_id[len(prefix):]] = component

    def build(self) -> list[Any]:
        by_key = {f.api_key: f for f in self.fields}
        eid = self.script.elem_id
        with InputAccordion(False, label=TITLE, elem_id=eid("enabled")) as enabled:
            self.components["enabled"] = enabled
            self.components["method"] = _component(by_key["method"], eid("method"))
            with gr.Group(elem_classes=["hires-methods-group"]) as scalecrafter_group:
                for f in self.fields:
                    if f.group is ScaleCrafterParams:
                        self.components[f.api_key] = _component(f, eid(f.api_key))
            with gr.Group(elem_classes=["hires-methods-group"]):
                for f in self.fields:
                    if f.group is TiledVAEParams:
                        self.components[f.api_key] = _component(f, eid(f.api_key))
            self.summary = gr.HTML(elem_id=eid("summary"), elem_classes=["hires-methods-summary"])
            gr.HTML(self._help_json(), elem_id=eid("help"), elem_classes=["hires-methods-help"])
        ordered = [self.components[f.api_key] for f in self.fields]
        self._wire(ordered, scalecrafter_group)
        self.script.infotext_fields = [(self.components[f.api_key], self._paste(f)) for f in self.fields]
        self.script.paste_field_names = [f.infotext_key for f in self.fields] + [f"{INFOTEXT_PREFIX}version"]
        return ordered

    def _help_json(self) -> str:
        """Hover help for every control (applied by javascript/hires_methods.js)."""
        return html.escape(json.dumps({self.script.elem_id(f.api_key): f.spec.help for f in self.fields}))

    def _paste(self, f: Field) -> Callable[[dict[str, str]], object]:
        """The component value for an infotext: an infotext with our keys fully describes our settings
        (a missing key is the default); without them only "enabled" is set (to off). None = untouched."""
        def value(params: dict[str, str]) -> object:
            ours = f"{INFOTEXT_PREFIX}method" in params
            if f.api_key == "enabled":
                return ours
            if not ours:
                return None
            text = params.get(f.infotext_key)
            try:
                return f.label_of(f.default if text is None else f.from_text(text))
            except ValueError:
                return None
        return value

    def _wire(self, ordered: list[Any], scalecrafter_group: Any) -> None:
        method = self.components["method"]
        scalecrafter = next(f for f in self.fields if f.api_key == "method").label_of("scalecrafter")
        method.change(lambda m: gr.update(visible=m == scalecrafter), inputs=[method], outputs=[scalecrafter_group],
                      show_progress=False)
        preset_fields = [f for f in self.fields if f.spec.from_preset]
        core = [self.core[k] for k in CORE_IDS if k in self.core]
        core_ids = [k for k in CORE_IDS if k in self.core]
        outputs = [self.summary, *(self.components[f.api_key] for f in preset_fields)]

        def refresh(*values: Any) -> list[Any]:
            ours, theirs = values[:len(ordered)], dict(zip(core_ids, values[len(ordered):]))
            return self.refresh(ours, theirs, preset_fields)

        for component in [*ordered, *core]:
            component.change(refresh, inputs=[*ordered, *core], outputs=outputs, show_progress=False)

    def refresh(self, ours: Sequence[Any], core: dict[str, Any], preset_fields: list[Field]) -> list[Any]:
        """The summary line and the preset-controlled fields for the current controls."""
        keep = [gr.update() for _ in preset_fields]
        try:
            unet, native = host.unet_of(shared.sd_model), host.native_size(shared.sd_model)
        except AttributeError:  # no model loaded yet (Forge loads it at the first job)
            return ["<span>The plan shows here once a model is loaded.</span>", *keep]
        width, height = int(core.get("width", 512)), int(core.get("height", 512))
        steps = int(core.get("steps", 20))
        hires = None
        if core.get("hr-checkbox"):
            hx, hy = _hires_size(width, height, float(core.get("hr_scale", 2.0)),
                                 int(core.get("hr_resize_x", 0)), int(core.get("hr_resize_y", 0)))
            hires = PassSize("hires", hx, hy, int(core.get("hires_steps", 0)) or steps)
        try:
            summary, resolved = preview(settings_from_args(list(ours)), unet, native,
                                        PassSize("first", width, height, steps), hires)
        except Exception as error:  # bad input or a model we cannot inspect: say so, never break the UI
            return [f"<span class='hires-methods-error'>{html.escape(str(error))}</span>", *keep]
        if resolved is None:
            return [f"<span>{html.escape(summary)}</span>", *(gr.update(interactive=True) for _ in preset_fields)]
        return [f"<span>{html.escape(summary)}</span>",
                *(gr.update(value=f.label_of(getattr(resolved, f.name)), interactive=False)
                  if f.group is type(resolved) else gr.update() for f in preset_fields)]


# --- X/Y/Z plot -------------------------------------------------------------------------------

def register_xyz_axes() -> None:
    """Add our axes to the X/Y/Z plot script (at import time, so the API sees them too)."""
    data = next((d for d in scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py"), None)
    if data is None:
        log("X/Y/Z plot script not found: no [Hires] axes")
        return
    xyz = data.module
    known = {option.label for option in xyz.axis_options}
    for axis in xyz_axes(GROUPS):
        if axis.label in known:
            continue
        kind = axis.field.type if axis.field.type in (int, float) else str

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
    script_callbacks.on_app_started(install_api_validation)
    script_callbacks.on_script_unloaded(lambda: LIVE.restore_all())
