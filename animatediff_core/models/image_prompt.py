"""Image prompts: IP-Adapter (Ye et al. 2023, tencent-ailab/IP-Adapter) on a loaded AnimateDiff pipeline.

An IP-Adapter file in the released layout (`ip-adapter_sd15.safetensors`, `.bin`: the same keys as nested dicts)
holds two parts, used with a CLIP vision encoder (`CLIPVisionModelWithProjection`, `image_encoder/`):
- `image_proj.*`: CLIP image features -> a few extra context tokens. Variants, told apart by their keys as
  diffusers tells them: `base` (`proj`, `norm`: CLIP's pooled, projected `image_embeds` -> 4 tokens), `plus`
  (`latents`, `proj_in`, `layers`, ...: a perceiver resampler over CLIP's penultimate hidden states -> 16
  tokens; also the plus-face files) and `full` (`proj.0` ... `proj.3`: an MLP over the hidden states; full-face);
- `ip_adapter.N.to_k_ip.weight`, `.to_v_ip.weight`: a key and a value projection of those tokens for every
  cross-attention of the image UNet, numbered as the original code numbers the UNet's attention processors
  (N = 1, 3, 5, ...: each cross-attention follows a self-attention). The motion modules are not counted.
diffusers' `load_ip_adapter` turns them into its decoupled cross-attention (`IPAdapterAttnProcessor2_0`: text
attention + scale x attention over the image tokens) and `MultiIPAdapterImageProjection`; here the files are read
safely (`checkpoints.load_state_dict`: a pickle that would run code is refused), checked against the base from
shapes alone (`check_fits`, before any weight moves), and handed to that loader as a state dict.

`ImagePrompt` is one adapter and its encoder, loaded once per actor. `attach(pipe)` puts the adapter into a
pipeline (again when an actor rebuilds its pipeline for a motion module of another shape); its layers then stay
across checkpoint, motion-module and motion-LoRA switches: DreamBooth loads and base restores leave its keys
alone (`is_adapter_param`), motion-module loads touch only the motion modules. Rows without an image prompt
run inside `text_only(pipe)`: plain cross-attention and no image projection, so their videos are those of a
pipeline without the adapter. `embeds` reads and encodes each distinct image prompt once (a small cache), as
diffusers' `encode_image` encodes it: `(1, n, d)` pooled embeddings (base) or `(1, n, 257, d)` penultimate hidden
states (plus, full) for the n images of the prompt, with the unconditional ones (zeros; the encoding of a black
image for plus and full) that classifier-free guidance pairs with them. The n images' tokens sit side by side in
every image attention (diffusers' way with a list of images for one adapter).
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from animatediff_core.io import bounded, cache, hub, storage
from animatediff_core.io.checkpoints import check_keys, load_state_dict
from animatediff_core.configs import need
from animatediff_core.errors import CheckpointError, ConfigError
from animatediff_core.models.motion_formats import _header_shapes
from animatediff_core.settings.generation import FAMILY_NAMES, family_of, parse_image_prompt

ADAPTER_EXTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
ENCODER_FILES = ["*.json", "*.safetensors"]  # what an image-encoder folder needs from a Hub repo (not its .bin twin)
ENCODER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
CACHE = 8  # encoded image prompts kept per actor
# The layer that ends each variant's projection (its width is the UNet's cross-attention width), and its input.
VARIANTS = {"base": ("norm.weight", "proj.weight"), "plus": ("norm_out.weight", "proj_in.weight"),
            "full": ("proj.3.weight", "proj.0.weight")}


def is_adapter_param(name: str) -> bool:
    """Whether a UNet state-dict key belongs to a loaded IP-Adapter (its image attention or image projection)."""
    return ".processor.to_k_ip." in name or ".processor.to_v_ip." in name or name.startswith("encoder_hid_proj.")


# -- files ------------------------------------------------------------------------------------------------


def adapter_file(uri: str) -> str:
    """Where the adapter's weights are: the file itself, or the one adapter file in a folder."""
    where = hub.resolve(uri, ["*.safetensors", "*.bin"])
    if not storage.exists(where):
        raise CheckpointError(f"--ip-adapter {uri}: not found (expected an IP-Adapter .safetensors/.bin file, e.g. "
                              "ip-adapter_sd15.safetensors, a folder holding one, or a Hub id of the file)")
    if not storage.isdir(where):
        return where
    fs, path = storage.fs_and_path(where)
    files = sorted(f for f in fs.ls(path, detail=False) if f.lower().endswith(ADAPTER_EXTS))
    need(len(files) == 1, f"--ip-adapter {uri}: a folder must hold exactly one adapter file ({'/'.join(ADAPTER_EXTS)}), found "
         f"{', '.join(f.rsplit('/', 1)[-1] for f in files) or 'none'}; name the file")
    return storage.join(where, files[0].rsplit("/", 1)[-1])


