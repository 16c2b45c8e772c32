"""AdamW parameter groups and the warm-up + cosine schedule, from ``cfg.optim``."""

from __future__ import annotations

import math

import torch
from torch import nn

# Parameters whose names contain one of these never get weight decay: learnable prompt tokens
# are inputs of the frozen network, norms and biases are scales and offsets.
NO_DECAY_MARKERS = ("prompt", "token", "norm", "bias", "embedding", "ln_", "layernorm")


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        lowered = name.lower()
        if param.ndim < 2 or any(marker in lowered for marker in NO_DECAY_MARKERS):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def warmup_cosine(
    step: int, total_steps: int, warmup_ratio: float, min_ratio: float = 0.0, cosine: bool = True
) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then cosine to ``min_ratio``."""
    total_steps = max(1, total_steps)
    warmup = int(round(warmup_ratio * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    if not cosine:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(module: nn.Module, optim_cfg, total_steps: int):
    groups = parameter_groups(module, optim_cfg.weight_decay)
    if not groups:
        return None
    optimizer = torch.optim.AdamW(groups, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas))
    cosine = optim_cfg.scheduler == "cosine"
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: warmup_cosine(step, total_steps, optim_cfg.warmup_ratio, optim_cfg.min_lr_ratio, cosine),
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
