"""Pure tensor operations the methods compose (no WebUI imports, no module-level state).

`redilation`: ScaleCrafter's re-dilated and dispersed convolution forwards and the progressive
dilation schedule; `dispersion`: the 3x3 -> 5x5 kernel dispersion transform R of ScaleCrafter
App. F (methods/scalecrafter.md §2, §3, §5).
"""
