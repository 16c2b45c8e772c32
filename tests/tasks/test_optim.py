"""Parameter groups and the warm-up + cosine schedule."""

import math

import pytest
import torch
from torch import nn

from stop_lightning.tasks.optim import build_optimizer, parameter_groups, warmup_cosine


class Toy(nn.Module):
    no_weight_decay = ("prompt_tokens",)

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)  # weight decays, bias does not
        self.norm = nn.LayerNorm(4)
        self.prompt_tokens = nn.Parameter(torch.zeros(3, 4))
        self.frozen = nn.Linear(4, 4).requires_grad_(False)


def test_groups_exclude_frozen_and_skip_decay_on_prompts_norms_biases():
    m = Toy()
    decay, no_decay = parameter_groups(m, 0.2)
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])] and decay["params"][0] is m.proj.weight
    ids = {id(p) for p in no_decay["params"]}
    assert ids == {id(m.proj.bias), id(m.norm.weight), id(m.norm.bias), id(m.prompt_tokens)}


class Declares(nn.Module):
    no_weight_decay = ("queries", "mixer", "switched_off", "absent_here")

    def __init__(self):
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(3, 4))  # declared: no decay, whatever its name
        self.mixer = nn.Linear(4, 4)  # a declared child: none of its parameters decay
        self.prompt_like = nn.Parameter(torch.zeros(3, 4))  # not declared: decays, whatever its name
        self.register_parameter("switched_off", None)


def test_a_declared_parameter_or_child_is_excluded_and_no_name_decides():
    m = nn.Sequential(Declares(), nn.Linear(4, 4))
    decay, no_decay = parameter_groups(m, 0.2)
    own = m[0]
    assert {id(p) for p in decay["params"]} == {id(own.prompt_like), id(m[1].weight)}
    assert {id(p) for p in no_decay["params"]} == {
        id(own.queries),
        id(own.mixer.weight),
        id(own.mixer.bias),
        id(m[1].bias),
    }


@pytest.mark.parametrize(
    ("declared", "message"), [("queries", "a tuple of names"), (("depth",), "'depth'.*of type int")]
)
def test_a_malformed_declaration_names_the_module(declared, message):
    class Bad(nn.Module):
        no_weight_decay = declared

        def __init__(self):
            super().__init__()
            self.queries = nn.Parameter(torch.zeros(2, 2))
            self.depth = 3

    with pytest.raises(TypeError, match=rf"Bad\.no_weight_decay.*{message}"):
        parameter_groups(Bad(), 0.1)


def test_warmup_then_cosine_hand_computed():
    total, warm = 100, 0.1
    assert warmup_cosine(0, total, warm) == pytest.approx(1 / 10)
    assert warmup_cosine(9, total, warm) == pytest.approx(1.0)
    assert warmup_cosine(10, total, warm) == pytest.approx(1.0)
    assert warmup_cosine(55, total, warm) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert warmup_cosine(100, total, warm) == pytest.approx(0.0)
    assert warmup_cosine(100, total, warm, min_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(50, total, 0.0, cosine=False) == 1.0


def test_build_optimizer_steps_schedule_and_nothing_to_train():
    m = Toy()
    cfg = type(
        "C",
        (),
        dict(
            lr=1e-2,
            weight_decay=0.1,
            betas=[0.9, 0.98],
            warmup_ratio=0.5,
            min_lr_ratio=0.0,
            scheduler="cosine",
        ),
    )
    opt = build_optimizer(m, cfg, total_steps=4)
    sched = opt["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(4):
        lrs.append(opt["optimizer"].param_groups[0]["lr"])
        opt["optimizer"].step()
        sched.step()
    assert lrs == pytest.approx([5e-3, 1e-2, 1e-2, 5e-3])
    assert build_optimizer(nn.Linear(2, 2).requires_grad_(False), cfg, 4) is None
