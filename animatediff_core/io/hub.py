"""Models by name: Hugging Face Hub ids and plain https:// files, resolved to local paths.

Accepted wherever a model is named (`--base`, `--motion-module`, checkpoint sets, `uri` columns):
- `org/name` (a repo), `org/name/sub/folder` (a folder in it), `org/name/file.safetensors` (a file),
  or the same behind `hf://`. Resolved through `huggingface_hub`, which keeps its own cache and
  honours `HF_HOME`, `HF_HUB_OFFLINE` and its login token (`HF_TOKEN`); each node of a cluster
  resolves the same id into its own cache.
- `https://.../file.safetensors`: fetched once into this project's private model cache (`cache.localize`,
  within the limits of `bounded.py`: public addresses unless allowed, size caps, time-outs).
- Anything else (a local path, `s3://`, `gs://`, ...) is returned unchanged. A path that exists
  locally is always a path, never a Hub id.
"""

from __future__ import annotations

import os
import re

from animatediff_core.io import cache, storage
from animatediff_core.errors import CheckpointError

_REPO = r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
_HUB = re.compile(rf"^(?P<repo>{_REPO})(?:/(?P<path>.+?))?/?$")
FILE_EXTS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".json", ".yaml", ".csv", ".parquet")


def parse(ref: str) -> tuple[str, str] | None:
    """(repo id, path inside the repo or "") when `ref` names the Hub, else None."""
    ref = str(ref)
    if ref.startswith("hf://"):
        ref = ref[len("hf://"):]
    elif "://" in ref or ref.startswith(("/", ".", "~")) or os.path.exists(ref):
        return None
    m = _HUB.match(ref)
    return (m.group("repo"), m.group("path") or "") if m else None


def resolve(ref: str, allow_patterns: list[str] | None = None, local_only: bool = False, kind: str = "model") -> str:
    """A local path for Hub ids and https:// files; other references unchanged.

    `allow_patterns` limits what a whole-repo or folder id downloads (a base model needs its
    unet/vae/text_encoder/tokenizer, not every variant in the repo). `local_only`: Hub ids from the
    local cache only, never downloaded (CheckpointError when not cached). `kind` (bounded.py) sizes an
    https:// file's limit."""
    parsed = parse(ref)
    if parsed is None:
        return cache.localize(ref, kind) if str(ref).lower().startswith(("http://", "https://")) else ref
    repo, path = parsed
    import huggingface_hub as hf  # here: only Hub ids need it; planning resolves plain paths without it

    try:
        if path.endswith(FILE_EXTS):
            return hf.hf_hub_download(repo, path, local_files_only=local_only)
        patterns = [f"{path}/{p}" for p in allow_patterns] if path and allow_patterns else \
            allow_patterns or ([f"{path}/*", f"{path}/**"] if path else None)
        folder = hf.snapshot_download(repo, allow_patterns=patterns, local_files_only=local_only)
    except Exception as e:  # offline and not cached, unknown repo, no access: all say the same to the user
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{ref}: not a local path and not found on the Hugging Face Hub or in its cache "
            f"({type(e).__name__}: {first}); check the id, log in (HF_TOKEN) for private repos, "
            "or unset HF_HUB_OFFLINE to download") from None
    return os.path.join(folder, path) if path else folder
