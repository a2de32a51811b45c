"""A batch job's output folder, written the way the job writes it (metadata shard + mp4s), in milliseconds."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pandas as pd


def batch_output(out) -> str:
    """A batch job's output folder: 3 ok rows over two checkpoints and one error row."""
    from animatediff_core.io.video_io import write_video
    from pipelines.animate.layout import OutputLayout
    from pipelines.animate.report import write_shard

    rows = []
    for k, (ckpt, prompt, ok) in enumerate([("toon", "a cat", True), ("toon", "a dog", False), ("real", "a cat", True),
                                            ("real", "waves", True)]):
        mp4 = os.path.join(out, "videos", ckpt, f"p{k}.mp4")
        if ok:
            levels = np.linspace(0, 255, 8)[:, None, None, None]
            write_video(mp4, np.broadcast_to(levels, (8, 32, 32, 3)).astype(np.uint8), fps=8)
        rows.append(dict(id=f"p{k}", prompt=prompt, negative_prompt="", seed=k, checkpoint=ckpt, num_frames=8, height=32,
                         width=32, steps=1, guidance_scale=2.0, fps=8, status="ok" if ok else "error",
                         error="" if ok else "boom", motion_module="mm", video_uri=mp4 if ok else "", gif_uri="",
                         seconds=0.1, bytes=os.path.getsize(mp4) if ok else 0,
                         sha256=hashlib.sha256(open(mp4, "rb").read()).hexdigest() if ok else "", skipped=False))
    write_shard(pd.DataFrame(rows), OutputLayout(str(out)), "20260101T000000-abcdef")
    return str(out)
