"""Shared helpers for the vision-side model tests: tiny CLIPs and model configs built from presets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from stop_lightning.models.tiny_clip import make_tiny_clip
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


@pytest.fixture
def model_cfg():
    return build_model_cfg


@pytest.fixture
def tiny_clip():
    return build_tiny_clip


def random_video(batch: int = 2, frames: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def make_video():
    return random_video
