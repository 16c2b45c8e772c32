"""No host synchronisation inside a training step (issue 29).

On a GPU every read of a tensor's value by Python (``.item()``, ``bool()``, ``int()``, a branch on a
tensor), every operator whose output shape depends on values (``nonzero``, boolean indexing,
``unique``) and every tensor built from Python data in the step makes the host wait for the device.
:class:`HostSyncDetector` records those operators as they are dispatched, whatever the device, so the
CPU suite checks what a GPU step would do. The captions' checks and trimming happen on the host where
they are tokenized (``PromptedTextEncoder.prepare``) and whether a batch has padded frames is read
there too (the DataModule's ``padded_frames``); the step itself has none left.

The equivalence tests compare the new paths with what the code computed before: the text features
with the padding trimmed inside the forward (``old_text_forward``) and the VoP outputs with the mask
read back from the device (``padded_frames=None``, the path a caller without the flag still takes).
"""

from __future__ import annotations

import functools
import traceback

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from stop_lightning.models.text_prompts import PromptLayout, checked_eot_positions, eot_positions
from stop_lightning.models.video_encoder import STOPVideoModel

aten = torch.ops.aten
FRAMES = 4
PRESETS = ("stop_fast", "stop", "dgl", "vop_c", "vop_f", "vop_fc")
VOP = ("vop_c", "vop_f", "vop_fc")
VOCAB = 64  # the tiny CLIP's vocabulary: SOT 62, EOT 63 (its last id), words 3..61
SOT, EOT = VOCAB - 2, VOCAB - 1

# The result needs tensor values on the host (the output of `.item()`, `bool()`, `int()` of a tensor,
# or a shape that depends on values).
HOST_READS = {
    aten._local_scalar_dense,
    aten.is_nonzero,
    aten.equal,
    aten.allclose,
    aten.nonzero,
    aten.masked_select,
    aten._unique,
    aten._unique2,
    aten.unique_dim,
    aten.unique_consecutive,
    aten.bincount,
    aten.histc,
}
BUILT_ON_HOST = {aten.lift_fresh, aten.lift_fresh_copy}  # torch.tensor(<Python data>) inside the step


def _devices(values) -> set[torch.device]:
    return {v.device for v in values if isinstance(v, torch.Tensor)}


def host_sync(func, args: tuple, kwargs: dict, out) -> str | None:
    """Why ``func(*args, **kwargs) -> out`` synchronises with the host, or ``None``."""
    packet = func.overloadpacket
    if packet in HOST_READS:
        return "reads tensor values on the host"
    if packet in BUILT_ON_HOST:
        return "a tensor built from Python data"
    if func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
        return "output size from the repeats' values"
    if packet in (aten.index, aten.index_put, aten.index_put_):
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
            return "boolean indexing (a nonzero inside)"
    if packet in (aten._to_copy, aten.copy_):  # never fires on a CPU-only run; does on a GPU
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        if len(_devices(args[:2]) | _devices(outputs)) > 1:
            return "a copy between devices"
    return None


class HostSyncDetector(TorchDispatchMode):
    """Records every dispatched operator (forward and backward) that waits for the device on a GPU,
    each with the innermost source line outside torch that called it."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        why = host_sync(func, args, kwargs, out)
        if why is not None:
            frames = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename]
            where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
            self.found.append(f"{func} ({why}) at {where}")
        return out


# ------------------------------------------------------------------------------------------------
# The step
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def build(training_model):
    """``build(preset, seed=0) -> STOPVideoModel`` at ``FRAMES`` frames (tests/models/conftest.py)."""
    return functools.partial(training_model, frames=FRAMES)


def caption_batch(
    lengths: list[int], width: int, pad: int = 0, eos: int = EOT, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[N, width]`` of captions of ``lengths`` (SOT and EOT included), padded with ``pad``
    after EOT, and their attention mask, as a tokenizer with ``padding="max_length"`` returns them."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), width), pad, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, 1 : n - 1] = torch.randint(3, SOT, (n - 2,), generator=g)
        ids[row, 0], ids[row, n - 1] = SOT, eos
        mask[row, :n] = 1
    return ids, mask


def host_side(model: STOPVideoModel, ids: torch.Tensor, mask: torch.Tensor):
    """What ``VideoTaskModule.tokenize`` does with the tokenizer's CPU tensors before the step."""
    return model.text_encoder.prepare(ids, mask) if model.text_encoder is not None else (ids, mask)


def training_step(model: STOPVideoModel, batch: dict) -> torch.Tensor:
    """Forward, loss and backward of a retrieval-style step: the clips against the captions."""
    out = model(batch["video"], batch["frame_mask"], batch["padded_frames"])
    video = nn.functional.normalize(out.embeds, dim=-1)  # [B, E]
    text = nn.functional.normalize(model.encode_text(batch["input_ids"], batch["attention_mask"]), dim=-1)
    logits = model.logit_scale * video @ text.t()  # [B, B]
    loss = 0.5 * (
        nn.functional.cross_entropy(logits, batch["target"])
        + nn.functional.cross_entropy(logits.t(), batch["target"])
    )
    loss.backward()
    return loss.detach()


