"""Shared helpers for the vision-side model tests: tiny CLIPs and model configs built from presets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from stop_lightning.models.tiny_clip import make_tiny_clip
from stop_lightning.models.video_encoder import STOPVideoModel
from stop_lightning.schema import ModelConfig

PRESETS = Path(__file__).resolve().parents[2] / "experiments" / "presets"


def build_model_cfg(preset: str = "zero_shot", *overrides: str) -> DictConfig:
    """The ``model`` section of a preset on the schema, plus dotlist overrides
    (``"temporal.insertion=hard"``)."""
    cfg = OmegaConf.structured(ModelConfig)
    cfg = OmegaConf.merge(cfg, OmegaConf.load(PRESETS / f"{preset}.yaml").model)
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))


def build_tiny_clip(seed: int = 0, **sizes):
    """A tiny random CLIP (no tokenizer); its text tower pools at the last vocabulary id, as OpenAI's does."""
    sizes.setdefault("vocab_size", 64)
    clip = make_tiny_clip(seed=seed, **sizes)
    clip.config.text_config.eos_token_id = clip.text_model.eos_token_id = sizes["vocab_size"] - 1
    return clip


def tiny_overrides(preset: str) -> tuple[str, ...]:
    """What a preset needs on the tiny CLIP's 2 vision layers: VoP-F's split layer (8 of 12 on
    ViT-B/32) after the first."""
    return ("function_prompts.split_layer=1",) if preset.startswith("vop_f") else ()


def build_training_model(
    preset: str, seed: int = 0, *, frames: int = 4, overrides: tuple[str, ...] = ()
) -> STOPVideoModel:
    """``preset`` on the tiny CLIP in training mode, every trainable tensor drawn from N(0, 0.1)
    (zero-initialised parts too: every gradient path is live); the same model for the same seed."""
    clip = build_tiny_clip()  # seeds the global generator itself
    torch.manual_seed(seed)
    model = STOPVideoModel(build_model_cfg(preset, *tiny_overrides(preset), *overrides), clip, frames)
    for param in model.parameters():
        if param.requires_grad:
            param.data.normal_(0, 0.1)
    return model.train()


@pytest.fixture
def model_cfg():
    return build_model_cfg


@pytest.fixture
def tiny_clip():
    return build_tiny_clip


@pytest.fixture
def training_model():
    return build_training_model


def random_video(batch: int = 2, frames: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def make_video():
    return random_video