def default_encoder(adapter: str) -> str | None:
    """The `image_encoder/` folder beside an adapter file (the h94/IP-Adapter layout: models/, sdxl_models/)."""
    parsed = hub.parse(adapter)
    if parsed is not None:
        repo, path = parsed
        folder = path.rsplit("/", 1)[0] if "/" in path and path.lower().endswith(ADAPTER_EXTS) else \
            ("" if path.lower().endswith(ADAPTER_EXTS) else path.rstrip("/"))
        return "/".join(p for p in (repo, folder, "image_encoder") if p)
    if adapter.startswith(("http://", "https://")):
        return None
    if storage.exists(adapter) and storage.isdir(adapter):
        return storage.join(adapter.rstrip("/"), "image_encoder")
    folder = adapter.rsplit("/", 1)[0] if "://" in adapter else os.path.dirname(adapter)
    return storage.join(folder or ".", "image_encoder")


def adapter_shapes(uri: str) -> dict[str, torch.Tensor]:
    """`{key: meta tensor}` of an adapter file, its weights unread where the format allows (a safetensors header)."""
    where = adapter_file(uri)
    if where.lower().endswith(".safetensors"):
        return _header_shapes(where)
    return {k: v.to("meta") for k, v in load_state_dict(where, nested=True).items()}


@dataclass(frozen=True)
class AdapterWeights:
    """One IP-Adapter's weights in the released layout, without the `image_proj.` / `ip_adapter.` prefixes."""

    uri: str
    variant: str  # base | plus | full
    image_proj: dict[str, torch.Tensor]
    layers: dict[str, torch.Tensor]

    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        """The nested state dict diffusers' `load_ip_adapter` takes."""
        return {"image_proj": dict(self.image_proj), "ip_adapter": dict(self.layers)}


def read_adapter(uri: str) -> AdapterWeights:
    state = load_state_dict(adapter_file(uri), nested=True)
    variant = variant_of(state, uri)  # refuses what is not an IP-Adapter of a supported variant, naming the file
    return AdapterWeights(uri, variant, {k[len("image_proj."):]: v for k, v in state.items() if k.startswith("image_proj.")},
                          {k[len("ip_adapter."):]: v for k, v in state.items() if k.startswith("ip_adapter.")})


def variant_of(shapes: dict, uri: str) -> str:
    """base | plus | full, from the keys (flat, `image_proj.`/`ip_adapter.` prefixed); CheckpointError otherwise."""
    proj = {k[len("image_proj."):] for k in shapes if k.startswith("image_proj.")}
    layers = [k for k in shapes if k.startswith("ip_adapter.")]
    if not proj or not layers:
        raise CheckpointError(f"--ip-adapter {uri}: not an IP-Adapter: expected the released layout's image_proj.* and "
                              f"ip_adapter.* keys, found e.g. {sorted(shapes)[:3]}")
    if any("lora" in k for k in layers) or any(k.startswith("perceiver_resampler.") for k in proj) or \
            ("norm.weight" in proj and "proj.weight" not in proj):
        raise CheckpointError(f"--ip-adapter {uri}: an IP-Adapter FaceID file: it takes face embeddings from insightface, "
                              "which this job does not compute; use an IP-Adapter or IP-Adapter-plus file")
    if "proj.weight" in proj:
        return "base"
    if "proj.3.weight" in proj:
        return "full"
    if "latents" in proj:
        return "plus"
    raise CheckpointError(f"--ip-adapter {uri}: an image projection this job does not know (keys like "
                          f"{sorted(proj)[:3]}); expected IP-Adapter, IP-Adapter-plus or full-face files")


