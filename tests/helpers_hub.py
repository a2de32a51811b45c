"""A Hugging Face cache folder laid out by hand, as `huggingface_hub` writes it, for offline tests."""

from __future__ import annotations

import hashlib
from pathlib import Path


def add_to_hf_cache(hf_home: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """`HF_HOME/hub/models--org--name/{refs/main, blobs/, snapshots/COMMIT/...}` with `files`
    ({path in repo: local file or folder}); returns the snapshot folder."""
    org, name = repo_id.split("/")
    repo = Path(hf_home) / "hub" / f"models--{org}--{name}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir(exist_ok=True)
    for inside, src in files.items():
        sources = [(inside, Path(src))] if Path(src).is_file() else [
            (f"{inside}/{p.relative_to(src)}".lstrip("/"), p) for p in sorted(Path(src).rglob("*")) if p.is_file()]
        for rel, path in sources:
            data = path.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            target = snapshot / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(Path("../" * (len(Path(rel).parts) + 1)) / "blobs" / blob.name)
    return snapshot
