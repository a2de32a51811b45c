"""What a row or a job asks for, declared once and validated at the boundary; plain Python, no torch.

- `generation.py`: per-video generation settings, checkpoint and LoRA specs, families, limits
- `schedule.py`: the noise schedule and the samplers offered over it
- `prompt_travel.py`: prompt-travel schedules (a prompt per keyframe)

Imports only the foundation.
"""
