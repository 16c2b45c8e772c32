"""The models' ``no_weight_decay`` declarations give, for every preset, the optimiser groups that the
parameter-name rule they replaced gave (``tasks/optim.py`` reads the declarations)."""

from __future__ import annotations

import pytest
from torch import nn

from stop_lightning.config import available_presets
from stop_lightning.models.video_encoder import STOPVideoModel
from stop_lightning.tasks.optim import parameter_groups

# The replaced rule, kept here only as the reference: a parameter of one dimension, or one whose name in
# the task module contained one of these, did not decay.
OLD_NO_DECAY_MARKERS = ("prompt", "token", "norm", "bias", "embedding", "ln_", "layernorm")
# Every preset on the tiny 2-layer CLIP (VoP-F splits after its first layer), and configurations that
# build what no preset does: the linear shared space's token maps, the towers' own prompts.
CONFIGS = [
    (p, ("function_prompts.split_layer=1",) if p.startswith("vop_f") else ()) for p in available_presets()
]
CONFIGS += [
    ("stop", ("text_prompts.prefix=2", "text_prompts.postfix=6")),
    ("stop", ("shared_latent=none",)),
    ("stop_official", ("text_prompts.prefix=2",)),
]
IDS = [" ".join((p, *o)) for p, o in CONFIGS]


@pytest.fixture
def task_like(model_cfg, tiny_clip):
    """The video model under ``model.`` and a linear-probe head, named as in a task module."""

    def build(preset: str, overrides: tuple[str, ...]) -> nn.Module:
        video = STOPVideoModel(model_cfg(preset, *overrides), tiny_clip(), num_frames=4)
        return nn.ModuleDict({"model": video, "classifier": nn.Linear(8, 3)})

    return build


@pytest.mark.parametrize(("preset", "overrides"), CONFIGS, ids=IDS)
def test_declarations_give_the_groups_the_name_rule_gave(task_like, preset, overrides):
    module = task_like(preset, overrides)
    trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
    old_no_decay = {
        n for n, p in trainable.items() if p.ndim < 2 or any(m in n.lower() for m in OLD_NO_DECAY_MARKERS)
    }
    name_of = {id(p): n for n, p in trainable.items()}
    groups = {g["weight_decay"]: {name_of[id(p)] for p in g["params"]} for g in parameter_groups(module, 0.2)}
    assert groups.get(0.0, set()) == old_no_decay
    assert groups.get(0.2, set()) == set(trainable) - old_no_decay


def test_every_declared_name_exists_in_some_configuration(task_like):
    """A misspelt name would be skipped silently, as names a configuration switches off are."""
    declared, found = set(), set()
    for preset, overrides in CONFIGS:
        for sub in task_like(preset, overrides).modules():
            for name in getattr(type(sub), "no_weight_decay", ()):
                declared.add((type(sub).__name__, name))
                if getattr(sub, name, None) is not None:
                    found.add((type(sub).__name__, name))
    assert len(declared) >= 8 and declared == found, declared - found
