"""``trainer.compile``: the compiled video and text cores trace into one graph, give eager's losses and
gradients, compile once for any batch size, name the part that cannot compile, and keep eager's
state-dict keys (models/compile.py)."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from stop_lightning.models.compile import CompileError, compile_model, is_compiled
from stop_lightning.models.text_prompts import PromptLayout, eot_positions
from stop_lightning.models.video_encoder import STOPVideoModel

FRAMES = 4
PRESETS = ("stop_fast", "stop", "stop_official", "dgl", "vop_f")
CLASS_PROMPTS = 3  # captions of the text side; the tiny vocabulary's last id is end-of-text


@pytest.fixture
def build(training_model):
    """``build(preset, seed=0) -> STOPVideoModel`` at ``FRAMES`` frames (tests/models/conftest.py)."""
    return functools.partial(training_model, frames=FRAMES)


def captions(n: int = CLASS_PROMPTS, length: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, length]`` token ids of uneven lengths (SOT 1, words, EOT 63, padding 0) and their mask."""
    ids = torch.zeros(n, length, dtype=torch.long)
    mask = torch.zeros(n, length, dtype=torch.long)
    for row in range(n):
        words = 2 + row % (length - 3)
        ids[row, : words + 2] = torch.tensor([1, *range(5, 5 + words), 63])
        mask[row, : words + 2] = 1
    return ids, mask


def frame_mask(batch: int) -> torch.Tensor:
    """``[B, T]``: the last clip's final frame is padding (VoP-C/F mask it out)."""
    mask = torch.ones(batch, FRAMES, dtype=torch.bool)
    mask[-1, -1] = False
    return mask


def step_loss(model: STOPVideoModel, video: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
    """A recognition training step's forward and loss: cross-entropy of the clips against the captions."""
    video_feats = nn.functional.normalize(model(video, frame_mask(len(video))).embeds, dim=-1)  # [B, E]
    text_feats = nn.functional.normalize(model.encode_text(ids, mask), dim=-1)  # [C, E]
    logits = model.logit_scale * video_feats @ text_feats.t()  # [B, C]
    return nn.functional.cross_entropy(logits, torch.arange(len(video)) % len(ids))


def core_step(model: STOPVideoModel, video: torch.Tensor):
    """The step as the compiled parts see it: the video and text cores plus the loss, with the eager
    checks (padded frames, end-of-text positions, layout) done outside, as their forwards do them."""
    text = model.text_encoder

    def run(video, padded, ids, layout, prompts):
        video_feats = nn.functional.normalize(model._encode(video, padded, padded).embeds, dim=-1)
        text_feats = nn.functional.normalize(text._encode(ids, layout, prompts), dim=-1)
        logits = model.logit_scale * video_feats @ text_feats.t()
        return nn.functional.cross_entropy(logits, torch.arange(len(video)) % len(ids))

    ids, _ = captions()
    layout = PromptLayout.build(
        eot_positions(ids, text.eos_token_id), ids.shape[1], text.num_prefix, text.num_postfix
    )
    prompts = model.shared_space()[1] if model.shared_space is not None else text.prompts
    padded = frame_mask(len(video)) if model.function_prompts is not None else None
    return run, (video, padded, ids, layout, prompts)


@pytest.mark.parametrize("preset", PRESETS)
def test_compiled_step_equals_eager(preset, build, make_video):
    """Same seed, same batch: the compiled step (fullgraph: one graph for the video core, one for the
    text core, or an error) gives eager's loss and every gradient. The eager backend replays the traced
    graph, so what is checked is the trace, hooks and all; measured max abs difference 0.0 (bit-identical)
    for all five presets with 1 and 2 threads. The tolerance leaves room for a backend that reorders."""
    video, (ids, mask) = make_video(3, FRAMES, seed=1), captions()
    results = []
    for compiled in (False, True):
        model = build(preset)
        if compiled:
            torch._dynamo.reset()
            counters.clear()
            assert compile_model(model, "default", backend="eager") == ["video model", "text encoder"]
            assert is_compiled(model)
        loss = step_loss(model, video, ids, mask)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        assert all(g is not None for g in grads.values())
        results.append((loss.detach(), grads))
    assert counters["stats"]["unique_graphs"] == 2  # the video core and the text core, nothing eager
    (eager_loss, eager_grads), (loss, grads) = results
    torch.testing.assert_close(loss, eager_loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == eager_grads.keys() and len(grads) > 0
    for name in grads:
        torch.testing.assert_close(grads[name], eager_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_uneven_last_batch_compiles_no_again(build, make_video):
    """The batch dimension is dynamic: after the first step, batches of 3, an uneven 2 and 3 again reuse
    the graph (dynamo's recompilation error is on)."""
    model = build("dgl")
    torch._dynamo.reset()
    compile_model(model, "default", backend="eager")
    ids, mask = captions()
    step_loss(model, make_video(3, FRAMES), ids, mask).backward()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for batch in (2, 3):
            step_loss(model, make_video(batch, FRAMES, seed=batch), ids, mask).backward()


class Untraceable(nn.Module):
    """Branches in Python on a tensor's value: no single graph can hold that."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self):
        visual, text = self.inner()
        if visual.sum() > 0:
            visual = visual + 1
        return visual, text


@pytest.mark.parametrize(
    ("preset", "named"),
    [
        ("dgl", "module 'shared_space' (Untraceable, test_compile.py:"),  # injected below
        ("vop_c", "module 'context_prompts' (ContextPrompts, video_prompts.py:"),  # dynamo traces no RNN
    ],
)
def test_a_part_that_cannot_compile_is_named(preset, named, build, make_video):
    model = build(preset)
    if preset == "dgl":
        model.shared_space = Untraceable(model.shared_space)
    torch._dynamo.reset()
    compile_model(model, "max-autotune", backend="eager")
    with pytest.raises(CompileError) as caught:
        model(make_video(2, FRAMES))
    message = str(caught.value)
    assert "\n" not in message and named in message, message
    assert message.startswith("trainer.compile=max-autotune: the video model cannot be compiled")
    assert message.endswith("set trainer.compile=false to train this preset eagerly")


def test_compiled_state_dict_is_eager_state_dict(build, make_video):
    """Compiling in place keeps the keys (no ``_orig_mod.``): weights move from a compiled model into an
    eager one and back, and both then compute the same features."""
    eager, compiled = build("dgl", seed=0), build("dgl", seed=1)
    torch._dynamo.reset()
    compile_model(compiled, "default", backend="eager")
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    assert not any("_orig_mod" in key for key in compiled.state_dict())
    video = make_video(2, FRAMES)
    eager.load_state_dict(compiled.state_dict())  # compiled -> eager
    torch.testing.assert_close(compiled(video).embeds, eager(video).embeds, rtol=1e-5, atol=1e-6)
    other = build("dgl", seed=2)
    compiled.load_state_dict(other.state_dict())  # eager -> compiled
    torch.testing.assert_close(compiled(video).embeds, other(video).embeds, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(compiled(video).embeds, eager(video).embeds)
