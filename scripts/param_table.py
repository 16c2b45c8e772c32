"""Trainable vs frozen parameters of each model preset on a ViT-B/32-sized CLIP (random weights).

    python scripts/param_table.py [--frames 12]

Prints the markdown table that README.md shows. Sizes: ``tiny_clip.CLIP_SIZES["vit-b/32"]``
(openai/clip-vit-base-patch32's layout: vision width 768, 12 layers, patch 32, image 224; text
width 512, 12 layers; projection 512).
"""

from __future__ import annotations

import argparse

import torch
from transformers import CLIPModel

from stop_lightning.config import load_config
from stop_lightning.models.hooks import freeze
from stop_lightning.models.tiny_clip import sized_clip_config
from stop_lightning.models.video_encoder import STOPVideoModel

PRESETS = (
    "zero_shot",
    "clip4clip_meanp",
    "dgl",
    "stop_fast",
    "stop",
    "stop_official",
    "vop",
    "vop_p",
    "vop_c",
    "vop_f",
    "vop_fc",
    "vop_fp",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12)
    args = parser.parse_args()
    with torch.device("meta"):
        clip = freeze(CLIPModel(sized_clip_config("vit-b/32")))
    print("| preset | trainable | frozen | trainable share |")
    print("|---|---:|---:|---:|")
    for preset in PRESETS:
        cfg = load_config("hmdb51", [f"model.preset={preset}", f"data.num_frames={args.frames}"])
        with torch.device("meta"):
            model = STOPVideoModel(cfg.model, clip, num_frames=args.frames)
        trainable, frozen = model.trainable_parameter_count()
        print(f"| `{preset}` | {trainable:,} | {frozen:,} | {100 * trainable / (trainable + frozen):.2f}% |")
        model.remove_hooks()


if __name__ == "__main__":
    main()
