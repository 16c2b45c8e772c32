"""Retrieval metrics from a similarity matrix: R@K, median and mean rank, both directions.

Ranks are 1-based. How a tie and a video with several captions are ranked is a choice
(``task.tie_rank``, ``task.v2t_captions``); docs/metrics.md gives the exact rules and which
papers' numbers each convention is comparable with. The defaults: a tie with the correct item
ranks the correct item after it (pessimistic), so a constant similarity matrix never scores well
by accident; video-to-text ranks every caption of the split.

Inference-time re-ranking: :func:`dual_softmax` and :func:`querybank_normalise` (QB-Norm).
"""

from __future__ import annotations

import torch

from stop_lightning.schema import CHOICES

TIE_RULES = CHOICES["task.tie_rank"]
V2T_CONVENTIONS = CHOICES["task.v2t_captions"]
RECALL_AT = (1, 5, 10)


def _rank_entries(
    sim: torch.Tensor, positives: torch.Tensor, tie_rank: str, miss: torch.Tensor | None = None
) -> torch.Tensor:
    """1-based ranks of the best positive per row. ``sim``, ``positives`` (bool): ``[Q, G]``; a row
    marked in ``miss`` ``[Q]`` (an unreadable video) ranks last: rank ``G``, one entry.

    One entry per row, except under ``clip4clip``, where a row whose best positive ties with
    ``e`` non-positives gives ``e + 1`` entries, one per position the tie occupies.
    """
    best_pos = sim.masked_fill(~positives, float("-inf")).max(dim=1, keepdim=True).values  # [Q, 1]
    above = ((sim > best_pos) & ~positives).sum(dim=1)  # [Q]
    tied = ((sim == best_pos) & ~positives).sum(dim=1)  # [Q]
    if miss is not None:
        above = torch.where(miss, sim.shape[1] - 1, above)
        tied = torch.where(miss, 0, tied)
    if tie_rank == "pessimistic":
        return above + tied + 1
    if tie_rank == "optimistic":
        return above + 1
    if tie_rank == "clip4clip":
        counts = tied + 1
        starts = torch.repeat_interleave(above + 1, counts)  # [sum(counts)]
        first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        return starts + torch.arange(int(counts.sum()), device=sim.device) - first
    raise ValueError(f"task.tie_rank = {tie_rank!r}; expected one of {', '.join(TIE_RULES)}")


def _summary(ranks: torch.Tensor, name: str, prefix: str) -> dict[str, float]:
    ranks = ranks.double()
    out = {f"{prefix}{name}_R{k}": 100.0 * (ranks <= k).double().mean().item() for k in RECALL_AT}
    out[f"{prefix}{name}_MdR"] = torch.quantile(ranks, 0.5).item()  # midpoint for an even count
    out[f"{prefix}{name}_MnR"] = ranks.mean().item()
    return out


def best_caption_similarity(sim: torch.Tensor, caption_to_video: torch.Tensor) -> torch.Tensor:
    """``[C, V]`` -> ``[V, V]``: entry ``(v, u)`` is video v's similarity to u's best caption for v
    (``-inf`` where u has no caption)."""
    n_vid = sim.shape[1]
    per_video = torch.full((n_vid, n_vid), float("-inf"), dtype=sim.dtype, device=sim.device)
    owners = caption_to_video.to(sim.device)[None, :].expand(n_vid, -1)  # [V, C]
    return per_video.scatter_reduce(1, owners, sim.t(), reduce="amax")  # [V, C] -> [V, V]


