"""Index and mask tensors that depend only on sizes, built once per shape instead of every step or layer.

A prompt layout (where the slots and global tokens sit in a layer's sequence, which keys a query may
see) is a function of a few integers; building it from ``arange``/comparisons costs several small
kernels each time. :class:`LayoutCache` keeps each one by its sizes, device and dtype, so a new
shape (another T, a last short batch) or a move to another device builds its own, and nothing
stale is reused.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch


class LayoutCache:
    """``get(key, device, dtype, build)``: ``build(device, dtype)`` on the first call for that key,
    the stored tensor afterwards. Plain Python state: not saved, not moved by ``.to()`` (the device is
    part of the key). Inside ``torch.compile`` the layout is built in the graph instead."""

    def __init__(self) -> None:
        self._tensors: dict[tuple, torch.Tensor] = {}

    def get(
        self,
        key: Hashable,
        device: torch.device,
        dtype: torch.dtype,
        build: Callable[[torch.device, torch.dtype], torch.Tensor],
    ) -> torch.Tensor:
        if torch.compiler.is_compiling():  # traced into the graph, where the compiler folds it: no state
            return build(device, dtype)
        # Tensors made under inference mode cannot be saved for a backward later: a key of their own.
        full = (key, torch.device(device), dtype, torch.is_inference_mode_enabled())
        tensor = self._tensors.get(full)
        if tensor is None:
            tensor = self._tensors[full] = build(device, dtype)
        return tensor

    def __len__(self) -> int:
        return len(self._tensors)


def keep_factors(
    num_global: int, frames: int, frame_len: int, num_slots: int, keep_globals: bool
) -> Callable[[torch.device, torch.dtype], torch.Tensor]:
    """Builder of ``keep [G + T*S, 1]`` for :class:`LayoutCache`: 0 at the ``num_slots`` slots after each
    frame's CLS (positions ``G + t*S + 1 .. G + t*S + K``) and, unless ``keep_globals``, at the G
    global positions; 1 elsewhere. ``hidden * keep + update`` then writes a layer's prompts in one
    operation: slots replaced, globals replaced or added to."""
    G, T, S, K = num_global, frames, frame_len, num_slots

    def build(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        within = torch.arange(S, device=device)  # position inside a frame: 0 = CLS, 1..K = slots
        frame = ((within < 1) | (within > K)).repeat(T)  # [T*S]
        globals_ = torch.full((G,), keep_globals, device=device)
        return torch.cat([globals_, frame]).to(dtype).unsqueeze(-1)  # [G + T*S, 1]

    return build
