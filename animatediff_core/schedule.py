"""AnimateDiff's noise schedule: the one the motion modules were trained with.

Source: guoyww/AnimateDiff `configs/training/*.yaml` and `configs/inference/inference-v*.yaml`:
linear betas 0.00085 -> 0.012 over 1000 steps, epsilon prediction, DDIM at inference with
steps_offset=1 and clip_sample off. Users who ran diffusers with other settings (scaled_linear betas,
"leading" spacing, clip_sample on) reported blurry, flickering clips, so these are pinned here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, LCMScheduler


@dataclass(frozen=True)
class ScheduleConfig:
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"

    def training_scheduler(self) -> DDPMScheduler:
        """Forward process for the L2-on-noise objective (`add_noise`)."""
        return DDPMScheduler(**asdict(self), clip_sample=False)

    def inference_scheduler(self) -> DDIMScheduler:
        """DDIM sampler as AnimateDiff samples: steps_offset 1, clip_sample off, linspace spacing."""
        return DDIMScheduler(
            **asdict(self),
            steps_offset=1,
            clip_sample=False,
            timestep_spacing="linspace",
            set_alpha_to_one=False,
        )

    def sampler(self, name: str):
        """The scheduler for a sampler name (`settings.SAMPLERS`), over the same linear betas:
        - ddim: AnimateDiff's own (above);
        - euler_trailing: AnimateDiff-Lightning's 2/4/8-step motion modules (ByteDance/AnimateDiff-Lightning:
          EulerDiscreteScheduler, trailing timestep spacing, linear betas; guidance 1.0);
        - lcm: AnimateLCM's motion module + LCM LoRA (wangfuyun/AnimateLCM: LCMScheduler, linear betas;
          4-8 steps, guidance 1-2).
        """
        if name == "ddim":
            return self.inference_scheduler()
        if name == "euler_trailing":
            return EulerDiscreteScheduler(**asdict(self), timestep_spacing="trailing")
        if name == "lcm":
            return LCMScheduler(**asdict(self), clip_sample=False)
        raise ValueError(f"unknown sampler {name!r}")  # validated upstream: settings.validate_settings
