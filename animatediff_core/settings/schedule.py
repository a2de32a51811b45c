"""AnimateDiff's noise schedule, and the samplers generation offers over it, each declared once.

Source: guoyww/AnimateDiff `configs/training/*.yaml` and `configs/inference/inference-v*.yaml`:
linear betas 0.00085 -> 0.012 over 1000 steps, epsilon prediction, DDIM at inference with
steps_offset=1 and clip_sample off, run by the official script on diffusers 0.11.1 (whose DDIM spaces
timesteps "leading" and ends at alpha 1.0: `ddim` here).

`SAMPLERS` is the one list of samplers: a name, the diffusers scheduler class and its options over the
linear betas, and a help line (a new sampler is one entry of `_SAMPLERS`). Settings take their choices from it, and the resume fingerprint records
a sampler's definition (`Sampler.definition`), so changing what a name means regenerates its videos.
Plain Python at import: diffusers is imported when a scheduler is built, so planning stays torch-free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ScheduleConfig:
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"

    def training_scheduler(self):
        """DDPMScheduler: the forward process for the L2-on-noise objective (`add_noise`)."""
        return _scheduler("DDPMScheduler", {**asdict(self), "clip_sample": False})

    def inference_scheduler(self):
        """The default sampler (`ddim`)."""
        return SAMPLERS[DEFAULT_SAMPLER].build(self)


@dataclass(frozen=True)
class Sampler:
    name: str
    scheduler: str  # a diffusers scheduler class
    options: tuple[tuple[str, object], ...]  # its keyword arguments over ScheduleConfig's betas
    help: str

    def build(self, schedule: ScheduleConfig = ScheduleConfig()):
        return _scheduler(self.scheduler, {**asdict(schedule), **dict(self.options)})

    @property
    def definition(self) -> dict:
        """What the name means, for fingerprints: the class and every option."""
        return {**asdict(ScheduleConfig()), **dict(self.options), "scheduler": self.scheduler}


def _scheduler(cls_name: str, kwargs: dict):
    import diffusers  # here: planning imports this module for the sampler names, without torch

    return getattr(diffusers, cls_name)(**kwargs)


_SAMPLERS = (
    # The official AnimateDiff samples with diffusers 0.11.1's DDIMScheduler and its configs/inference/*.yaml
    # (steps_offset 1, clip_sample false): that version has only "leading" timestep spacing and a final alpha
    # of 1.0 (set_alpha_to_one defaults to true). 25 steps sample at 961, 921, ..., 41, 1.
    Sampler("ddim", "DDIMScheduler",
            (("steps_offset", 1), ("clip_sample", False), ("timestep_spacing", "leading"), ("set_alpha_to_one", True)),
            "the official AnimateDiff's DDIM (guoyww/AnimateDiff on diffusers 0.11.1: leading spacing, steps_offset 1, "
            "final alpha 1.0)"),
    Sampler("ddim_linspace", "DDIMScheduler",
            (("steps_offset", 1), ("clip_sample", False), ("timestep_spacing", "linspace"), ("set_alpha_to_one", False)),
            "diffusers' documented AnimateDiff DDIM recipe (linspace spacing, final alpha of step 0): 999, 957, ..., 0"),
    Sampler("euler_trailing", "EulerDiscreteScheduler", (("timestep_spacing", "trailing"),),
            "AnimateDiff-Lightning's 2/4/8-step modules (ByteDance/AnimateDiff-Lightning: Euler, trailing spacing; guidance 1.0)"),
    Sampler("lcm", "LCMScheduler", (("clip_sample", False),),
            "AnimateLCM's motion module + LCM LoRA (wangfuyun/AnimateLCM: 4-8 steps, guidance 1-2)"),
    # guoyww/AnimateDiff's sdxl-beta branch: scripts/animate.py + configs/inference/inference.yaml
    Sampler("sdxl_beta", "EulerDiscreteScheduler",
            (("timestep_spacing", "leading"), ("steps_offset", 1), ("beta_end", 0.020), ("beta_schedule", "scaled_linear")),
            "the official AnimateDiff-SDXL beta's sampler (Euler, leading spacing, scaled-linear betas to 0.020)"),
    # The two samplers ComfyUI and A1111 users pick first, as diffusers maps them (its schedulers overview:
    # "DPM++ 2M Karras" and "Euler a").
    Sampler("dpmpp_2m_karras", "DPMSolverMultistepScheduler",
            (("algorithm_type", "dpmsolver++"), ("solver_order", 2), ("use_karras_sigmas", True),
             ("timestep_spacing", "linspace")),
            "DPM++ 2M Karras (ComfyUI dpmpp_2m + karras): diffusers' DPMSolverMultistepScheduler, "
            "second order, Karras sigmas; 20-30 steps"),
    # Ancestral: fresh noise at every step, drawn from the row's own generator (the pipeline hands the
    # per-row generators to the scheduler's step), so a row's frames still do not depend on its batch.
    Sampler("euler_ancestral", "EulerAncestralDiscreteScheduler", (("timestep_spacing", "linspace"),),
            "Euler ancestral (ComfyUI euler_ancestral, A1111 \"Euler a\"): diffusers' EulerAncestralDiscreteScheduler; "
            "noise at every step from the row's seed"),
)
SAMPLERS = {s.name: s for s in _SAMPLERS}
DEFAULT_SAMPLER = "ddim"