def expected_layers(unet) -> dict[str, tuple[int, ...]]:
    """The `ip_adapter.N.to_k_ip/to_v_ip.weight` keys and shapes an adapter for `unet` holds (a UNet2DConditionModel or
    a UNetMotionModel, on any device, meta included): `(hidden, cross_attention_dim)` per cross-attention of the image
    model, numbered 1, 3, 5, ... in the UNet's processor order, hidden the width of its block (diffusers' rule)."""
    widths, cross = list(unet.config.block_out_channels), unet.config.cross_attention_dim
    need(isinstance(cross, int), f"IP-Adapter needs one cross-attention width for the whole UNet, got {cross}")
    out, n = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or "motion_modules" in name:
            continue
        level = int(name.split(".")[1]) if not name.startswith("mid_block") else None
        hidden = widths[-1] if level is None else (widths[::-1] if name.startswith("up_blocks") else widths)[level]
        for proj in ("to_k_ip", "to_v_ip"):
            out[f"ip_adapter.{n}.{proj}.weight"] = (hidden, cross)
        n += 2
    return out


def check_fits(shapes: dict, unet, uri: str) -> None:
    """CheckpointError (one line) unless the adapter with these `{key: tensor}` shapes fits `unet`'s cross-attentions."""
    variant = variant_of(shapes, uri)
    expected = expected_layers(unet)
    found = {k: v for k, v in shapes.items() if k.startswith("ip_adapter.")}
    width = tuple(shapes[f"image_proj.{VARIANTS[variant][0]}"].shape)[0]
    family = FAMILY_NAMES[family_of(dict(unet.config))]
    cross = unet.config.cross_attention_dim
    if width != cross or len(found) != len(expected):
        raise CheckpointError(f"--ip-adapter {uri}: does not fit this {family} base: the adapter has {len(found) // 2} "
                              f"cross-attention layers of width {width}, the base {len(expected) // 2} of width {cross} "
                              "(an SD-1.5 adapter needs an SD-1.x base, an SDXL adapter an SDXL base)")
    check_keys(expected, found, f"IP-Adapter for this {family} base", f"--ip-adapter {uri}")


def input_width(shapes: dict, uri: str) -> tuple[int, bool]:
    """(the CLIP feature width the adapter's projection takes, whether those are hidden states rather than the
    pooled, projected image embedding)."""
    variant = variant_of(shapes, uri)
    return int(tuple(shapes[f"image_proj.{VARIANTS[variant][1]}"].shape)[-1]), variant != "base"


def _encoder_folder(uri: str) -> str:
    where = hub.resolve(uri, ENCODER_FILES)
    if not storage.exists(storage.join(where, "config.json")):
        raise CheckpointError(f"--image-encoder {uri}: not a CLIP vision encoder folder (expected config.json and "
                              f"{' or '.join(ENCODER_WEIGHTS)}, as h94/IP-Adapter's models/image_encoder)")
    return where


def encoder_config(uri: str) -> CLIPVisionConfig:
    """The encoder folder's config (no weights read)."""
    local = cache.localize(_encoder_folder(uri))
    try:
        return CLIPVisionConfig.from_pretrained(local, local_files_only=True)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"--image-encoder {uri}: config.json is not a CLIP vision config ({str(e).splitlines()[0][:200]})") from None


def encoder_fits(config: CLIPVisionConfig, shapes: dict, uri: str) -> bool:
    width, hidden = input_width(shapes, uri)
    return (config.hidden_size if hidden else config.projection_dim) == width


