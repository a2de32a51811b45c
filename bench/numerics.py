"""Motion-module numerics: speed and output of the official ones against diffusers' own, on CPU.

    python bench/numerics.py [--presets tiny sd15] [--frames 16] [--size 64] [--repeats 5] [--threads 1]

For each preset (tiny: the test models; sd15: SD-1.5's UNet and a v2/v1-shaped motion module, random
weights, built in memory) and each motion-module version (v2 shape: per-frame temporal norm; v1 shape:
also cross-frame spatial norms), one video UNet is switched between `diffusers` and `official` numerics
(animatediff_core/models/numerics.py) and timed on the same latents: a forward pass (what a sampling step
costs) and, on the tiny preset, a forward + backward (a training step). Times are CPU time of this
process on one torch thread by default (our 2-core VM is shared: wall time mostly measures the
neighbours); modes alternate between repeats and the figure is the median. Also prints how far the
outputs move between the two numerics.
Prints figures and ratios; record them in bench/README.md with the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from animatediff_core.models.inflate import freeze_base, inflate_unet, new_motion_adapter
from animatediff_core.models.motion_config import MotionModuleConfig
from animatediff_core.models.numerics import AcrossFramesGroupNorm, PerFrameGroupNorm, apply_motion_norm
from animatediff_core.tiny import SD15_UNET, TINY_UNET

MODES = ("diffusers", "official")
SHAPES = {  # UNet config, v2-shaped and v1-shaped motion module config
    "tiny": (TINY_UNET, MotionModuleConfig.tiny(), MotionModuleConfig(24, 4, 2, use_mid_block=False)),
    "sd15": (SD15_UNET, MotionModuleConfig.sd15(), MotionModuleConfig(24, use_mid_block=False)),
}


def video_unets(preset: str):
    """(version, video UNet) for a v2- and a v1-shaped motion module on one random base UNet."""
    from diffusers import UNet2DConditionModel

    unet_cfg, v2, v1 = SHAPES[preset]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_cfg)
    for seed, (version, cfg) in enumerate((("v2", v2), ("v1", v1)), start=1):
        torch.manual_seed(seed)  # the same weights whatever ran before
        adapter = new_motion_adapter(dict(unet.config), cfg, zero_init=False)
        video = inflate_unet(unet, adapter)[0].eval()
        freeze_base(video)  # as in training: gradients for the motion modules only
        yield version, video


def inputs(unet, frames: int, size: int):
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, frames, size // 8, size // 8, generator=g)
    text = torch.randn(frames, 77, unet.config["cross_attention_dim"], generator=g)
    return latents, torch.tensor([500]), text


def timed(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def measure(unet, version: str, args, backward: bool) -> dict:
    latents, t, text = inputs(unet, args.frames, args.size)

    def forward():
        with torch.no_grad():
            return unet(latents, t, encoder_hidden_states=text).sample

    def train_step():
        unet.zero_grad(set_to_none=True)
        out = unet(latents, t, encoder_hidden_states=text).sample
        out.float().pow(2).mean().backward()
        return out.detach()

    fn = train_step if backward else forward
    times = {m: [] for m in MODES}
    outputs = {}
    for m in MODES:  # warm-up, and the outputs to compare
        apply_motion_norm(unet, m, version)
        outputs[m] = fn()
    for r in range(args.repeats):
        for m in MODES if r % 2 == 0 else MODES[::-1]:
            apply_motion_norm(unet, m, version)
            times[m].append(timed(fn))
    med = {m: statistics.median(v) for m, v in times.items()}
    diff = (outputs["official"] - outputs["diffusers"]).abs()
    return {"diffusers_s": med["diffusers"], "official_s": med["official"], "ratio": med["official"] / med["diffusers"],
            "max_abs_diff": diff.max().item(), "mean_abs_diff": diff.mean().item(),
            "mean_abs_output": outputs["diffusers"].abs().mean().item()}


def norm_cost(unet, version: str, args, backward: bool = False) -> dict:
    """CPU time per UNet forward (+ backward) in the GroupNorms the numerics swap, under each numerics.

    The two numerics differ only there, so this difference is what a forward pass gains or loses, measured
    one norm at a time (milliseconds, many repeats) instead of through whole forwards that the shared
    machine's noise blurs by a few percent. A temporal norm is timed with the permute+reshape diffusers
    applies to its output, whose cost depends on the layout the norm returns.
    """
    apply_motion_norm(unet, "official", version)
    paths = [n for n, m in unet.named_modules() if isinstance(m, (PerFrameGroupNorm, AcrossFramesGroupNorm))]
    swapped = {p: unet.get_submodule(p) for p in paths}
    apply_motion_norm(unet, "diffusers", version)
    plain = {p: unet.get_submodule(p) for p in paths}
    seen = {}
    hooks = [plain[p].register_forward_pre_hook(lambda m, a, p=p: seen.setdefault(p, a[0].clone())) for p in paths]
    latents, t, text = inputs(unet, args.frames, args.size)
    with torch.no_grad():
        unet(latents, t, encoder_hidden_states=text)
    for h in hooks:
        h.remove()
    totals = {m: 0.0 for m in MODES}
    for p in paths:
        x = seen[p]
        if isinstance(swapped[p], AcrossFramesGroupNorm):
            swapped[p].count.frames = args.frames  # what the UNet's pre-hook sets in a real forward
        fns = {"diffusers": _norm_step(plain[p], x, backward), "official": _norm_step(swapped[p], x, backward)}
        times = {m: [] for m in MODES}
        for r in range(4 * args.repeats + 1):
            for m in MODES if r % 2 == 0 else MODES[::-1]:
                times[m].append(timed(fns[m]))
        for m in MODES:
            totals[m] += statistics.median(times[m][2:])
    return {"norms": len(paths), **totals}


def _norm_step(norm, x: torch.Tensor, backward: bool):
    """One call of `norm` on `x` as the UNet makes it: a motion module's `(b, c, f, h, w)` norm is followed
    by diffusers' permute+reshape to `(b*h*w, f, c)`; with `backward`, gradients flow back through both."""
    def out(inp):
        y = norm(inp)
        return y.permute(0, 3, 4, 2, 1).reshape(-1, x.shape[2], x.shape[1]) if x.dim() == 5 else y

    if not backward:
        return lambda: torch.no_grad()(out)(x)
    y = out(x).detach()
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(4))

    def step():
        inp = x.detach().requires_grad_(True)
        out(inp).backward(grad)

    return step