def retrieval_metrics(
    sim: torch.Tensor,
    caption_to_video: torch.Tensor,
    prefix: str = "",
    tie_rank: str = "pessimistic",
    v2t_captions: str = "all_captions",
    directions: tuple[str, ...] = ("t2v", "v2t"),
    unreadable: torch.Tensor | None = None,
) -> dict[str, float]:
    """``sim``: ``[num_captions, num_videos]`` text-video similarities;
    ``caption_to_video``: ``[num_captions]``.

    Text-to-video: each caption's rank of its video among all videos. Video-to-text, for every
    video with at least one caption: ``all_captions``: the rank of its best-ranked caption among
    all captions of the split; ``best_caption`` (CLIP4Clip): each video (its own included) is
    represented by its caption most similar to the query video, and the rank is the own video's
    among those. Ties follow ``tie_rank``.

    ``unreadable`` ``[num_videos]`` (bool): videos that could not be read. Their blank embeddings are
    never a guess: a caption of such a video ranks it last (rank = number of videos), such a video's
    own query ranks last (rank = number of candidates), and as a candidate for other queries it
    ranks below every readable video.
    """
    if not sim.dtype == torch.float64:
        sim = sim.float()
    n_cap, n_vid = sim.shape
    caption_to_video = caption_to_video.to(sim.device)
    positives = torch.zeros(n_cap, n_vid, dtype=torch.bool, device=sim.device)
    positives[torch.arange(n_cap, device=sim.device), caption_to_video] = True
    captioned = positives.any(dim=0)  # [V]: videos that have a caption to retrieve
    bad = (
        torch.zeros(n_vid, dtype=torch.bool, device=sim.device)
        if unreadable is None
        else unreadable.to(sim.device)
    )
    if bool(bad.any()):
        sim = sim.masked_fill(bad[None, :], float("-inf"))  # below every readable video, for every caption
    out: dict[str, float] = {}
    if "t2v" in directions:
        out.update(
            _summary(_rank_entries(sim, positives, tie_rank, miss=bad[caption_to_video]), "t2v", prefix)
        )
    if "v2t" in directions:
        if v2t_captions == "all_captions":
            ranks = _rank_entries(sim.t()[captioned], positives.t()[captioned], tie_rank, miss=bad[captioned])
        elif v2t_captions == "best_caption":
            per_video = best_caption_similarity(sim, caption_to_video)[captioned][:, captioned]  # [V', V']
            own = torch.eye(per_video.shape[0], dtype=torch.bool, device=sim.device)
            ranks = _rank_entries(per_video, own, tie_rank, miss=bad[captioned])
        else:
            raise ValueError(
                f"task.v2t_captions = {v2t_captions!r}; expected one of {', '.join(V2T_CONVENTIONS)}"
            )
        out.update(_summary(ranks, "v2t", prefix))
    return out


def dual_softmax(sim: torch.Tensor, temperature: float = 100.0) -> torch.Tensor:
    """Inference-time re-ranking: weight each text-video score by its softmax over the other axis."""
    return sim * torch.softmax(sim * temperature, dim=0)


def querybank_normalise(
    sim: torch.Tensor, bank_sim: torch.Tensor, beta: float = 20.0, k: int = 1
) -> torch.Tensor:
    """QB-Norm with the dynamic inverted softmax (Bogolin et al., "Cross Modal Retrieval with
    Querybank Normalisation", CVPR 2022). ``sim``: ``[Q, G]`` query-gallery similarities;
    ``bank_sim``: ``[B, G]`` similarities of a bank of training queries to the same gallery.

    Inverted softmax: ``exp(beta s(q, g)) / sum_b exp(beta s(b, g))`` divides out how strongly the
    bank's queries are drawn to each gallery item (a hub scores high for every query). Dynamic rule:
    the gallery items that are among the ``k`` nearest of some bank query form the activation set;
    a query is normalised only if its own nearest gallery item is in that set, every other query
    keeps its raw similarities. Rows are ranked independently, so mixing the two is sound for
    query-to-gallery ranking (not for ranking down a column). Returns float64 ``[Q, G]``.
    """
    sim, bank_sim = sim.double(), bank_sim.to(sim.device).double()
    active = torch.zeros(sim.shape[1], dtype=torch.bool, device=sim.device)
    active[bank_sim.topk(min(k, bank_sim.shape[1]), dim=1).indices.flatten()] = True  # [G]
    normalise = active[sim.argmax(dim=1)]  # [Q]
    log_bank = torch.logsumexp(beta * bank_sim, dim=0)  # [G]
    inverted = torch.exp(beta * sim - log_bank)  # [Q, G]
    return torch.where(normalise[:, None], inverted, sim)
