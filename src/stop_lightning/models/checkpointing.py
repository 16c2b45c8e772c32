"""Activation checkpointing of the frozen CLIP encoder layers (``model.clip.activation_checkpointing``).

A 64-frame video at ViT-B/32 is 64 x 50 tokens through 12 layers; backpropagating to the prompts
needs every layer's activations (attention probabilities, MLP hidden states), although the layers
themselves have no trainable parameter. With checkpointing a layer keeps only its input and runs
its forward a second time during the backward pass: memory for one extra forward.

Only the layer's own ``forward`` is wrapped, not ``layer.__call__``: the video model's forward
pre-hooks (which insert the prompts of that layer from per-step state) and forward hooks stay
outside the checkpoint and run once, so the recomputation sees exactly the inputs the first pass
saw. The recomputed function is the stock layer (plus hooks on its submodules, e.g. adapters on
``mlp``, which hold no per-step state). ``use_reentrant=False``: gradients reach the prompts through
inputs that do not require grad on every path, and keyword arguments (``video_blocks``) pass
through. HF's own ``gradient_checkpointing_enable`` is not used: it wraps ``__call__`` (hooks
included) and only acts in training mode, and the frozen CLIP stays in eval mode.
"""

from __future__ import annotations

import types
from collections.abc import Iterable
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _checkpointed_forward(layer: nn.Module, *args, **kwargs):
    """``layer``'s own class ``forward`` under :func:`checkpoint` (bound as a method of ``layer``, so a
    deep copy of the model rebinds it to the copied layer)."""
    forward = partial(type(layer).forward, layer)
    if not torch.is_grad_enabled():  # evaluation: nothing to save, nothing to recompute
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


class CheckpointedLayers:
    """Wraps each layer's ``forward`` in :func:`torch.utils.checkpoint.checkpoint`; :meth:`restore`
    undoes it."""

    def __init__(self, layers: Iterable[nn.Module]):
        self._layers = list(layers)
        for layer in self._layers:
            # An instance attribute shadows the class's forward; nn.Module.__call__ runs the hooks around it.
            layer.forward = types.MethodType(_checkpointed_forward, layer)

    def restore(self) -> None:
        for layer in self._layers:
            layer.__dict__.pop("forward", None)
        self._layers.clear()

    def __len__(self) -> int:
        return len(self._layers)