def make_batch(model: STOPVideoModel, make_video, padded: bool, batch: int = 3) -> dict:
    """A batch as the step receives it: frame mask and caption ids prepared on the host."""
    frame_mask = torch.ones(batch, FRAMES, dtype=torch.bool)
    if padded:
        frame_mask[-1, -1] = frame_mask[0, 2:] = False  # a short clip's repeats: padding
    ids, mask = host_side(model, *caption_batch([5, 9, 4][:batch], width=16))
    return {
        "video": make_video(batch, FRAMES, seed=1),
        "frame_mask": frame_mask,
        "padded_frames": not bool(frame_mask.all()),  # RetrievalDataModule.on_before_batch_transfer
        "input_ids": ids,
        "attention_mask": mask,
        "target": torch.arange(batch),
    }


@pytest.mark.parametrize("padded", [False, True], ids=["all frames", "padded frames"])
@pytest.mark.parametrize("preset", PRESETS)
def test_a_training_step_never_waits_for_the_device(preset, padded, build, make_video):
    model = build(preset)
    assert model.text_encoder is not None and model.text_encoder.prompts_enabled  # the prompted text side
    batch = make_batch(model, make_video, padded)
    with HostSyncDetector() as detector:
        training_step(model, batch)
    assert detector.found == []
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)  # the backward ran


# ------------------------------------------------------------------------------------------------
# The detector catches what it is for
# ------------------------------------------------------------------------------------------------


def test_the_detector_catches_an_item_in_the_forward_and_the_backward(build, make_video):
    def peek(value: torch.Tensor) -> None:
        value.sum().item()  # what the detector is for

    def in_forward(module, args, out) -> None:
        peek(out)

    def in_backward(module, args, out) -> None:
        out.register_hook(peek)  # runs on the gradient, in the backward

    for hook in (in_forward, in_backward):
        model = build("dgl")
        batch = make_batch(model, make_video, padded=False)
        model.aggregator.register_forward_hook(hook)
        with HostSyncDetector() as detector:
            training_step(model, batch)
        assert len(detector.found) == 1 and "_local_scalar_dense" in detector.found[0], detector.found
        assert "test_host_sync.py" in detector.found[0]  # where it was called


def test_the_detector_catches_the_reads_this_change_removed(build, make_video):
    """The padded-frame check on the device's mask (a caller without ``padded_frames``), the captions'
    host checks and trimming (``prepare``), the stock tower reading a padding mask, and a tensor
    built from a list, each where it would sit in the step."""
    model = build("vop_c")
    batch = {**make_batch(model, make_video, padded=False), "padded_frames": None}
    with HostSyncDetector() as detector:
        training_step(model, batch)
    assert [f.split(" ")[0] for f in detector.found] == ["aten._local_scalar_dense.default"], detector.found
    assert "video_encoder.py" in detector.found[0]

    ids, mask = caption_batch([5, 9, 4], width=16)
    with HostSyncDetector() as detector:
        model.text_encoder.prepare(ids, mask)
        torch.tensor([1, 2]) + 1
    found = [f.split(" ")[0] for f in detector.found]
    assert "aten.nonzero.default" in found and "aten.lift_fresh.default" in found, found
    assert found.count("aten._local_scalar_dense.default") == 2, found  # `.any()` of eot < 1, int(eot.max())

    with HostSyncDetector() as detector, torch.no_grad():
        old_text_forward(model.text_encoder, ids, mask, model.text_encoder.prompts)
    assert any("masking_utils.py" in f for f in detector.found), detector.found  # HF's `fast_all(mask)`


# ------------------------------------------------------------------------------------------------
# Same numbers as before
# ------------------------------------------------------------------------------------------------


