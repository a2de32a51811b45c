"""Personalized SD-1.x checkpoints on a loaded AnimateDiff pipeline: stacks, switched in place.

A checkpoint (`settings.CheckpointSpec`) is a stack, built as the official AnimateDiff's `load_weights`
builds it (guoyww/AnimateDiff `animatediff/utils/util.py`: DreamBooth, then LoRA, then the domain adapter):
- a DreamBooth single file (`model.diffusion_model.*`, `cond_stage_model.*`, LDM keys, converted with
  diffusers' converters) or the base. Its UNet and text-encoder weights replace the base's, and so does
  its VAE when the file holds one (`first_stage_model.*`), as the official loader and diffusers'
  `from_single_file` do; `vae="base"` keeps the base's, a URI loads another (a diffusers AutoencoderKL
  folder, or one file with LDM or diffusers keys);
- LoRAs, each with its weight: kohya/A1111 keys (`lora_unet_*`, `lora_te_*`, `.lora_down/.lora_up/.alpha`)
  or diffusers/peft keys, loaded by diffusers' `load_lora_weights` as peft adapters over the current
  weights. `alpha="file"` honours the file's alpha (scale x alpha/rank, kohya's convention);
  `alpha="ignore"` merges scale x up @ down as the official `convert_lora` does (`lora_alpha`);
- the v3 domain adapter (`v3_sd15_adapter.ckpt`: the original `*.processor.to_q_lora.down.weight` layout on
  the spatial attention), a peft adapter at `adapter_scale` (the official `load_diffusers_lora`: scale x up @ down).
A motion LoRA (`apply_motion_lora`: camera motions, or what `jobs.train --motion-lora` writes) stacks on top
as one more adapter on the motion modules' attention, whatever the checkpoint.

Switching is incremental: stacks that share a DreamBooth file load it once and only their LoRAs change;
a LoRA shared by two stacks stays loaded; leaving a DreamBooth or its VAE restores the base's weights
exactly from an in-memory copy. A loaded IP-Adapter (image_prompt.py) is no part of a checkpoint: its
layers stay in place through every switch and restore. Every switch runs inside `speed.weights_change`,
so fused projections (`--fuse-qkv`) follow the new weights. A stack that fails to load leaves the pipeline on its base.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from diffusers import AnimateDiffPipeline, AutoencoderKL
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from peft.tuners.tuners_utils import BaseTunerLayer

from animatediff_core.io import bounded, cache, hub, storage
from animatediff_core.io.checkpoints import check_keys, load_state_dict
from animatediff_core.errors import CheckpointError
from animatediff_core.models.image_prompt import is_adapter_param
from animatediff_core.models.inflate import is_motion_param
from animatediff_core.models.ldm_keys import SDXL_CLIP_PREFIX, SDXL_OPEN_CLIP_PREFIX, VAE_PREFIX, align_text_keys
from animatediff_core.models.motion_lora import adapter_to_diffusers_keys, to_diffusers_keys
from animatediff_core.settings.generation import CheckpointSpec, LoraSpec, family_of
from animatediff_core.models.speed import weights_change

BASE = "base"
MOTION = "motion_lora"  # peft adapter name of the motion LoRA


def detect_kind(state: dict[str, torch.Tensor], uri: str = "") -> str:
    keys = list(state)
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "dreambooth"
    if any(("lora_down" in k or "lora_up" in k or "lora_A" in k or "lora_B" in k or "lora.down" in k) for k in keys):
        return "lora"
    raise CheckpointError(
        f"{uri}: not a recognized SD-1.x personalized checkpoint: expected DreamBooth single-file keys "
        f"('model.diffusion_model.*') or LoRA keys ('lora_unet_*.lora_down.weight', '*.lora_A.weight'); "
        f"found e.g. {keys[:3]}"
    )


def _adapter_name(kind: str, uri: str, alpha: str = "file") -> str:
    return f"{kind}_{hashlib.sha256(f'{uri}|{alpha}'.encode()).hexdigest()[:12]}"


class Personalizer:
    """Applies one checkpoint stack at a time to `pipe` (whose base weights it owns)."""

    def __init__(self, pipe: AnimateDiffPipeline):
        self.pipe = pipe
        self.current: CheckpointSpec | None = None
        self._base_copy: dict[str, dict[str, torch.Tensor]] = {}  # part -> CPU copy of the base's weights
        self._dirty: set[str] = set()  # parts holding other weights than the base's
        self._dreambooth: str | None = None  # the DreamBooth file whose UNet and text weights are loaded
        self.vae: str = BASE  # where the loaded VAE came from: "base", a DreamBooth file or a VAE's URI
        self._kinds: dict[str, str] = {}  # uri -> dreambooth | lora, learnt on first read
        self._has_vae: dict[str, bool] = {}  # DreamBooth uri -> whether the file holds a VAE
        self._scales: dict[str, float] = {}  # loaded peft adapter -> weight (image LoRAs, the domain adapter, MOTION)
        self.motion_lora: tuple[str, float] | None = None  # (uri, scale) of the stacked motion LoRA

    def apply(self, spec: CheckpointSpec) -> None:
        """Make the stack `spec` the active checkpoint, changing only what differs from the current one."""
        if spec == self.current:
            return
        with weights_change(self.pipe):  # speed options (fused projections) refitted to the new weights after
            self.current = None
            try:
                state = load_state_dict(spec.uri) if spec.uri and spec.uri not in self._kinds else None
                kind = self._kind(spec, state)
                dreambooth = spec.uri if kind == "dreambooth" else None
                wanted = self._wanted(spec, kind)
                if dreambooth != self._dreambooth:
                    for name in [n for n in self._scales if n != MOTION]:  # LoRAs sit on the weights being replaced
                        self._drop(name)
                    self._set_dreambooth(dreambooth, state)
                self._set_vae(self._vae_source(spec, dreambooth), state)
                for name in [n for n in self._scales if n != MOTION and n not in wanted]:
                    self._drop(name)
                read = {spec.uri: state} if kind == "lora" and state is not None else {}  # the file, read once
                for name, (load, weight) in wanted.items():
                    if name not in self._scales:
                        self._load_adapter(name, load, weight, read)
                    self._scales[name] = weight
                self._set_adapters()
            except Exception:
                self.reset()
                raise
            self.current = spec

    def _kind(self, spec: CheckpointSpec, state: dict | None) -> str:
        if not spec.uri:
            return BASE
        if spec.uri not in self._kinds:
            self._kinds[spec.uri] = detect_kind(state, spec.uri)
        kind = self._kinds[spec.uri]
        if spec.kind and spec.kind != kind:
            raise CheckpointError(f"{spec.uri}: declared kind {spec.kind!r} but the keys are those of a {kind} checkpoint")
        return kind

    def _wanted(self, spec: CheckpointSpec, kind: str) -> dict[str, tuple]:
        """Adapter name -> (how to load it, weight) for every LoRA of the stack and its domain adapter."""
        loras = ((LoraSpec(spec.uri, spec.scale),) if kind == "lora" else ()) + tuple(spec.loras)
        out = {}
        for lora in loras:
            name = _adapter_name("lora", lora.uri, lora.alpha)
            out[name] = (("lora", lora), out[name][1] + lora.scale if name in out else lora.scale)
        if spec.adapter:
            out[_adapter_name("adapter", spec.adapter)] = (("adapter", spec.adapter), spec.adapter_scale)
        return out

    def apply_motion_lora(self, uri: str | None, scale: float = 1.0) -> None:
        """Stack the motion LoRA at `uri` (None: none) with weight `scale` over the active checkpoint.
        A file that fails to load leaves no motion LoRA."""
        want = (uri, float(scale)) if uri else None
        if want == self.motion_lora:
            return
        with weights_change(self.pipe):
            if self.motion_lora is not None and (want is None or want[0] != self.motion_lora[0]):
                self._drop(MOTION)
                self.motion_lora = None
            if want is not None:
                if MOTION not in self._scales:
                    self._load_adapter(MOTION, ("motion", uri), want[1])
                self._scales[MOTION] = want[1]
                self.motion_lora = want
            self._set_adapters()

    def reset(self) -> None:
        """Back to the plain base weights (no checkpoint, no LoRA, no motion LoRA)."""
        with weights_change(self.pipe):
            for name in list(self._scales):
                self._drop(name)
            self.motion_lora = None
            self._set_dreambooth(None, None)
            self._set_vae(BASE, None)
            self.current = None

    # -- adapters ---------------------------------------------------------------------------------

    def _load_adapter(self, name: str, load: tuple, weight: float, read: dict | None = None) -> None:
        """Load one LoRA (`("lora", LoraSpec)`), domain adapter (`("adapter", uri)`) or motion LoRA
        (`("motion", uri)`) as the peft adapter `name`; CheckpointError naming the file when it does not fit."""
        kind, what = load
        uri = what.uri if kind == "lora" else what
        state = (read or {}).get(uri) or load_state_dict(uri, kind="lora")  # a path, URI or Hub id; bounded (bounded.py)
        if kind == "lora":
            if self._kinds.setdefault(uri, detect_kind(state, uri)) != "lora":
                raise CheckpointError(f"{uri}: listed as a LoRA, but the keys are those of a DreamBooth checkpoint")
            if what.alpha == "ignore":  # the official merge: scale x up @ down (peft then takes alpha = rank)
                state = {k: v for k, v in state.items() if not k.endswith(".alpha")}
        elif kind == "adapter":
            state = adapter_to_diffusers_keys(state, uri)
        else:
            state = to_diffusers_keys(state, uri)
        self._scales[name] = weight  # set first: a half-loaded adapter is deleted on failure
        what_ = {"lora": "LoRA", "adapter": "domain adapter", "motion": "motion LoRA"}[kind]
        target = "this motion module" if kind == "motion" else "this base"
        try:
            self.pipe.load_lora_weights(state, adapter_name=name)
        except (ValueError, KeyError, RuntimeError) as e:
            self._drop(name)
            raise CheckpointError(f"{uri}: {what_} does not fit {target} ({str(e).splitlines()[0][:300]})") from None
        if name not in self._present():  # diffusers skips keys it cannot place: a file of nothing it uses
            self._drop(name)
            raise CheckpointError(f"{uri}: {what_} holds no weights {target} has (keys like {next(iter(state))!r})")

    def _present(self) -> set[str]:
        return {a for names in self.pipe.get_list_adapters().values() for a in names}

    def _drop(self, adapter: str) -> None:
        """Remove one adapter; the last one out removes the LoRA layers, leaving the plain modules."""
        self._scales.pop(adapter, None)
        if self._scales:
            if adapter in self._present():  # a load that failed early left nothing to delete
                self.pipe.delete_adapters([adapter])
            for part in ("unet", *self._text_parts):
                _unwrap_empty_lora_layers(getattr(self.pipe, part))
            self._set_adapters()
        else:
            self.pipe.unload_lora_weights()

    def _set_adapters(self) -> None:
        if self._scales:
            try:
                self.pipe.set_adapters(list(self._scales), adapter_weights=list(self._scales.values()))
            except ValueError as e:  # an adapter diffusers lost track of: a bug, but one this checkpoint can report
                raise CheckpointError(f"could not activate the checkpoint's LoRAs ({str(e).splitlines()[0][:300]})") from None

    # -- full weights: DreamBooth and VAE -----------------------------------------------------------

    def _keep_base(self, part: str) -> None:
        if part not in self._base_copy:
            module = getattr(self.pipe, part)
            self._base_copy[part] = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()
                                     if not is_motion_param(k) and not is_adapter_param(k)}

    def _restore_base(self, parts: tuple[str, ...]) -> None:
        for part in parts:
            if part in self._dirty:
                getattr(self.pipe, part).load_state_dict(self._base_copy[part], strict=part != "unet")
                self._dirty.discard(part)

    @property
    def _text_parts(self) -> tuple[str, ...]:
        return ("text_encoder", "text_encoder_2") if getattr(self.pipe, "text_encoder_2", None) is not None else ("text_encoder",)

    def _set_dreambooth(self, uri: str | None, state: dict | None) -> None:
        if uri == self._dreambooth:
            return
        self._dreambooth = None
        if uri is None:
            self._restore_base(("unet", *self._text_parts))
            return
        state = state if state is not None else load_state_dict(uri)
        unet = self.pipe.unet
        xl = family_of(dict(unet.config)) == "sdxl"
        if any(k.startswith(SDXL_OPEN_CLIP_PREFIX) or k.startswith(SDXL_CLIP_PREFIX) for k in state) != xl:
            found, base = ("an SDXL", "an SD-1.x") if not xl else ("an SD-1.x", "an SDXL")
            raise CheckpointError(f"{uri}: {found} DreamBooth checkpoint cannot load on {base} base; give it a base of its "
                                  "family (the checkpoint table's `base` column)")
        try:
            unet_sd = convert_ldm_unet_checkpoint(state, dict(unet.config))
            texts = {"text_encoder": convert_ldm_clip_checkpoint(state)}
            if xl:
                texts["text_encoder_2"] = convert_open_clip_checkpoint(self.pipe.text_encoder_2, state, prefix=SDXL_OPEN_CLIP_PREFIX)
        except (KeyError, IndexError, ValueError) as e:
            raise CheckpointError(f"{uri}: DreamBooth checkpoint does not match this base's UNet ({type(e).__name__}: {e})") from None
        spatial = {k: tuple(v.shape) for k, v in unet.state_dict().items() if not is_motion_param(k) and not is_adapter_param(k)}
        check_keys(spatial, unet_sd, "UNet (DreamBooth single file)", uri)
        for part, text_sd in list(texts.items()):
            expected_text = {k: tuple(v.shape) for k, v in getattr(self.pipe, part).state_dict().items()}
            text_sd = align_text_keys(text_sd, set(expected_text))
            texts[part] = {k: v for k, v in text_sd.items() if k in expected_text or not k.endswith("position_ids")}
            if texts[part]:
                check_keys(expected_text, texts[part], f"CLIP text encoder (DreamBooth single file, {part})", uri)
        for part in ("unet", *texts):
            self._keep_base(part)
        dtype = next(unet.parameters()).dtype
        self._dirty.add("unet")
        unet.load_state_dict({k: v.to(dtype) for k, v in unet_sd.items()}, strict=False)
        for part, text_sd in texts.items():
            if text_sd:
                self._dirty.add(part)
                getattr(self.pipe, part).load_state_dict({k: v.to(dtype) for k, v in text_sd.items()}, strict=False)
            else:  # a UNet-only file: the text encoder is the base's
                self._restore_base((part,))
        self._has_vae[uri] = any(k.startswith(VAE_PREFIX) for k in state)
        self._dreambooth = uri

    def _vae_source(self, spec: CheckpointSpec, dreambooth: str | None) -> str:
        if spec.vae == "base" or (spec.vae == "own" and not (dreambooth and self._has_vae.get(dreambooth))):
            return BASE
        return dreambooth if spec.vae == "own" else spec.vae

    def _set_vae(self, source: str, state: dict | None) -> None:
        """Load the VAE from `source`: "base", a DreamBooth file (`state`, when already read) or a VAE's URI."""
        if source == self.vae:
            return
        self.vae = BASE
        if source == BASE:
            self._restore_base(("vae",))
            return
        vae = self.pipe.vae
        expected = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
        vae_sd = _read_vae(source, state if source == self._dreambooth else None, dict(vae.config))
        check_keys(expected, vae_sd, "SD-1.x VAE", source)
        self._keep_base("vae")
        self._dirty.add("vae")
        vae.load_state_dict({k: v.to(vae.dtype) for k, v in vae_sd.items()}, strict=True)
        self.vae = source


