"""WebUI glue for Hires Methods (A1111 1.10.x and Forge f2.0.1): forwards the Script hooks to
`lib_hires.hosts.webui`. All the math lives in `lib_hires`."""
from __future__ import annotations

from typing import Any

import lib_hires.hosts.webui as webui  # imported while the WebUI has this extension on sys.path
from modules import scripts

webui.register_xyz_axes()
webui.register_callbacks()


class HiresMethodsScript(scripts.Script):
    sorting_priority = 15  # Forge: just below its built-in hires helpers

    def __init__(self) -> None:
        self.accordion: webui.Accordion | None = None

    def title(self) -> str:
        return webui.TITLE

    def show(self, is_img2img: bool) -> object:
        return scripts.AlwaysVisible

    def _accordion(self) -> webui.Accordion:
        if self.accordion is None:
            self.accordion = webui.Accordion(self, "img2img" if self.is_img2img else "txt2img")
        return self.accordion

    def ui(self, is_img2img: bool) -> list[Any]:
        return self._accordion().build()

    def after_component(self, component: Any, **kwargs: Any) -> None:
        self._accordion().capture(component, kwargs.get("elem_id"))

    def process(self, p: Any, *args: Any) -> None:
        webui.start_job(p, args)

    def process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        webui.plan_batch(p)

    def process_before_every_sampling(self, p: Any, *args: Any, **kwargs: Any) -> None:
        webui.before_sampling(p)

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        webui.finish_job(p)
