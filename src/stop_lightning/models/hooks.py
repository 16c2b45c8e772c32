"""Finding CLIP's submodules in one place, and attaching/removing hooks cleanly.

HF transformers has moved CLIP's submodules between releases (``CLIPModel.vision_model`` is a
``CLIPVisionModel`` in 5.24 with ``embeddings``/``pre_layrnorm``/``encoder``/``post_layernorm`` as
direct children; older 5.x nest another ``vision_model``). Every other module asks
:func:`vision_parts` / :func:`text_parts` instead of spelling paths itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


def _descend(module: nn.Module, child_names: Iterable[str], wrapper: str) -> nn.Module:
    """Follow nested wrappers (``vision_model.vision_model``) until a child in ``child_names`` shows."""
    names = tuple(child_names)
    current = module
    for _ in range(4):
        if all(hasattr(current, n) for n in names):
            return current
        inner = getattr(current, wrapper, None)
        if not isinstance(inner, nn.Module):
            break
        current = inner
    missing = [n for n in names if not hasattr(current, n)]
    raise AttributeError(
        f"cannot find CLIP submodules {missing} under {type(module).__name__}; "
        f"this transformers release lays CLIP out differently than expected "
        f"(children: {[n for n, _ in current.named_children()]})"
    )


@dataclass
class VisionParts:
    embeddings: nn.Module  # CLIPVisionEmbeddings: patch conv + CLS + position embedding
    pre_layernorm: nn.Module
    layers: nn.ModuleList  # CLIPEncoderLayer x L
    post_layernorm: nn.Module
    projection: nn.Module | None  # visual_projection (None for a bare CLIPVisionModel)


@dataclass
class TextParts:
    embeddings: nn.Module  # token + position embedding
    layers: nn.ModuleList
    final_layernorm: nn.Module
    projection: nn.Module | None
    tower: nn.Module | None = None  # the CLIPTextModel itself: call it to run the stock forward with hooks


def vision_parts(clip: nn.Module) -> VisionParts:
    tower = _descend(clip, ("embeddings", "pre_layrnorm", "encoder", "post_layernorm"), "vision_model")
    return VisionParts(
        embeddings=tower.embeddings,
        pre_layernorm=tower.pre_layrnorm,
        layers=tower.encoder.layers,
        post_layernorm=tower.post_layernorm,
        projection=getattr(clip, "visual_projection", None),
    )


def text_parts(clip: nn.Module) -> TextParts:
    tower = _descend(clip, ("embeddings", "encoder", "final_layer_norm"), "text_model")
    return TextParts(
        embeddings=tower.embeddings,
        layers=tower.encoder.layers,
        final_layernorm=tower.final_layer_norm,
        projection=getattr(clip, "text_projection", None),
        tower=tower,
    )


class HookSet:
    """A group of hooks that is attached together and removed together.

    >>> hooks = HookSet()
    >>> hooks.forward(parts.pre_layernorm, insert_prompts)
    >>> with hooks: ...             # removed on exit
    After :meth:`remove` the hooked modules behave exactly as stock modules again.
    """

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def forward(self, module: nn.Module, fn: Callable, *, with_kwargs: bool = False) -> RemovableHandle:
        handle = module.register_forward_hook(fn, with_kwargs=with_kwargs)
        self._handles.append(handle)
        return handle

    def forward_pre(self, module: nn.Module, fn: Callable, *, with_kwargs: bool = False) -> RemovableHandle:
        handle = module.register_forward_pre_hook(fn, with_kwargs=with_kwargs)
        self._handles.append(handle)
        return handle

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __len__(self) -> int:
        return len(self._handles)

    def __enter__(self) -> HookSet:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def freeze(module: nn.Module) -> nn.Module:
    """No gradient, eval mode (no dropout). The owner keeps it in eval mode under ``train()``
    (see ``STOPVideoModel.train``)."""
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()
    return module


def trainable_parameter_count(module: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts, shared tensors counted once."""
    seen: set[int] = set()
    trainable = frozen = 0
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return trainable, frozen


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
