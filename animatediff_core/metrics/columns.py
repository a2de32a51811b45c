"""The per-video metric columns of evaluation, their ranges, and which are VBench's dimensions.

Plain Python (no torch): job configs read the names without loading models. The CLIP metrics are
defined in `metrics.py`, VBench's in `vbench.py`.
"""

CLIP_METRICS = ("text_alignment", "frame_consistency", "frame_consistency_all_pairs", "temporal_flicker",
                "motion_pixel", "motion_flow", "domain_similarity", "image_alignment")
VBENCH_DIMENSIONS = ("subject_consistency", "background_consistency", "temporal_flickering", "dynamic_degree",
                     "aesthetic_quality")
VBENCH_COLUMNS = (*VBENCH_DIMENSIONS, "static_filter")  # static_filter: VBench's static-filter verdict (1 = kept)
METRICS = (*CLIP_METRICS, *VBENCH_COLUMNS)  # every per-video metric column
# Each column's range (None: unbounded on that side); intervals are kept inside it. Binary columns are 0/1 per video.
RANGES = {"text_alignment": (0.0, 100.0), "frame_consistency": (-1.0, 1.0), "frame_consistency_all_pairs": (-1.0, 1.0),
          "temporal_flicker": (0.0, 1.0), "motion_pixel": (0.0, 255.0), "motion_flow": (0.0, None),
          "domain_similarity": (-1.0, 1.0), "image_alignment": (-1.0, 1.0), "subject_consistency": (0.0, 1.0), "background_consistency": (0.0, 1.0),
          "temporal_flickering": (0.0, 1.0), "dynamic_degree": (0.0, 1.0), "aesthetic_quality": (None, None),
          "static_filter": (0.0, 1.0)}
BINARY = ("dynamic_degree", "static_filter")
