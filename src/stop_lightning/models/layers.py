"""Two size rules the prompt modules share: "same" padding of odd kernels, and attention head counts."""

from __future__ import annotations


def same_padding(kernel: tuple[int, ...], key: str) -> tuple[int, ...]:
    """Padding that keeps every axis's length under a stride-1 conv: ``k // 2`` per axis (odd k only).

    ``key`` names the config key the kernel comes from, for the error on an even size.
    """
    even = [k for k in kernel if k % 2 == 0]
    if even:
        raise ValueError(
            f"{key} = {list(kernel)}: every kernel size must be odd (same padding); change {even}"
        )
    return tuple(k // 2 for k in kernel)


def attention_heads(width: int) -> int:
    """CLIP's rule, heads of width 64 (ViT-B: 768 -> 12, ViT-L: 1024 -> 16); widths that are not a multiple
    of 64 (tiny test models) take the largest divisor of ``width`` below ``width / 64``, at least 1."""
    heads = max(1, width // 64)
    while width % heads:
        heads -= 1
    return heads
