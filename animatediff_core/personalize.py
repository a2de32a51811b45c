"""Personalized SD-1.x checkpoints on a loaded AnimateDiff pipeline.

Two kinds, detected from the keys:
- dreambooth: a full single-file LDM checkpoint (`model.diffusion_model.*`, `cond_stage_model.*`).
  Its UNet and text-encoder weights replace the base's; its VAE (if any) is ignored so the shared
  VAE stays loaded. Converted with diffusers' `convert_ldm_unet_checkpoint` / `convert_ldm_clip_checkpoint`.
- lora: kohya/A1111 keys (`lora_unet_*`, `lora_te_*`, `.lora_down/.lora_up/.alpha`, per-module alpha
  honoured as alpha/rank) or diffusers/peft keys (`unet.*.lora_A/lora_B`). Loaded through diffusers'
  `load_lora_weights` as a peft adapter on the base weights, scaled by the user's scale.

A motion LoRA (`apply_motion_lora`: camera motions, or what `jobs.train --motion-lora` writes) stacks
on top as a second peft adapter on the motion modules' attention, whatever the personalized checkpoint.

Switching never reloads the motion modules, VAE or tokenizer; switching between LoRAs leaves the
base weights untouched; leaving a DreamBooth restores the base from an in-memory copy. Every switch
runs inside `speed.weights_change`, so fused projections (`--fuse-qkv`) follow the new weights.
"""

from __future__ import annotations

import torch
from diffusers import AnimateDiffPipeline
from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint
from peft.tuners.tuners_utils import BaseTunerLayer

from .checkpoints import check_keys, load_state_dict
from .errors import CheckpointError
from .inflate import is_motion_param
from .ldm_keys import align_text_keys
from .motion_lora import to_diffusers_keys
from .settings import CheckpointSpec
from .speed import weights_change

BASE = "base"
PERSONALIZED, MOTION = "personalized", "motion_lora"  # peft adapter names


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