def load_encoder(uri: str, dtype: torch.dtype = torch.float32) -> CLIPVisionModelWithProjection:
    """A CLIP vision encoder from a folder (config.json + model.safetensors, or a tensors-only pytorch_model.bin),
    its weights read by the safe loader and checked key by key."""
    folder = _encoder_folder(uri)
    weights = next((storage.join(folder, f) for f in ENCODER_WEIGHTS if storage.exists(storage.join(folder, f))), None)
    if weights is None:
        raise CheckpointError(f"--image-encoder {uri}: no weights ({' or '.join(ENCODER_WEIGHTS)}) beside config.json")
    model = CLIPVisionModelWithProjection(encoder_config(uri))
    state = {k: v for k, v in load_state_dict(weights).items() if not k.endswith("position_ids")}
    check_keys({k: tuple(v.shape) for k, v in model.state_dict().items()}, state, "CLIP vision encoder (CLIPVisionModelWithProjection)",
               f"--image-encoder {uri}")
    model.load_state_dict(state, strict=True)
    return model.to(dtype=dtype).eval()


def match(adapters: list[str], encoders: list[str], unet_configs: dict[str, dict]) -> dict[str, tuple[str, str]]:
    """`{family: (adapter, encoder)}`: for each base family of the job (`{family: UNet config}`), the first adapter that
    fits it, with the first encoder whose features it takes: of `encoders` when given, else the `image_encoder/`
    beside the adapter.
    Reads headers and configs only. CheckpointError (one line) for an adapter that fits no base or has no encoder."""
    from diffusers import UNet2DConditionModel  # here: a config check, on the meta device

    unets = {}
    for family, config in unet_configs.items():
        with torch.device("meta"):
            unets[family] = UNet2DConditionModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    out = {}
    for adapter in adapters:
        shapes, problems, fits = adapter_shapes(adapter), [], []
        for family, unet in unets.items():
            try:
                check_fits(shapes, unet, adapter)
                fits.append(family)
            except CheckpointError as e:
                problems.append(str(e))
        if not fits:
            raise CheckpointError(problems[0] if len(problems) == 1 else f"--ip-adapter {adapter}: fits none of the job's bases")
        candidates = encoders or ([default_encoder(adapter)] if default_encoder(adapter) else [])  # given: only those
        encoder = next((e for e in candidates if _exists(e) and encoder_fits(encoder_config(e), shapes, adapter)), None)
        if encoder is None:
            width, hidden = input_width(shapes, adapter)
            raise CheckpointError(f"--ip-adapter {adapter}: no image encoder for it: it takes CLIP {'hidden states' if hidden else 'image embeddings'} "
                                  f"of width {width}; give --image-encoder (a CLIPVisionModelWithProjection folder) "
                                  f"(looked at: {', '.join(map(str, candidates)) or 'none'})")
        for family in fits:
            out.setdefault(family, (adapter, encoder))
    return out


def _exists(uri: str) -> bool:
    try:
        return storage.exists(storage.join(hub.resolve(uri, ENCODER_FILES), "config.json"))
    except CheckpointError:  # a Hub id neither cached nor reachable
        return False


# -- images -------------------------------------------------------------------------------------------


def read_images(text: str) -> list[np.ndarray]:
    """The `(h, w, 3) uint8` images of an `ip_adapter_image` cell (one URI or a JSON list), each read through the
    bounded reader (`bounded.py`: allow-listed places, regular files, --max-image-mb, time-outs). The one place
    image prompts are read: ConfigError naming the image for a missing, refused or undecodable one."""
    out = []
    for uri in parse_image_prompt(text):
        try:
            data = bounded.read_bytes(uri, "image", "ip_adapter_image")
            with Image.open(io.BytesIO(data)) as im:
                out.append(np.asarray(im.convert("RGB")))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ConfigError(f"ip_adapter_image {uri}: not a readable image ({type(e).__name__}: {str(e)[:200]})") from None
    return out


