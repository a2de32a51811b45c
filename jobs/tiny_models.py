"""Write the tiny model set (base, motion module in both formats, personalized checkpoints, a CLIP, a RAFT,
VBench's models in its cache layout, an I3D, IP-Adapters with their image encoders).

    python -m jobs.tiny_models --out DIR [--seed 0]
"""

from __future__ import annotations

import argparse

from jobs.config import prog, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog(), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder to write into")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    setup_logging("WARNING")
    from animatediff_core.tiny import write_tiny_models  # here: --help answers without loading torch

    out = write_tiny_models(args.out, seed=args.seed)
    print(f"tiny models written to {out}: base/, motion_adapter/, motion_module.safetensors, checkpoints/, clip/, motion_loras/, "
          "raft_small.pth, vbench/, i3d_pretrained_400.pt, control/, official/, sdxl/, videos/, ip_adapter/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