def measure_module(unet, args) -> None:
    """The first motion module alone (SD-1.5: 320 channels) on `--module-size` pixels: where the norm's cost shows."""
    module = unet.down_blocks[0].motion_modules[0]
    side = args.module_size // 8
    x = torch.randn(args.frames, module.in_channels, side, side, generator=torch.Generator().manual_seed(3))
    # Frames whose statistics differ, as a moving clip's activations do (i.i.d. noise frames share theirs,
    # which hides what a cross-frame norm changes): scale 0.5..2 and offset -1..1 over the clip.
    x = x * torch.linspace(0.5, 2.0, args.frames)[:, None, None, None] + torch.linspace(-1, 1, args.frames)[:, None, None, None]
    for what, backward in (("forward", False), ("forward+backward", True)):
        def fn():
            if not backward:
                with torch.no_grad():
                    return module(x, num_frames=args.frames)
            inp = x.clone().requires_grad_(True)
            out = module(inp, num_frames=args.frames)
            out.pow(2).mean().backward()
            return out.detach()

        times, outputs = {m: [] for m in MODES}, {}
        for m in MODES:
            apply_motion_norm(unet, m, "v2")
            outputs[m] = fn()
        for r in range(3 * args.repeats):
            for m in MODES if r % 2 == 0 else MODES[::-1]:
                apply_motion_norm(unet, m, "v2")
                times[m].append(timed(fn))
        med = {m: statistics.median(v) for m, v in times.items()}
        diff = (outputs["official"] - outputs["diffusers"]).abs()
        print(f"[one motion module, {module.in_channels} channels, {args.frames}x{side}x{side}] {what}: diffusers "
              f"{med['diffusers'] * 1000:.0f} ms, official {med['official'] * 1000:.0f} ms, official/diffusers "
              f"{med['official'] / med['diffusers']:.3f}; output moves max {diff.max().item():.3g} "
              f"(mean |output| {outputs['diffusers'].abs().mean().item():.3g})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "sd15"], choices=list(SHAPES))
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=64, help="pixels (latents are size/8)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--module-size", type=int, default=256, help="pixels for the one-module timing (sd15 preset)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: CPU time is then compute time)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} torch threads, "
          f"torch {torch.__version__}; {args.frames} frames {args.size}x{args.size}, median CPU time of {args.repeats}")
    for preset in args.presets:
        for version, unet in video_unets(preset):
            passes = [("forward", False)] + ([("forward+backward", True)] if preset == "tiny" else [])
            results = {}
            for what, backward in passes:
                r = results[what] = measure(unet, version, args, backward)
                print(f"[{preset} {version}-shaped] {what}: diffusers {r['diffusers_s'] * 1000:.0f} ms, "
                      f"official {r['official_s'] * 1000:.0f} ms, official/diffusers {r['ratio']:.3f}; output moves "
                      f"max {r['max_abs_diff']:.3g} mean {r['mean_abs_diff']:.3g} (mean |output| {r['mean_abs_output']:.3g})")
            for what, backward in passes:
                c = norm_cost(unet, version, args, backward)
                delta = c["official"] - c["diffusers"]
                print(f"[{preset} {version}-shaped] the {c['norms']} swapped GroupNorms, per {what}: diffusers "
                      f"{c['diffusers'] * 1000:.2f} ms, official {c['official'] * 1000:.2f} ms: official costs "
                      f"{delta * 1000:+.2f} ms = {100 * delta / results[what]['diffusers_s']:+.2f}% of a diffusers {what}")
            if preset == "sd15" and version == "v2":
                measure_module(unet, args)
            del unet


if __name__ == "__main__":
    main()
