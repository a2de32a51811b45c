"""AnimateDiff as plain single-device PyTorch and diffusers: no Ray here (`pipelines/` spreads it over devices).

Subpackages, lowest first; each imports only those above it in this list:

- the foundation, at this level: `errors.py` (the exception types), `configs.py` (declaring a setting once:
  `option`, `need`, `check_fields`), `device.py` (dtypes and actor placement), `redact.py` (secrets out of logs)
- `io/`: storage (any fsspec URI), bounded reads of untrusted URIs, the model cache, Hub names, weight files
  and key checks, TorchScript weights, video encode/decode
- `settings/`: what a row asks for (generation settings, checkpoint specs), the noise schedule and samplers,
  prompt-travel schedules; plain Python, validated at the boundary
- `models/`: building and changing models: UNet inflation, motion-module shape and formats, numerics, motion
  LoRA, LDM keys, personalization (checkpoint stacks), ControlNet/SparseCtrl, IP-Adapter, the pipeline, speed
  options, the CLIP tokenizer
- `sampling/`: generation from a pipeline: generate, long video (context windows), conditioning inputs, streams
- `metrics/`: per-video scores, VBench dimensions, FVD and its I3D, DINO, CLIP vision, RAFT flow, stills
- `training/`: the motion-module trainer, its objective, clip sampling and the training recipe
- `tiny.py`: tiny models of every kind in the real file formats (tests and CPU smoke runs)

Package `__init__` files hold no imports: importing a module loads only what it needs.
"""
