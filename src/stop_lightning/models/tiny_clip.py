"""A tiny random CLIP with a real BPE tokenizer, written to disk like a hub checkpoint.

The demo and the test suite use it so that nothing has to be downloaded: the directory it
writes loads with the same ``from_pretrained`` code path as ``openai/clip-vit-base-patch32``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

# OpenAI CLIP's image normalisation (also what the hub checkpoints' processors hold).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

SOT, EOT = "<|startoftext|>", "<|endoftext|>"


def byte_alphabet() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (printable bytes map to themselves)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def write_tiny_tokenizer(out_dir: str | Path, words: tuple[str, ...] = ()) -> CLIPTokenizer:
    """Write ``vocab.json``/``merges.txt`` of a character-level CLIP BPE tokenizer and load it.

    ``words`` get whole-word merges, which keeps short prompts short; everything else falls
    back to single characters, so any text tokenizes.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    alphabet = byte_alphabet()
    vocab_tokens = alphabet + [c + "</w>" for c in alphabet]
    merges: list[str] = []
    for word in words:
        # Left-to-right merges build the word piece by piece; the last symbol carries </w>.
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for nxt in pieces[1:]:
            merges.append(f"{current} {nxt}")
            current = current + nxt
            if current not in vocab_tokens:
                vocab_tokens.append(current)
    vocab_tokens += [SOT, EOT]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_tokens))}
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    merge_pairs = [tuple(m.split(" ")) for m in dict.fromkeys(merges)]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merge_pairs, model_max_length=77)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


DEFAULT_WORDS = (
    "a",
    "video",
    "of",
    "person",
    "square",
    "moves",
    "move",
    "left",
    "right",
    "up",
    "down",
    "red",
    "green",
    "blue",
    "yellow",
    "the",
)


def tiny_clip_config(
    width: int = 32,
    layers: int = 2,
    patch_size: int = 16,
    image_size: int = 64,
    heads: int | None = None,
    text_width: int = 32,
    text_layers: int = 2,
    projection_dim: int = 32,
    vocab_size: int = 49408,
    max_text_positions: int = 77,
) -> CLIPConfig:
    """A ``CLIPConfig`` with the ViT layout of the real models at toy sizes."""
    heads = heads or max(1, width // 16)
    text_heads = max(1, text_width // 16)
    config = CLIPConfig(
        vision_config=dict(
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            image_size=image_size,
            patch_size=patch_size,
            hidden_act="quick_gelu",
        ),
        text_config=dict(
            hidden_size=text_width,
            intermediate_size=4 * text_width,
            num_hidden_layers=text_layers,
            num_attention_heads=text_heads,
            vocab_size=vocab_size,
            max_position_embeddings=max_text_positions,
            hidden_act="quick_gelu",
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
        ),
        projection_dim=projection_dim,
    )
    return config


# Layouts of random CLIPs with real shapes (benchmarks, parameter tables). "vit-b/32" is
# openai/clip-vit-base-patch32's layout; "vit-s/32" its grid and depth at half the width.
CLIP_SIZES: dict[str, dict[str, int]] = {
    "vit-b/32": dict(
        width=768,
        layers=12,
        patch_size=32,
        image_size=224,
        text_width=512,
        text_layers=12,
        projection_dim=512,
    ),
    "vit-s/32": dict(
        width=384,
        layers=12,
        patch_size=32,
        image_size=224,
        text_width=256,
        text_layers=12,
        projection_dim=256,
    ),
    "tiny": dict(
        width=64, layers=2, patch_size=16, image_size=64, text_width=64, text_layers=2, projection_dim=64
    ),
}
OPENAI_VOCAB, OPENAI_SOT_ID, OPENAI_EOT_ID = 49408, 49406, 49407  # OpenAI CLIP's vocabulary and ids


def sized_clip_config(size: str) -> CLIPConfig:
    """The ``CLIPConfig`` of a :data:`CLIP_SIZES` layout: CLIP's 64-wide attention heads and OpenAI's
    vocabulary and special token ids (the weights are for the caller to make)."""
    if size not in CLIP_SIZES:
        raise ValueError(f"unknown CLIP size {size!r}; expected one of {', '.join(CLIP_SIZES)}")
    s = CLIP_SIZES[size]
    config = tiny_clip_config(heads=max(1, s["width"] // 64), vocab_size=OPENAI_VOCAB, **s)
    config.text_config.num_attention_heads = max(1, s["text_width"] // 64)
    config.text_config.eos_token_id = OPENAI_EOT_ID
    config.text_config.bos_token_id = OPENAI_SOT_ID
    config.text_config.pad_token_id = OPENAI_EOT_ID
    return config


def make_tiny_clip(out_dir: str | Path | None = None, seed: int = 0, **sizes) -> CLIPModel:
    """Build a random tiny CLIP; with ``out_dir`` also save model, tokenizer and image processor there."""
    config = tiny_clip_config(**sizes)
    torch.manual_seed(seed)
    tokenizer = None
    if out_dir is not None:
        tokenizer = write_tiny_tokenizer(out_dir, DEFAULT_WORDS)
        config.text_config.vocab_size = len(tokenizer)
        config.text_config.eos_token_id = tokenizer.eos_token_id
        config.text_config.bos_token_id = tokenizer.bos_token_id
        config.text_config.pad_token_id = tokenizer.pad_token_id
    model = CLIPModel(config).eval()
    if out_dir is not None:
        out_dir = Path(out_dir)
        model.save_pretrained(out_dir)
        image_size = config.vision_config.image_size
        CLIPImageProcessor(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            image_mean=list(CLIP_MEAN),
            image_std=list(CLIP_STD),
        ).save_pretrained(out_dir)
    return model
