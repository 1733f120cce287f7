"""How methods act on the host's sampler (DESIGN.md, "Sampling").

A method never re-implements a sampler. It acts through four levers, all run inside the host's own
sampler and CFG so the user's sampler, scheduler, prompt editing, LoRA and ControlNet keep working:

* module patches (`lib_hires.patching`), switched per step by reading the current `Step`;
* call hooks (`hooks.CallHook`) around each batched model call (cond and uncond rows together), for
  tiled/windowed evaluation and noise-damped CFG;
* step hooks (`hooks.StepHook`) that change the sampler's own latent in place before a step;
* the stage driver (`driver.run_stages`) for cascades: upscale, re-noise, finish the schedule.

`steps.py` locates a model call in the pass's schedule, `hooks.py` holds one sampling pass's hooks
and its state, `driver.py` runs stages on a `Host`.
"""
