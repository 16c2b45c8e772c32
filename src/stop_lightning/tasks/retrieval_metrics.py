"""Retrieval metrics from a similarity matrix: R@K, median and mean rank, both directions.

Ranks are 1-based. Ties count pessimistically (a tie with the correct item ranks the correct
item after it), so a constant similarity matrix never scores well by accident.
"""

from __future__ import annotations

import torch


def _ranks(sim: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Rank of the best positive per row. ``sim``: ``[Q, G]``, ``positives``: bool ``[Q, G]``."""
    best_pos = sim.masked_fill(~positives, float("-inf")).max(dim=1, keepdim=True).values  # [Q, 1]
    # Every non-positive scoring at least as high as the best positive ranks before it.
    ahead = ((sim >= best_pos) & ~positives).sum(dim=1)
    return ahead + 1


def retrieval_metrics(sim: torch.Tensor, caption_to_video: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """``sim``: ``[num_captions, num_videos]`` text-video similarities; ``caption_to_video``: ``[num_captions]``.

    Text-to-video: each caption's rank of its video. Video-to-text: each video's rank of its
    best-ranked caption (MSRVTT multi-caption convention).
    """
    sim = sim.float()
    n_cap, n_vid = sim.shape
    positives = torch.zeros(n_cap, n_vid, dtype=torch.bool, device=sim.device)
    positives[torch.arange(n_cap, device=sim.device), caption_to_video.to(sim.device)] = True
    out: dict[str, float] = {}
    for name, ranks in (("t2v", _ranks(sim, positives)), ("v2t", _ranks(sim.t(), positives.t()))):
        ranks = ranks.float()
        for k in (1, 5, 10):
            out[f"{prefix}{name}_R{k}"] = 100.0 * (ranks <= k).float().mean().item()
        out[f"{prefix}{name}_MdR"] = torch.quantile(ranks, 0.5).item()  # midpoint for an even count
        out[f"{prefix}{name}_MnR"] = ranks.mean().item()
    return out


def dual_softmax(sim: torch.Tensor, temperature: float = 100.0) -> torch.Tensor:
    """Inference-time re-ranking: weight each text-video score by its softmax over the other axis."""
    return sim * torch.softmax(sim * temperature, dim=0)
