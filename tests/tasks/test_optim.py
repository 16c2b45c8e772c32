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


def _adamw_by_hand(params, grads_per_step, lr, betas, weight_decays, eps=1e-8):
    """AdamW (Loshchilov & Hutter) written out: decoupled decay, bias-corrected moments."""
    b1, b2 = betas
    p = [x.detach().double().clone() for x in params]
    m = [torch.zeros_like(x) for x in p]
    v = [torch.zeros_like(x) for x in p]
    steps = [0] * len(p)  # each parameter counts the steps in which it had a gradient
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            if g is None:
                continue
            steps[i] += 1
            step, g = steps[i], g.double()
            p[i] *= 1 - lr * weight_decays[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat, v_hat = m[i] / (1 - b1**step), v[i] / (1 - b2**step)
            p[i] -= lr * m_hat / (v_hat.sqrt() + eps)
    return p


@pytest.mark.parametrize("fused", [True, False])
def test_the_fused_adamw_is_adamw_and_reads_nothing_on_the_host(fused):
    """The optimisers the tasks use against AdamW written out, on odd shapes, a scalar-like parameter and
    one that gets no gradient; and the fused one's step dispatches no ``.item()`` from Python."""
    from torch.profiler import ProfilerActivity, profile

    from stop_lightning.tasks.optim import adamw

    g = torch.Generator().manual_seed(3)
    shapes = [(7, 5), (1,), (3, 1, 9), (2, 2)]
    params = [nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    decays = [0.2, 0.0, 0.2, 0.0]
    groups = [
        {"params": [params[0], params[2]], "weight_decay": 0.2},
        {"params": [params[1], params[3]], "weight_decay": 0.0},
    ]
    lr, betas = 1e-2, (0.9, 0.98)
    expected_start = [p.detach().clone() for p in params]
    opt = adamw(groups, lr, betas, fused)
    grads_per_step = []
    for step in range(4):
        grads = [torch.randn(s, generator=g) for s in shapes]
        grads[3] = None if step % 2 else grads[3]  # a parameter without a gradient in some steps
        for p, grad in zip(params, grads):
            p.grad = grad
        grads_per_step.append(grads)
        if step == 3 and fused:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                opt.step()
            # A read from Python; the CPU fused kernel reads its (CPU) step count inside itself, which
            # is no host round trip, and on a GPU the kernel reads it on the device.
            from_python = [
                e
                for e in prof.events()
                if e.name == "aten::item" and not (e.cpu_parent and e.cpu_parent.name.startswith("aten::"))
            ]
            assert not from_python
        else:
            opt.step()
    expected = _adamw_by_hand(expected_start, grads_per_step, lr, betas, decays)
    for p, e in zip(params, expected):
        assert (p.detach().double() - e).abs().max() < 1e-6  # fp32 rounding of 4 steps of size ~lr
