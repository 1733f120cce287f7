"""Hires Methods: training-free high-resolution generation for the A1111 and Forge WebUIs.

The package is a pure library: everything outside `lib_hires.hosts` works on plain
`torch.nn.Module`s found by name and never imports the WebUI (`modules`, `backend`, `ldm`, `sgm`,
gradio). Start reading at `unet.py` (paper block names), `patching.py` (scoped module patches),
`sampling/` (step hooks and the stage driver) and `params.py` (every user-facing parameter).
"""
