"""A real CLIP BPE tokenizer built offline.

SD-1.x uses OpenAI CLIP's byte-level BPE (49408 tokens). We ship OpenAI's merges file
(`assets/bpe_simple_vocab_16e6.txt.gz`, MIT, as distributed by open_clip) and derive the
`vocab.json` / `merges.txt` pair that `transformers.CLIPTokenizer` reads, exactly as
open_clip's `SimpleTokenizer` builds its vocabulary. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import json
import os
from functools import lru_cache
from pathlib import Path

BPE_PATH = Path(__file__).parents[1] / "assets" / "bpe_simple_vocab_16e6.txt.gz"
MODEL_MAX_LENGTH = 77


@lru_cache()
def _bytes_to_unicode() -> dict[int, str]:
    # Same table as GPT-2 / CLIP: printable bytes map to themselves, the rest to code points >= 256.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """Vocabulary (token -> id, 49408 entries) and merge rules ("a b" strings) of OpenAI CLIP."""
    lines = gzip.open(BPE_PATH).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def write_clip_tokenizer(out_dir: str | os.PathLike) -> None:
    """Write a CLIPTokenizer folder (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MODEL_MAX_LENGTH,
              "do_lower_case": True, **special}
    (out / "tokenizer_config.json").write_text(json.dumps(config))
