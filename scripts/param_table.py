"""Trainable vs frozen parameters of each model preset on a ViT-B/32-sized CLIP (random weights).

    python scripts/param_table.py [--frames 12]           # the README's table
    python scripts/param_table.py --published             # docs/fidelity.md's table: by part, beside
                                                          # the published count of each method

Sizes: ``tiny_clip.CLIP_SIZES["vit-b/32"]``
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


# Each preset (with the keys that make it the method) beside the trainable parameters the STOP paper's
# MSR-VTT table gives for the method it stands for (CVPR 2025, arXiv 2503.15973; the table is shown in
# github.com/zhoujiahuan1991/CVPR2025-STOP, figs/Result_1.png). CLIP4Clip's is full fine-tuning.
PUBLISHED: tuple[tuple[str, tuple[str, ...], str, float], ...] = (
    ("stop", (), "STOP", 7.53),
    ("stop_official", (), "STOP", 7.53),
    ("stop_official", ("model.shared_latent=linear",), "STOP", 7.53),
    ("dgl", (), "DGL-Linear", 0.83),
    ("dgl", ("model.shared_latent=transformer",), "DGL-Transformer", 9.57),
    ("vop_fc", (), "VoP F+C", 14.10),
    ("clip4clip_meanp", (), "CLIP4Clip (full fine-tuning)", 123.54),
)
# Trainable parts of STOPVideoModel, by the first names of a parameter (a new module must be added here).
PARTS: dict[str, str] = {
    "spatial": "spatial",
    "temporal": "temporal",
    "local_prompts": "local / video prompts",
    "context_prompts": "local / video prompts",
    "function_prompts": "local / video prompts",
    "global_prompts": "global prompts",
    "text_encoder.prompts": "text prompts",
    "shared_space": "shared latent space",
    "vision_adapters": "adapters",
    "text_encoder.adapters": "adapters",
    "aggregator": "aggregation (MSA, head)",
}
PART_NAMES = tuple(dict.fromkeys(PARTS.values()))


def part_of(name: str) -> str:
    parts = name.split(".")
    for depth in (2, 1):
        if ".".join(parts[:depth]) in PARTS:
            return PARTS[".".join(parts[:depth])]
    raise KeyError(f"trainable parameter {name} belongs to no part of scripts/param_table.py PARTS: add it")


def build(clip: torch.nn.Module, preset: str, frames: int, extra: tuple[str, ...] = ()) -> STOPVideoModel:
    cfg = load_config("hmdb51", [f"model.preset={preset}", f"data.num_frames={frames}", *extra])
    with torch.device("meta"):
        return STOPVideoModel(cfg.model, clip, num_frames=frames)


def trainable_by_part(model: STOPVideoModel) -> dict[str, int]:
    counts = dict.fromkeys(PART_NAMES, 0)
    for name, p in model.named_parameters():
        if p.requires_grad:
            counts[part_of(name)] += p.numel()
    return counts


def millions(n: float) -> str:
    return f"{n / 1e6:.2f}" if n else "-"


def published_table(clip: torch.nn.Module, frames: int) -> None:
    """Trainable parameters by part (M) of each preset beside the published count of its method."""
    head = "| preset | method | published | here | here - published | without adapters | "
    print(head + " | ".join(PART_NAMES) + " |")
    print("|---|---|---:|---:|---:|---:|" + "---:|" * len(PART_NAMES))
    for preset, extra, method, published in PUBLISHED:
        model = build(clip, preset, frames, extra)
        counts = trainable_by_part(model)
        total = sum(counts.values())
        assert total == model.trainable_parameter_count()[0], preset
        name = f"`{preset}`" + "".join(f" `{e.split('.', 1)[1]}`" for e in extra)
        cells = [f"{published:.2f}", f"{total / 1e6:.2f}", f"{total / 1e6 - published:+.2f}"]
        cells.append(f"{(total - counts['adapters']) / 1e6:.2f}")
        cells += [millions(counts[p]) for p in PART_NAMES]
        print(f"| {name} | {method} | " + " | ".join(cells) + " |")
        model.remove_hooks()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument(
        "--published", action="store_true", help="by part, beside the published count (docs/fidelity.md)"
    )
    args = parser.parse_args()
    with torch.device("meta"):
        clip = freeze(CLIPModel(sized_clip_config("vit-b/32")))
    if args.published:
        published_table(clip, args.frames)
        return
    print("| preset | trainable | frozen | trainable share |")
    print("|---|---:|---:|---:|")
    for preset in PRESETS:
        model = build(clip, preset, args.frames)
        trainable, frozen = model.trainable_parameter_count()
        print(f"| `{preset}` | {trainable:,} | {frozen:,} | {100 * trainable / (trainable + frozen):.2f}% |")
        model.remove_hooks()


if __name__ == "__main__":
    main()
