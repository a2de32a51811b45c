"""Per-video quality metrics: CLIP text alignment, frame consistency, flicker, motion, domain similarity.

Frames are ``(f, h, w, 3) uint8`` RGB arrays. CLIP embeddings are ``(n, d)`` float32, L2-normalized,
so a dot product is a cosine similarity. The CLIP model is a local transformers ``CLIPModel`` folder
(weights, tokenizer, image-processor config); nothing is downloaded.

Definitions (one value per video):
- ``text_alignment``: ``max(0, 100 * mean_t cos(E_text, E_frame_t))``, torchmetrics' ``CLIPScore``
  convention (the floor applies to the mean). Prompts past the text model's 77 positions are truncated
  the way CLIP's own tokenizer does (start token + 75 tokens + end token) and counted.
- ``frame_consistency``: mean cosine of consecutive frames' CLIP image embeddings;
  ``frame_consistency_all_pairs``: mean over all pairs ``i < j``.
- ``temporal_flicker``: ``1 - mean |x_{t+1} - x_t| / 255`` over pixels and channels (VBench's
  temporal-flickering score); needs no weights. 1.0 is a still video.
- ``motion_pixel``: mean absolute difference of consecutive frames in 8-bit levels (0-255), the
  weight-free stand-in for optical-flow magnitude. It is ``255 * (1 - temporal_flicker)``: one is
  reported as an amount, the other as a score.
- ``motion_flow``: mean optical-flow magnitude between consecutive frames, in pixels (RAFT, `flow.py`),
  when the caller gives RAFT weights; NaN otherwise.
- ``domain_similarity`` (AnimateDiff paper, sec. 5): mean cosine between each frame's CLIP image
  embedding and that of a still the same personalized checkpoint makes without the motion module.
- ``image_alignment`` (image prompts, IP-Adapter): ``mean_r mean_t cos(E_ref_r, E_frame_t)``, the CLIP image
  embeddings of the row's reference image(s) (``ip_adapter_image``) against every frame, as ``domain_similarity``
  compares a still. NaN for a row without an image prompt (no value, not 0).
Metrics of consecutive frames are NaN for a one-frame video; ``domain_similarity`` is NaN without a still.

VBench's dimensions (``VBENCH_COLUMNS``) are computed by `vbench.py` with VBench's own models and
preprocessing; every column's name and range is declared in `metric_columns.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

from animatediff_core.io import cache, storage
from animatediff_core.errors import CheckpointError
from animatediff_core.metrics.flow import Raft, motion_flow

from animatediff_core.metrics.columns import METRICS, VBENCH_DIMENSIONS  # noqa: F401  (re-exported: stages read them here)


@dataclass(frozen=True)
class Clip:
    """A loaded CLIP with its own tokenizer and image preprocessing."""

    model: CLIPModel
    tokenizer: CLIPTokenizer
    processor: CLIPImageProcessor

    @property
    def max_tokens(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def check_clip_folder(uri: str) -> None:
    """Raise CheckpointError unless `uri` looks like a CLIPModel folder (reads no weights)."""
    missing = [f for f in ("config.json", "preprocessor_config.json") if not storage.exists(storage.join(uri, f))]
    if missing:
        raise CheckpointError(f"--clip {uri}: not a transformers CLIPModel folder (missing {', '.join(missing)}); "
                              "give a local copy of e.g. openai/clip-vit-large-patch14")


def load_clip(uri: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Clip:
    """Load a transformers CLIPModel folder (local or any fsspec URI, copied to a local cache once)."""
    check_clip_folder(uri)
    local = cache.localize(uri)
    try:
        model = CLIPModel.from_pretrained(local, torch_dtype=dtype, local_files_only=True).to(device).eval()
        tokenizer = CLIPTokenizer.from_pretrained(local, local_files_only=True)
        processor = CLIPImageProcessor.from_pretrained(local, local_files_only=True)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"--clip {uri}: could not load CLIP ({str(e).splitlines()[0][:300]})") from None
    return Clip(model, tokenizer, processor)


def pixel_values(clip: Clip, frames: np.ndarray) -> torch.Tensor:
    """CLIP's own preprocessing (resize, center crop, normalize) of ``(n, h, w, 3) uint8`` -> ``(n, 3, s, s)``."""
    return clip.processor(images=list(frames), return_tensors="pt")["pixel_values"]


