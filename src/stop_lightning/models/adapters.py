"""Parallel bottleneck adapters beside the MLP of every residual block (docs/method.md, "DGL base").

A CLIP encoder layer computes::

    h = x + attn(ln1(x))            # the post-attention stream
    y = h + mlp(ln2(h))

and the adapter adds a second branch beside the MLP, reading the same input the MLP reads::

    y = h + mlp(ln2(h)) + scale * up(prelu(down(ln2(h))))

It is attached as a forward hook on ``layer.mlp`` (``mlp`` output + adapter of ``mlp`` input), so
the stock HF layer runs unchanged and :meth:`HookSet.remove` restores stock CLIP. The adapter
reads ``ln2(h)``, the normalised post-attention stream, rather than raw ``h``: that is the
stream "beside the MLP", and it keeps the adapter's input at unit scale in every layer.
The up-projection starts at zero, so a fresh adapter leaves CLIP's output exactly unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from stop_lightning.models.hooks import HookSet
from stop_lightning.schema import AdapterConfig


class Adapter(nn.Module):
    """``scale * up(prelu(down(x)))``: width ``D -> bottleneck -> D``; ``[..., D] -> [..., D]``."""

    def __init__(self, width: int, bottleneck: int, scale: float) -> None:
        super().__init__()
        if bottleneck < 1:
            raise ValueError(f"adapter bottleneck must be >= 1, got {bottleneck} (model.adapter.bottleneck)")
        self.scale = scale
        self.down = nn.Linear(width, bottleneck)
        self.act = nn.PReLU()
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Adapters stay in their own (fp32) dtype when CLIP is cast to half precision.
        out = self.up(self.act(self.down(x.to(self.down.weight.dtype))))
        return (self.scale * out).to(x.dtype)


def _adapter_hook(adapter: Adapter):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        mlp_input = args[0]  # ln2(post-attention stream): [..., D]
        return output + adapter(mlp_input)

    return hook


def attach_adapters(
    layers: nn.ModuleList, width: int, adapter_cfg: AdapterConfig, hooks: HookSet
) -> nn.ModuleList:
    """Add an :class:`Adapter` beside the MLP of every layer in ``layers``.

    ``width`` is the layers' hidden size (``config.hidden_size`` of the tower). The hooks go into
    ``hooks``; the returned adapters must be registered by the caller (as a submodule) so that
    they train, move with ``.to()`` and are saved in checkpoints.
    """
    adapters = nn.ModuleList(Adapter(width, adapter_cfg.bottleneck, adapter_cfg.scale) for _ in layers)
    for layer, adapter in zip(layers, adapters):
        mlp = getattr(layer, "mlp", None)
        if not isinstance(mlp, nn.Module):
            raise AttributeError(
                f"cannot attach an adapter: {type(layer).__name__} has no 'mlp' submodule "
                f"(children: {[n for n, _ in layer.named_children()]})"
            )
        hooks.forward(mlp, _adapter_hook(adapter))
    return adapters


def adapter_parameter_count(width: int, layers: int, bottleneck: int) -> int:
    """Trainable parameters of the adapters of one tower (down + PReLU + up, per layer)."""
    per_layer = width * bottleneck + bottleneck + 1 + bottleneck * width + width
    return layers * per_layer
