"""Building and changing models (single device, diffusers classes).

- `motion_config.py`: the shape of a fresh motion module (plain Python)
- `inflate.py`: an image UNet inflated with motion modules; freezing the base
- `motion_formats.py`: motion-module files (original AnimateDiff and diffusers layouts)
- `numerics.py`: the official and diffusers motion-module numerics
- `motion_lora.py`: LoRA adapters on the motion modules
- `ldm_keys.py`: diffusers <-> original LDM key names
- `personalize.py`: personalized checkpoints and stacks, switched in place
- `control_models.py`: ControlNet and SparseCtrl models
- `image_prompt.py`: IP-Adapter
- `pipeline.py`: a diffusers AnimateDiff pipeline from a base folder and a motion module
- `speed.py`: opt-in speed options on a loaded pipeline
- `tokenizer.py`: the CLIP BPE tokenizer, built offline

Imports `io/`, `settings/` and the foundation.
"""
