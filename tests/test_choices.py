"""Each model choice is spelled once: the schema's CHOICES are the modules' constants, and loading a
config does not import torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stop_lightning import choices
from stop_lightning.choices import MODEL_CHOICES, check_choice
from stop_lightning.models.layers import attention_heads, same_padding
from stop_lightning.schema import CHOICES


def test_schema_choices_are_the_model_constants():
    for key, values in MODEL_CHOICES.items():
        assert CHOICES[key] is values, key
    assert CHOICES["model.spatial.generator"] is choices.GENERATORS
    assert CHOICES["model.aggregation.output"] is choices.OUTPUTS


def test_config_import_stays_light():
    code = "import sys, stop_lightning.config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_check_choice_names_the_key_and_the_choices():
    assert check_choice("model.temporal.insertion", "hard") == "hard"
    with pytest.raises(ValueError, match=r"model.temporal.insertion = 'soft2' is not one of: soft, hard"):
        check_choice("model.temporal.insertion", "soft2")


@pytest.mark.parametrize(
    "width, heads", [(768, 12), (1024, 16), (512, 8), (64, 1), (32, 1), (200, 2), (96, 1)]
)
def test_attention_heads_follow_clips_rule(width, heads):
    assert attention_heads(width) == heads
    assert width % attention_heads(width) == 0


def test_same_padding_keeps_odd_kernels_and_rejects_even_ones():
    assert same_padding((3, 11, 11), "k") == (1, 5, 5)
    with pytest.raises(ValueError, match="model.temporal.conv_kernel = \\[3, 4, 5\\].*odd"):
        same_padding((3, 4, 5), "model.temporal.conv_kernel")