@dataclass(frozen=True)
class ImageEmbeds:
    """One image prompt, encoded: `(1, n, d)` (base) or `(1, n, tokens, d)` (plus, full) for its n images, and the
    unconditional twin for classifier-free guidance. The pipeline repeats them for every row of a call."""

    positive: torch.Tensor
    negative: torch.Tensor

    def pipeline_input(self, guidance: bool) -> list[torch.Tensor]:
        """diffusers' `ip_adapter_image_embeds` (one adapter): negative then positive under guidance."""
        return [torch.cat([self.negative, self.positive]) if guidance else self.positive]


class ImagePrompt:
    """One IP-Adapter and its image encoder, loaded once, for every pipeline an actor builds."""

    def __init__(self, adapter: str, encoder: str, device="cpu", dtype: torch.dtype = torch.float32, cache: int = CACHE):
        self.uri, self.encoder_uri = adapter, encoder
        self.weights = read_adapter(adapter)
        self.shapes = {f"{p}.{k}": v.to("meta") for p, part in self.weights.state().items() for k, v in part.items()}
        self.encoder = load_encoder(encoder, dtype).to(device)
        if not encoder_fits(self.encoder.config, self.shapes, adapter):
            width, hidden = input_width(self.shapes, adapter)
            raise CheckpointError(f"--image-encoder {encoder}: does not fit --ip-adapter {adapter} (it takes CLIP "
                                  f"{'hidden states' if hidden else 'image embeddings'} of width {width})")
        side = self.encoder.config.image_size
        self.processor = CLIPImageProcessor(size=side, crop_size=side)  # what diffusers' load_ip_adapter gives a pipeline
        self.cache: OrderedDict[str, ImageEmbeds] = OrderedDict()
        self.size = cache

    def attach(self, pipe) -> None:
        """Load the adapter into `pipe`'s UNet with diffusers' loader (after a shape check naming the file)."""
        check_fits(self.shapes, pipe.unet, self.uri)
        pipe.register_modules(image_encoder=self.encoder, feature_extractor=self.processor)
        try:
            pipe.load_ip_adapter(self.weights.state(), subfolder="", weight_name="")
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"--ip-adapter {self.uri}: could not load ({str(e).splitlines()[0][:300]})") from None

    @torch.no_grad()
    def embeds(self, pipe, text: str) -> ImageEmbeds:
        """The image prompt `text` (an `ip_adapter_image` cell) read and encoded once, then from the cache."""
        if text not in self.cache:
            images = [Image.fromarray(im) for im in read_images(text)]
            hidden = self.weights.variant != "base"
            positive, negative = pipe.encode_image(images, self.encoder.device, 1, hidden)  # diffusers' encoding
            while len(self.cache) >= self.size:
                self.cache.popitem(last=False)
            self.cache[text] = ImageEmbeds(positive[None], negative[None])
        self.cache.move_to_end(text)
        return self.cache[text]


def has_adapter(pipe) -> bool:
    unet = pipe.unet
    return getattr(unet, "encoder_hid_proj", None) is not None and unet.config.encoder_hid_dim_type == "ip_image_proj"


@contextmanager
def text_only(pipe):
    """Inside: `pipe`'s UNet without its IP-Adapter (plain cross-attention processors, no image projection), the
    adapter's modules kept aside and put back on exit. A no-op for a pipeline without an adapter."""
    from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0

    if not has_adapter(pipe):
        yield
        return
    unet = pipe.unet
    kept = {name: m.processor for name, m in unet.named_modules()
            if isinstance(getattr(m, "processor", None), (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0))}
    projection = unet.encoder_hid_proj
    for name in kept:
        unet.get_submodule(name).set_processor(AttnProcessor2_0())
    unet.encoder_hid_proj = None
    unet.config.encoder_hid_dim_type = None
    try:
        yield
    finally:
        for name, processor in kept.items():
            unet.get_submodule(name).set_processor(processor)
        unet.encoder_hid_proj = projection
        unet.config.encoder_hid_dim_type = "ip_image_proj"
