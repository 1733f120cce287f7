"""WebUI glue for Hires Methods (A1111 1.10.x and Forge f2.0.1): the txt2img accordion.

This file only wires the WebUI to `lib_hires`; all the math lives in the library.
"""
from __future__ import annotations

import gradio as gr

import lib_hires  # imported while the WebUI has this extension on sys.path (see lib_hires/__init__.py)
from modules import scripts
from modules.ui_components import InputAccordion

TITLE = "Hires Methods"  # also the API key ("hires methods"): never rename


class HiresMethodsScript(scripts.Script):
    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool) -> object:
        return False if is_img2img else scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list[object]:
        with InputAccordion(False, label=TITLE, elem_id=self.elem_id("enabled")) as enabled:
            gr.Markdown(lib_hires.__doc__.split("\n\n")[0] + "\n\nThe methods (ScaleCrafter, DemoFusion, "
                        "AccDiffusion, FreeScale, AP-LDM, FSTD, Tiled VAE) are being added; none runs yet.",
                        elem_classes=["hires-methods-about"])
        return [enabled]
