"""Retrieval metrics on hand-made similarity matrices."""

import pytest
import torch

from stop_lightning.tasks.retrieval_metrics import dual_softmax, retrieval_metrics


def test_perfect_diagonal():
    sim = torch.eye(4) + 0.01 * torch.arange(4.0)  # distinct off-diagonals
    m = retrieval_metrics(sim, torch.arange(4))
    for d in ("t2v", "v2t"):
        assert m[f"{d}_R1"] == 100.0 and m[f"{d}_MdR"] == 1.0 and m[f"{d}_MnR"] == 1.0


def test_reversed_ranking_gives_last_rank():
    n = 12
    idx = torch.arange(n, dtype=torch.float)
    sim = -(idx[:, None] - idx[None, :]).abs()  # closest index most similar...
    sim.fill_diagonal_(-100.0)  # ...but the true match is the least similar
    m = retrieval_metrics(sim, torch.arange(n))
    assert m["t2v_R1"] == 0.0 and m["t2v_R10"] == 0.0
    assert m["t2v_MdR"] == n and m["t2v_MnR"] == n
    assert m["v2t_MnR"] == n


def test_hand_computed_ranks_both_directions():
    # rows: captions, cols: videos. Caption 0 -> video 0 at rank 1; caption 1 -> video 1 at rank 3;
    # caption 2 -> video 2 at rank 2.
    sim = torch.tensor([[0.9, 0.1, 0.2], [0.8, 0.3, 0.5], [0.1, 0.7, 0.6]])
    m = retrieval_metrics(sim, torch.arange(3))
    assert m["t2v_R1"] == pytest.approx(100 / 3)
    assert m["t2v_MnR"] == pytest.approx(2.0) and m["t2v_MdR"] == 2.0
    # Columns: video 0 ranks caption 0 first (0.9 > 0.8); video 1 ranks caption 1 second (0.7 > 0.3);
    # video 2 ranks caption 2 first (0.6 > 0.5 > 0.2).
    assert m["v2t_R1"] == pytest.approx(200 / 3) and m["v2t_MnR"] == pytest.approx(4 / 3)


def test_ties_count_against_the_match():
    sim = torch.zeros(5, 5)
    m = retrieval_metrics(sim, torch.arange(5))
    assert m["t2v_R1"] == 0.0 and m["t2v_MnR"] == 5.0


def test_multi_caption_video_to_text_uses_best_caption():
    # 2 videos, 4 captions (2 each). Video 0's captions are 0,1; video 1's are 2,3.
    sim = torch.tensor([[0.1, 0.0], [0.9, 0.2], [0.8, 0.7], [0.3, 0.6]])
    cap2vid = torch.tensor([0, 0, 1, 1])
    m = retrieval_metrics(sim, cap2vid)
    # t2v: caption 0 ranks video 0 first (0.1 > 0.0); caption 1 first; caption 2 second; caption 3 first.
    assert m["t2v_R1"] == 75.0
    # v2t: video 0's best caption is 1 (0.9, top of column) -> rank 1; video 1's best is caption 2
    # (0.7), behind no non-matching caption (0.2 and 0.0) -> rank 1.
    assert m["v2t_R1"] == 100.0 and m["v2t_MnR"] == 1.0


def test_dual_softmax_fixes_a_hub_video():
    # Video 0 is similar to both captions (a hub) and steals caption 1; dual softmax weights each
    # score by how much that video prefers this caption over the others, which gives it back.
    sim = torch.tensor([[0.9, 0.5], [0.8, 0.7]])
    assert retrieval_metrics(sim, torch.arange(2))["t2v_R1"] == 50.0
    assert retrieval_metrics(dual_softmax(sim), torch.arange(2))["t2v_R1"] == 100.0
