"""Motion-module training on one device (`pipelines/train` spreads it over workers).

- `recipe.py`: the training recipe (`TrainConfig`; plain Python)
- `clips.py`: which frames a training clip takes, decode size, center crop
- `objective.py`: epsilon prediction with an L2 loss
- `trainer.py`: the trainer

Imports `models/`, `sampling/` (validation videos), `settings/`, `io/` and the foundation.
"""