def _read_vae(uri: str, state: dict | None, config: dict) -> dict[str, torch.Tensor]:
    """A VAE's weights in diffusers keys, from a DreamBooth file's `first_stage_model.*`, a single VAE file
    (LDM keys with or without that prefix, or diffusers keys) or a diffusers AutoencoderKL folder."""
    where = hub.resolve(uri)
    if state is None and storage.isdir(where):
        try:
            local = cache.local_path(where, "model", "vae")  # a folder of regular files within the limit
        except bounded.InputError as e:
            raise CheckpointError(str(e)) from None
        try:
            return AutoencoderKL.from_pretrained(local, local_files_only=True).state_dict()
        except (OSError, ValueError) as e:
            raise CheckpointError(f"vae {uri}: not a diffusers AutoencoderKL folder ({str(e).splitlines()[0][:200]})") from None
    state = state if state is not None else load_state_dict(where)
    if any(k.startswith("decoder.up_blocks.") for k in state):  # diffusers keys already
        return state
    ldm = {k: v for k, v in state.items() if k.startswith(VAE_PREFIX)} or {VAE_PREFIX + k: v for k, v in state.items()}
    try:
        return convert_ldm_vae_checkpoint(ldm, config)
    except (KeyError, IndexError, ValueError) as e:
        raise CheckpointError(f"vae {uri}: not an SD-1.x VAE ({type(e).__name__}: {e}); expected "
                              f"{Path(uri).suffix or 'a'} file with LDM (encoder.down.*) or diffusers keys") from None


def _unwrap_empty_lora_layers(model: torch.nn.Module) -> None:
    """Put plain modules back where a deleted adapter was the only one: peft's `delete_adapter` leaves its
    wrapper layers in place (`.base_layer.weight` keys), which strict loads of the next checkpoint or
    motion module would refuse. Layers another adapter still uses stay wrapped."""
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer) and not any(len(getattr(module, n)) for n in module.adapter_layer_names):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
