"""Job outputs beside the videos: metadata Parquet shards, an offline index.html, the summary."""

from __future__ import annotations

import html
import io
import os

import pandas as pd

from animatediff_core import storage

SHARD_ROWS = 10_000


def write_metadata(results: pd.DataFrame, out: str) -> list[str]:
    """`out/metadata/part-00000.parquet`, ... (one row per prompt row x checkpoint); stale shards removed."""
    folder = storage.join(out, "metadata")
    written = []
    for n, start in enumerate(range(0, max(len(results), 1), SHARD_ROWS)):
        buf = io.BytesIO()
        results.iloc[start : start + SHARD_ROWS].to_parquet(buf, index=False)
        uri = storage.join(folder, f"part-{n:05d}.parquet")
        storage.write_bytes_atomic(uri, buf.getvalue())
        written.append(uri)
    fs, path = storage.fs_and_path(folder)
    keep = {os.path.basename(u) for u in written}
    for p in fs.ls(path, detail=False):
        if p.endswith(".parquet") and os.path.basename(p) not in keep:
            fs.rm(p)
    return written


def read_metadata(out: str) -> pd.DataFrame:
    fs, path = storage.fs_and_path(storage.join(out, "metadata"))
    parts = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".parquet"))
    return pd.concat([pd.read_parquet(io.BytesIO(fs.cat_file(p))) for p in parts], ignore_index=True)


def _rel(uri: str, out: str) -> str:
    return uri[len(out.rstrip("/")) + 1 :] if uri.startswith(out.rstrip("/")) else uri


INDEX_FIELDS = ["checkpoint", "prompt", "negative_prompt", "seed", "num_frames", "height", "width",
                "steps", "guidance_scale", "status", "error", "seconds"]


def write_index(results: pd.DataFrame, out: str) -> str:
    """`out/index.html`: every video's preview with its metadata; relative links, so it opens offline."""
    cards = []
    for r in results.sort_values(["checkpoint", "id"]).to_dict("records"):
        if r["status"] == "ok":
            media = (f'<img src="{html.escape(_rel(r["gif_uri"], out))}" alt="preview">' if r.get("gif_uri") else
                     f'<video src="{html.escape(_rel(r["video_uri"], out))}" autoplay loop muted></video>')
            media = f'<a href="{html.escape(_rel(r["video_uri"], out))}">{media}</a>'
        else:
            media = '<div class="err">no video</div>'
        rows = "".join(f"<tr><th>{k}</th><td>{html.escape(str(r.get(k, '')))}</td></tr>" for k in INDEX_FIELDS if r.get(k) not in ("", None))
        cards.append(f'<div class="card {r["status"]}">{media}<table>{rows}</table><code>{html.escape(str(r["id"]))}</code></div>')
    ok = int((results["status"] == "ok").sum()) if len(results) else 0
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>animatediff-ray results</title>
<style>body{{font-family:sans-serif;margin:1em}}.grid{{display:flex;flex-wrap:wrap;gap:12px}}
.card{{border:1px solid #ccc;padding:6px;width:280px;font-size:12px}}.card.error{{background:#fee}}
.card img,.card video{{width:256px;image-rendering:pixelated}}th{{text-align:left;vertical-align:top}}.err{{color:#a00}}</style>
</head><body><h1>animatediff-ray: {len(results)} videos ({ok} ok)</h1><div class="grid">{"".join(cards)}</div></body></html>"""
    uri = storage.join(out, "index.html")
    storage.write_text_atomic(uri, page)
    return uri


def summarize(results: pd.DataFrame, seconds: float) -> str:
    """The closing summary table: counts by status and by checkpoint, time, videos/s."""
    if results.empty:
        return "no rows"
    skipped = results["skipped"].astype(bool)
    ok_new = (results["status"] == "ok") & ~skipped
    by = results.assign(ok=ok_new, error=results["status"] == "error", skipped=skipped).groupby("checkpoint")[["ok", "error", "skipped"]].sum()
    lines = [f"{'checkpoint':<24}{'ok':>6}{'error':>7}{'skipped':>9}"]
    lines += [f"{name:<24}{int(r.ok):>6}{int(r.error):>7}{int(r.skipped):>9}" for name, r in by.iterrows()]
    lines.append(f"{'total':<24}{int(ok_new.sum()):>6}{int(by.error.sum()):>7}{int(skipped.sum()):>9}")
    lines.append(f"{len(results)} rows in {seconds:.1f}s, {ok_new.sum() / max(seconds, 1e-9):.2f} videos/s")
    errors = results.loc[results["status"] == "error", "error"].value_counts().head(5)
    lines += [f"  error x{n}: {msg}" for msg, n in errors.items()]
    return "\n".join(lines)