def old_text_forward(encoder, ids: torch.Tensor, mask: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """``PromptedTextEncoder.forward`` before this change, with ``trim_padding``: the captions checked
    and the columns after the batch's last EOT dropped inside the forward (host reads), and the tower
    run with the widened padding mask (which the stock tower reads on the host)."""
    eot = checked_eot_positions(ids, encoder.eos_token_id)
    S = int(eot.max()) + 1
    ids, mask = ids[:, :S], mask[:, :S]
    layout = PromptLayout.build(eot, S, encoder.num_prefix, encoder.num_postfix)
    wide_mask = mask.gather(1, layout.token_index).masked_fill(layout.is_prompt, 1)  # [N, S']
    encoder._active = (layout, prompts)
    try:
        hidden = encoder._parts.tower(input_ids=ids, attention_mask=wide_mask).last_hidden_state
    finally:
        encoder._active = None
    return encoder._parts.projection(hidden[torch.arange(len(hidden)), layout.pool_index])  # [N, E]


def generated_batches(width: int, seed: int):
    """Caption batches of random lengths and the awkward ones: one caption, a caption that fills the
    width (no padding), all of one length, and the shortest caption (SOT, EOT)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(12):
        n = int(torch.randint(1, 9, (), generator=g))
        yield torch.randint(2, width + 1, (n,), generator=g).tolist()
    yield [int(torch.randint(2, width + 1, (), generator=g))]
    yield [width]
    yield [width, 3, 7]
    yield [6] * 5
    yield [2, 2]


@pytest.mark.parametrize(
    ("eos", "pad"),
    [(EOT, EOT), (EOT, 0), (2, EOT), (2, 0)],
    ids=["EOT pads", "0 pads", "legacy id 2, EOT pads", "legacy id 2, 0 pads"],
)
def test_text_features_equal_the_forward_that_trimmed_itself(eos, pad, build):
    """Host-trimmed ids (``prepare``) through the new forward give the old forward's features exactly
    (measured: bit-identical, 17 generated batches per config, with 1 and 2 threads, also for
    ``stop`` and ``stop_fast``); ids left at the tokenizer's padded width (a direct caller that skips
    ``prepare``) give them to fp32 rounding (measured max abs difference 1.7e-6, features up to 3)."""
    width = 16
    for preset in ("dgl", "vop_c"):
        model = build(preset)
        text = model.text_encoder
        text.eos_token_id = eos  # legacy configs (id 2) pool at the highest id, the vocabulary's last
        prompts = model.shared_space()[1] if model.shared_space is not None else text.prompts
        for number, lengths in enumerate(generated_batches(width, seed=eos + pad)):
            ids, mask = caption_batch(lengths, width, pad=pad, eos=EOT, seed=number)
            with torch.no_grad():
                before = old_text_forward(text, ids, mask, prompts)
                trimmed = text.prepare(ids, mask)
                assert trimmed[0].shape[1] == max(lengths)
                after = model.encode_text(*trimmed)
                untrimmed = model.encode_text(ids, mask)
            assert torch.equal(after, before), (preset, lengths)
            torch.testing.assert_close(untrimmed, before, rtol=0, atol=5e-6, msg=str((preset, lengths)))


def test_bad_captions_still_fail_without_prepare(build):
    """A caller that passes the model ids without end-of-text, or with it first, still gets an error:
    ``torch._assert_async`` raises at once on the CPU (a device-side assert on a GPU)."""
    model = build("dgl")
    ids, mask = caption_batch([5, 4], width=8)
    first = ids.clone()
    first[1, 0] = EOT  # the second caption's end-of-text comes first
    for bad in (ids.masked_fill(ids == EOT, 5), first):
        with pytest.raises(RuntimeError, match="no end-of-text token, or has it at position 0"):
            model.encode_text(bad, mask)
        with pytest.raises(ValueError, match="end-of-text"):
            model.text_encoder.prepare(bad, mask)
    assert eot_positions(ids, EOT).tolist() == [4, 3]


@pytest.mark.parametrize("preset", VOP)
def test_vop_outputs_equal_the_mask_read_back(preset, build, make_video):
    """``padded_frames`` from the host gives what reading the mask gave (``None``: the old path), with
    and without padded frames, exactly; and the masked path on a batch without padding (a ``True`` that
    need not be) gives the unmasked path's numbers (measured: bit-identical on the CPU)."""
    model = build(preset).eval()
    video = make_video(3, FRAMES, seed=2)
    full = torch.ones(3, FRAMES, dtype=torch.bool)
    padded = full.clone()
    padded[1, 1:] = padded[2, -1] = False
    with torch.no_grad():
        for mask, flag in ((full, False), (padded, True)):
            before = model(video, mask).embeds
            assert torch.equal(model(video, mask, flag).embeds, before)
        assert not torch.allclose(model(video, padded, True).embeds, model(video, full, False).embeds)
        assert torch.equal(model(video, full, True).embeds, model(video, full, False).embeds)


def test_text_adapters_without_prompts_never_wait_for_the_device(build, make_video):
    """A text side that trains only its adapters runs the stock tower each step: without the padding
    mask (which HF reads on the host to pick a kernel), and with the features the mask gave."""
    model = build("dgl", overrides=("text_prompts.enabled=false",))
    assert model.text_side_trains and not model.text_encoder.prompts_enabled
    batch = make_batch(model, make_video, padded=False)
    with HostSyncDetector() as detector:
        training_step(model, batch)
    assert detector.found == []
    ids, mask = caption_batch([5, 9, 4, 16, 3], width=16, pad=EOT)
    tower, projection = model.text_encoder._parts.tower, model.text_encoder._parts.projection
    with torch.no_grad():
        masked = projection(tower(input_ids=ids, attention_mask=mask).pooler_output)  # what it was
        assert torch.equal(model.encode_text(ids, mask), masked)