@torch.no_grad()
def embed_pixels(clip: Clip, pixels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """``(n, 3, s, s)`` preprocessed images -> ``(n, d)`` normalized embeddings (CLIPModel's ``image_embeds``)."""
    dtype = next(clip.model.parameters()).dtype
    out = []
    for start in range(0, len(pixels), batch_size):
        chunk = pixels[start : start + batch_size].to(clip.device, dtype)
        pooled = clip.model.vision_model(pixel_values=chunk).pooler_output
        out.append(clip.model.visual_projection(pooled).float().cpu())
    emb = torch.cat(out) if out else torch.zeros(0, clip.model.config.projection_dim)
    return torch.nn.functional.normalize(emb, dim=-1)


@torch.no_grad()
def embed_texts(clip: Clip, texts: list[str]) -> tuple[torch.Tensor, list[int]]:
    """``(n, d)`` normalized text embeddings (CLIPModel's ``text_embeds``) and each text's token count
    before truncation (start and end tokens included); counts above ``clip.max_tokens`` were truncated."""
    counts = [len(ids) for ids in clip.tokenizer(texts)["input_ids"]]
    enc = clip.tokenizer(texts, padding=True, truncation=True, max_length=clip.max_tokens, return_tensors="pt")
    pooled = clip.model.text_model(input_ids=enc["input_ids"].to(clip.device),
                                   attention_mask=enc["attention_mask"].to(clip.device)).pooler_output
    emb = clip.model.text_projection(pooled).float().cpu()
    return torch.nn.functional.normalize(emb, dim=-1), counts


def text_alignment(frame_emb: torch.Tensor, text_emb: torch.Tensor) -> float:
    """``(f, d)`` frames, ``(d,)`` prompt -> CLIPScore in [0, 100]."""
    return max(0.0, 100.0 * float((frame_emb @ text_emb).mean()))


def frame_consistency(frame_emb: torch.Tensor) -> float:
    """Mean cosine of consecutive frames, ``(f, d)`` -> [-1, 1]; NaN for one frame."""
    if len(frame_emb) < 2:
        return float("nan")
    return float((frame_emb[1:] * frame_emb[:-1]).sum(-1).mean())


def frame_consistency_all_pairs(frame_emb: torch.Tensor) -> float:
    """Mean cosine over all frame pairs ``i < j``; NaN for one frame."""
    f = len(frame_emb)
    if f < 2:
        return float("nan")
    sim = frame_emb @ frame_emb.T
    i, j = torch.triu_indices(f, f, offset=1)
    return float(sim[i, j].mean())


def motion_pixel(frames: np.ndarray) -> float:
    """Mean absolute difference of consecutive ``(f, h, w, 3) uint8`` frames, in 0-255; NaN for one frame."""
    if len(frames) < 2:
        return float("nan")
    total = sum(float(np.abs(frames[t + 1].astype(np.int16) - frames[t]).mean()) for t in range(len(frames) - 1))
    return total / (len(frames) - 1)


def temporal_flicker(frames: np.ndarray) -> float:
    """``1 - motion_pixel / 255``: 1.0 for a still video, lower as consecutive frames differ more."""
    return 1.0 - motion_pixel(frames) / 255.0


def domain_similarity(frame_emb: torch.Tensor, still_emb: torch.Tensor | None) -> float:
    """Mean cosine between ``(f, d)`` frames and the ``(d,)`` still of the same checkpoint, prompt and seed."""
    return float("nan") if still_emb is None else float((frame_emb @ still_emb).mean())


def image_alignment(frame_emb: torch.Tensor, reference_emb: torch.Tensor | None) -> float:
    """Mean cosine between ``(f, d)`` frames and the ``(r, d)`` reference images of the row's image prompt."""
    return float("nan") if reference_emb is None else float((frame_emb @ reference_emb.T).mean())


def score_videos(clip: Clip, videos: list[np.ndarray], prompts: list[str],
                 stills: list[np.ndarray | None] | None = None, batch_size: int = 64, raft: Raft | None = None,
                 references: list[list[np.ndarray] | None] | None = None) -> list[dict]:
    """The CLIP metrics of each video: one dict per video with the CLIP_METRICS keys plus ``prompt_tokens``
    and ``prompt_truncated``. All frames (and stills, and reference images) of all videos go through CLIP in
    batches of ``batch_size``; each distinct prompt is encoded once. ``stills[i]`` is ``(h, w, 3) uint8`` or
    None; ``references[i]`` the ``(h, w, 3) uint8`` images of the video's image prompt, or None.
    ``motion_flow`` is NaN without `raft`.
    """
    stills = stills if stills is not None else [None] * len(videos)
    references = references if references is not None else [None] * len(videos)
    images = [v for v in videos] + [s[None] for s in stills if s is not None] + [im[None] for refs in references for im in refs or []]
    emb = embed_pixels(clip, torch.cat([pixel_values(clip, x) for x in images]), batch_size) if images else None
    unique = {p: k for k, p in enumerate(dict.fromkeys(prompts))}
    text_emb, counts = embed_texts(clip, list(unique)) if unique else (None, [])
    results, offset = [], 0
    still_offset = sum(len(v) for v in videos)
    ref_offset = still_offset + sum(s is not None for s in stills)
    for video, prompt, still, refs in zip(videos, prompts, stills, references):
        frame_emb = emb[offset : offset + len(video)]
        offset += len(video)
        still_emb = None
        if still is not None:
            still_emb, still_offset = emb[still_offset], still_offset + 1
        ref_emb = emb[ref_offset : ref_offset + len(refs)] if refs else None
        ref_offset += len(refs or [])
        k = unique[prompt]
        motion = motion_pixel(video)
        results.append({
            "text_alignment": text_alignment(frame_emb, text_emb[k]),
            "frame_consistency": frame_consistency(frame_emb),
            "frame_consistency_all_pairs": frame_consistency_all_pairs(frame_emb),
            "temporal_flicker": 1.0 - motion / 255.0,
            "motion_pixel": motion,
            "motion_flow": motion_flow(raft, video) if raft is not None else float("nan"),
            "domain_similarity": domain_similarity(frame_emb, still_emb),
            "image_alignment": image_alignment(frame_emb, ref_emb),
            "prompt_tokens": counts[k],
            "prompt_truncated": counts[k] > clip.max_tokens,
        })
    return results
