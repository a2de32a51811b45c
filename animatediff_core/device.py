"""Where a model runs and in what precision: the one setup every actor does once.

`setup_actor` is what the batch job's, the stills' and the metrics' actors call first: it quiets the
model libraries' per-process noise (progress bars, optional-dependency notices), sets the torch thread
count, and picks the device (the actor's GPU, else CPU) and the weights' dtype for `--precision`.
Plain Python at import (torch is imported when called): job configs read `PRECISIONS` without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

PRECISIONS = ("auto", "fp32", "fp16", "bf16")  # auto: fp16 on a GPU, fp32 on CPU


@dataclass(frozen=True)
class Placement:
    device: str  # "cuda" | "cpu"
    dtype: object  # torch.dtype


def dtype_of(precision: str, cuda: bool):
    """The torch dtype for a precision name (`auto`: fp16 on a GPU, fp32 on CPU)."""
    import torch

    named = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    return named.get(precision) or (torch.float16 if cuda else torch.float32)


def quiet_model_libraries() -> None:
    """No per-actor progress bars, optional-dependency notices or library warnings in the job log, unless
    the job runs at --log-level DEBUG (ANIMATEDIFF_LOG_LEVEL, set by the driver): warnings (peft's, ...)
    go to the `py.warnings` logger, which shows only errors."""
    import logging
    import os

    from diffusers.utils import logging as dl
    from transformers.utils import logging as tl

    if os.environ.get("ANIMATEDIFF_LOG_LEVEL") == "DEBUG":
        return
    for lib in (dl, tl):
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.ERROR)


def setup_actor(precision: str = "auto", threads: int = 1) -> Placement:
    """Once per actor: quiet libraries, `threads` torch threads, and the device and dtype to load onto."""
    import torch

    quiet_model_libraries()
    torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    return Placement("cuda" if cuda else "cpu", dtype_of(precision, cuda))
