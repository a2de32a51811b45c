"""Resume: which rows are already finished, found by listing each output folder once.

A rerun lists every `videos/[MOTION/]CHECKPOINT/` folder once (one request per folder on object
stores), then reads a sidecar only where the listing shows both the video and its sidecar. A row is
finished when its sidecar's fingerprint matches the row's settings, checkpoint and motion module, and
the video's listed size matches the sidecar's. Everything else is generated again.
"""

from __future__ import annotations

import json
import logging

import pandas as pd

from animatediff_core.io import storage
from animatediff_core.settings.generation import CheckpointSpec
from pipelines.animate.identity import fingerprint
from pipelines.animate.layout import OutputLayout
from pipelines.animate.sets import MotionSpec

log = logging.getLogger(__name__)


def list_finished(layout: OutputLayout, motions: list[str], checkpoints: list[str]) -> dict[tuple[str, str], dict[str, int]]:
    """{(motion, checkpoint): {id: mp4 size}} for every id whose mp4 and sidecar are both listed."""
    found = {}
    for m in motions:
        for c in checkpoints:
            fs, path = storage.fs_and_path(layout.folder(m, c))
            try:
                entries = fs.ls(path, detail=True)
            except (FileNotFoundError, NotADirectoryError):
                continue
            sizes, sidecars = {}, set()
            for e in entries:
                name = e["name"].rstrip("/").rsplit("/", 1)[-1]
                if name.endswith(".mp4"):
                    sizes[name[:-4]] = int(e.get("size") or 0)
                elif name.endswith(".json"):
                    sidecars.add(name[:-5])
            done = {rid: size for rid, size in sizes.items() if rid in sidecars}
            if done:
                found[(m, c)] = done
    total = sum(len(v) for v in found.values())
    if total:
        log.info("resume: %d finished video(s) listed in %d folder(s)", total, len(found))
    return found


def mark_finished(batch: pd.DataFrame, finished: dict, layout: OutputLayout, motions: dict[str, MotionSpec],
                  specs: dict[str, CheckpointSpec], image_prompt: str = "") -> pd.DataFrame:
    """Pending rows whose listed video and sidecar match become ok/skipped (one sidecar read each).
    `image_prompt`: the job's IP-Adapter and encoder (identity.fingerprint)."""
    if not finished or batch.empty:
        return batch
    batch = batch.copy()
    for i in batch.index[batch["status"] == "pending"]:
        row = batch.loc[i]
        size = finished.get((row["motion_module"], row["checkpoint"]), {}).get(row["id"])
        if size is None:
            continue
        try:
            meta = json.loads(storage.read_small(layout.sidecar(row["motion_module"], row["checkpoint"], row["id"])))
        except (OSError, ValueError):
            continue  # unreadable sidecar: generate again
        same = meta.get("fingerprint") == fingerprint(row.to_dict(), motions[row["motion_module"]], specs[row["checkpoint"]], image_prompt)
        if same and size == meta.get("bytes"):
            for k in ("video_uri", "gif_uri", "seconds", "bytes", "sha256"):
                batch.at[i, k] = meta.get(k)
            batch.at[i, "status"], batch.at[i, "skipped"] = "ok", True
    return batch
