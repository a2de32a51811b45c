"""What one row may cost, how long it may run, and where its cells may point: checked at planning, so a
row over a limit is an error row naming the limit and the flag that raises it, before anything is read.

Cost is `num_frames x height x width x steps x passes` (passes: FreeInit's sampling passes, at least 1),
in pixel-steps: the job default (16 frames of 512x512, 25 steps) costs 1.05e8, and `--max-row-cost`
(default 1e10, about 100 default rows, roughly half an hour of one GPU at SD-1.5 sizes) bounds any row.
`--row-timeout` bounds a row's sampling on the actor (checked after every sampler step: `generate`'s
deadline); the URIs a row names pass `bounded.check_uri` (`--allow-uri`). Light: no torch, no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

from animatediff_core.configs import check_fields, option
from animatediff_core.errors import ConfigError
from animatediff_core.io import bounded
from animatediff_core.settings.generation import URI_SETTINGS, GenerationSettings, parse_image_prompt, parse_keyframes


@dataclass(frozen=True, kw_only=True)
class RowLimits:
    """Per-row budget of the batch job (`pipelines/animate/limits.py`)."""

    max_row_cost: float = option(1e10, low=1, help="largest row, in pixel-steps: num_frames x height x width x steps x "
                                                  "FreeInit passes (the default row costs 1.05e8); a row over it is an error row")
    row_timeout: float = option(3600.0, low=1, help="seconds one row may sample; past it the row is an error row "
                                                   "and the actor goes on with the next (checked after each sampler step)")

    def __post_init__(self):
        check_fields(self)


def row_cost(s: GenerationSettings) -> int:
    """Pixel-steps of one row: frames x height x width x steps x sampling passes."""
    return s.num_frames * s.height * s.width * s.steps * max(1, s.free_init_iterations)


def uris(s: GenerationSettings) -> list[tuple[str, str]]:
    """(setting, URI) of every file or folder the row names (keyframes: each image of its map; ip_adapter_image:
    each image of its list)."""
    out = []
    for name in URI_SETTINGS:
        value = getattr(s, name)
        if not value:
            continue
        if name == "keyframes":
            try:
                out += [(f"keyframe {i}", u) for i, u in parse_keyframes(value, s.num_frames).items()]
            except ConfigError:
                continue  # validate_settings names the problem
        elif name == "ip_adapter_image":
            try:
                out += [(name, u) for u in parse_image_prompt(value)]
            except ConfigError:
                continue
        else:
            out.append((name, value))
    return out


def row_problem(s: GenerationSettings, limits: RowLimits, reads: bounded.ReadLimits) -> str:
    """Why the row may not run ("" when it may): over the cost limit, or a URI the operator does not allow."""
    cost = row_cost(s)
    if cost > limits.max_row_cost:
        passes = max(1, s.free_init_iterations)
        return (f"row cost {cost:.3g} pixel-steps ({s.num_frames} frames x {s.height}x{s.width} x {s.steps} steps x "
                f"{passes} pass{'es' if passes > 1 else ''}) is over --max-row-cost {limits.max_row_cost:.3g}; "
                "raise --max-row-cost to run it, or lower its frames, size or steps")
    for name, uri in uris(s):
        try:
            bounded.check_uri(uri, name, reads)
        except ConfigError as e:
            return str(e)
    return ""