class Personalizer:
    """Applies one personalized checkpoint at a time to `pipe` (whose base weights it owns)."""

    def __init__(self, pipe: AnimateDiffPipeline):
        self.pipe = pipe
        self.current: CheckpointSpec | None = None
        self._base_copy: dict[str, dict[str, torch.Tensor]] | None = None
        self._dirty: set[str] = set()  # parts whose base weights a DreamBooth overwrote
        self._lora: str | None = None
        self._scales: dict[str, float] = {}  # loaded adapter -> its weight
        self.motion_lora: tuple[str, float] | None = None  # (uri, scale) of the stacked motion LoRA

    def apply(self, spec: CheckpointSpec) -> None:
        """Make `spec` the active checkpoint. A file that fails to load leaves the pipeline on its base."""
        if spec == self.current:
            return
        state = load_state_dict(spec.uri) if spec.uri else None
        kind = detect_kind(state, spec.uri) if state is not None else BASE
        if spec.kind and state is not None and spec.kind != kind:
            raise CheckpointError(f"{spec.uri}: declared kind {spec.kind!r} but the keys are those of a {kind} checkpoint")
        with weights_change(self.pipe):  # speed options (fused projections) refitted to the new weights after
            self._unload_lora()
            if kind != "dreambooth":  # a DreamBooth file overwrites every base weight it holds: no restore first
                self._restore_base()
            self.current = None
            try:
                if kind == "dreambooth":
                    self._load_dreambooth(state, spec.uri)
                elif kind == "lora":
                    self._load_lora(state, spec)
            except Exception:
                self.reset()
                raise
            self.current = spec

    def apply_motion_lora(self, uri: str | None, scale: float = 1.0) -> None:
        """Stack the motion LoRA at `uri` (None: none) with weight `scale` over the active checkpoint.
        A file that fails to load leaves no motion LoRA."""
        want = (uri, float(scale)) if uri else None
        if want == self.motion_lora:
            return
        with weights_change(self.pipe):
            self._apply_motion_lora(uri, want)

    def _apply_motion_lora(self, uri: str | None, want: tuple[str, float] | None) -> None:
        if self.motion_lora is not None and (want is None or want[0] != self.motion_lora[0]):
            self._drop(MOTION)
            self.motion_lora = None
        if want is not None:
            if MOTION not in self._scales:
                state = to_diffusers_keys(load_state_dict(uri, kind="lora"), uri)  # a path, URI or Hub id; bounded (bounded.py)
                self._scales[MOTION] = want[1]  # set first: a half-loaded adapter is deleted on failure
                try:
                    self.pipe.load_lora_weights(state, adapter_name=MOTION)
                except (ValueError, KeyError, RuntimeError) as e:
                    self._drop(MOTION)
                    raise CheckpointError(f"{uri}: motion LoRA does not fit this motion module "
                                          f"({str(e).splitlines()[0][:300]})") from None
            self._scales[MOTION] = want[1]
            self.motion_lora = want
        self._set_adapters()

    def reset(self) -> None:
        """Back to the plain base weights (no personalized checkpoint, no motion LoRA)."""
        with weights_change(self.pipe):
            self.apply_motion_lora(None)
            self._unload_lora()
            self._restore_base()
            self.current = None

    def _unload_lora(self) -> None:
        if self._lora is not None:
            self._drop(self._lora)
            self._lora = None

    def _drop(self, adapter: str) -> None:
        """Remove one adapter; the last one out removes the LoRA layers, leaving the plain modules."""
        self._scales.pop(adapter, None)
        if self._scales:
            present = {a for names in self.pipe.get_list_adapters().values() for a in names}
            if adapter in present:  # a load that failed early left nothing to delete
                self.pipe.delete_adapters([adapter])
            for part in ("unet", "text_encoder"):
                _unwrap_empty_lora_layers(getattr(self.pipe, part))
            self._set_adapters()
        else:
            self.pipe.unload_lora_weights()

    def _set_adapters(self) -> None:
        if self._scales:
            self.pipe.set_adapters(list(self._scales), adapter_weights=list(self._scales.values()))

    def _restore_base(self, parts: tuple[str, ...] = ("unet", "text_encoder")) -> None:
        for part in parts:
            if part in self._dirty:
                getattr(self.pipe, part).load_state_dict(self._base_copy[part], strict=part == "text_encoder")
                self._dirty.discard(part)

    def _load_dreambooth(self, state: dict[str, torch.Tensor], uri: str) -> None:
        unet, text = self.pipe.unet, self.pipe.text_encoder
        try:
            unet_sd = convert_ldm_unet_checkpoint(state, dict(unet.config))
            text_sd = convert_ldm_clip_checkpoint(state)
        except (KeyError, IndexError, ValueError) as e:
            raise CheckpointError(f"{uri}: DreamBooth checkpoint does not match an SD-1.x UNet ({type(e).__name__}: {e})") from None
        spatial = {k: tuple(v.shape) for k, v in unet.state_dict().items() if not is_motion_param(k)}
        check_keys(spatial, unet_sd, "SD-1.x UNet (DreamBooth single file)", uri)
        expected_text = {k: tuple(v.shape) for k, v in text.state_dict().items()}
        text_sd = align_text_keys(text_sd, set(expected_text))
        text_sd = {k: v for k, v in text_sd.items() if k in expected_text or not k.endswith("position_ids")}
        if text_sd:
            check_keys(expected_text, text_sd, "CLIP text encoder (DreamBooth single file)", uri)
        if self._base_copy is None:
            self._base_copy = {
                "unet": {k: v.detach().to("cpu", copy=True) for k, v in unet.state_dict().items() if not is_motion_param(k)},
                "text_encoder": {k: v.detach().to("cpu", copy=True) for k, v in text.state_dict().items()},
            }
        dtype = next(unet.parameters()).dtype
        self._dirty.add("unet")
        unet.load_state_dict({k: v.to(dtype) for k, v in unet_sd.items()}, strict=False)
        if text_sd:
            self._dirty.add("text_encoder")
            text.load_state_dict({k: v.to(dtype) for k, v in text_sd.items()}, strict=False)
        else:  # a UNet-only file: the text encoder is the base's
            self._restore_base(("text_encoder",))

    def _load_lora(self, state: dict[str, torch.Tensor], spec: CheckpointSpec) -> None:
        self._lora = PERSONALIZED  # set first: a half-loaded adapter is unloaded by reset()
        self._scales[PERSONALIZED] = spec.scale
        try:
            self.pipe.load_lora_weights(state, adapter_name=PERSONALIZED)
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{spec.uri}: LoRA does not fit this SD-1.x base ({str(e).splitlines()[0][:300]})") from None
        self._set_adapters()


def _unwrap_empty_lora_layers(model: torch.nn.Module) -> None:
    """Put plain modules back where a deleted adapter was the only one: peft's `delete_adapter` leaves its
    wrapper layers in place (`.base_layer.weight` keys), which strict loads of the next checkpoint or
    motion module would refuse. Layers another adapter still uses stay wrapped."""
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer) and not any(len(getattr(module, n)) for n in module.adapter_layer_names):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
