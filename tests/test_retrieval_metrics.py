"""Retrieval metrics on hand-made similarity matrices: ranks, tie and multi-caption conventions, QB-Norm."""

import math

import numpy as np
import pytest
import torch

from stop_lightning.tasks.retrieval_metrics import dual_softmax, querybank_normalise, retrieval_metrics


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


# ------------------------------------------------------------------------------ conventions, by hand
# 3 videos; captions c0, c1 of video 0, c2 of video 1, c3, c4 of video 2. Rows: captions, columns: videos.
MULTI_SIM = torch.tensor(
    [
        [0.9, 0.1, 0.6],  # c0
        [0.2, 0.8, 0.7],  # c1
        [0.3, 0.6, 0.1],  # c2
        [0.85, 0.2, 0.4],  # c3
        [0.1, 0.5, 0.5],  # c4
    ]
)
MULTI_OWNERS = torch.tensor([0, 0, 1, 2, 2])


def test_video_to_text_over_all_captions():
    # Video 0: its c0 (0.9) tops the column -> 1. Video 1: c2 (0.6) behind c1 (0.8) -> 2.
    # Video 2: best own c4 (0.5) behind c0 (0.6) and c1 (0.7), both of video 0 -> 3.
    m = retrieval_metrics(MULTI_SIM, MULTI_OWNERS, v2t_captions="all_captions")
    assert m["v2t_R1"] == pytest.approx(100 / 3) and m["v2t_MnR"] == 2.0 and m["v2t_MdR"] == 2.0


def test_video_to_text_with_each_video_represented_by_its_best_caption():
    # Video 2's candidates: video 0 as max(0.6, 0.7) = 0.7, video 1 as 0.1, itself as max(0.4, 0.5) = 0.5
    # -> rank 2 (video 0's two captions count once). Videos 0 and 1 as above: 1 and 2.
    m = retrieval_metrics(MULTI_SIM, MULTI_OWNERS, v2t_captions="best_caption")
    assert (
        m["v2t_R1"] == pytest.approx(100 / 3) and m["v2t_MnR"] == pytest.approx(5 / 3) and m["v2t_MdR"] == 2.0
    )
    # Text-to-video does not depend on the video-to-text convention: ranks 1, 3, 1, 2, 2 (c4 ties
    # video 1 at 0.5: pessimistic).
    for conv in ("all_captions", "best_caption"):
        t2v = retrieval_metrics(MULTI_SIM, MULTI_OWNERS, v2t_captions=conv)
        assert t2v["t2v_R1"] == 40.0 and t2v["t2v_MnR"] == pytest.approx(9 / 5) and t2v["t2v_MdR"] == 2.0


@pytest.mark.parametrize(
    "tie_rank, ranks",
    [("pessimistic", [3, 1]), ("optimistic", [1, 1]), ("clip4clip", [1, 2, 3, 1])],
)
def test_tie_rules_by_hand(tie_rank, ranks):
    # Caption 0 ties all three videos; caption 1 ranks its video first. clip4clip (CLIP4Clip's
    # compute_metrics) counts one entry per position the tie occupies.
    sim = torch.tensor([[0.5, 0.5, 0.5], [0.1, 0.9, 0.2]])
    m = retrieval_metrics(sim, torch.tensor([0, 1]), tie_rank=tie_rank, directions=("t2v",))
    assert set(m) == {f"t2v_{k}" for k in ("R1", "R5", "R10", "MdR", "MnR")}
    assert m["t2v_R1"] == pytest.approx(100 * sum(r == 1 for r in ranks) / len(ranks))
    assert m["t2v_MnR"] == pytest.approx(sum(ranks) / len(ranks))


# ------------------------------------------------------------------------------ QB-Norm, by hand
BANK = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.2, 0.1]])  # both bank queries' nearest video: 0 (a hub)
QUERIES = torch.tensor([[0.5, 0.45, 0.0], [0.1, 0.3, 0.6]])


def test_querybank_normalisation_by_hand():
    beta = 10.0
    out = querybank_normalise(QUERIES, BANK, beta=beta, k=1)
    # Activation set {video 0}. Query 0's nearest is video 0 -> inverted softmax over the bank:
    denominators = [math.exp(9) + math.exp(8), math.exp(1) + math.exp(2), math.exp(0) + math.exp(1)]
    expected0 = [math.exp(beta * s) / d for s, d in zip([0.5, 0.45, 0.0], denominators)]
    assert out[0].tolist() == pytest.approx(expected0, rel=1e-6)
    # ...which demotes the hub: video 1 (8.9) now beats video 0 (0.013).
    assert expected0[1] > expected0[0]
    # Query 1's nearest is video 2, outside the activation set: raw similarities kept.
    assert out[1].tolist() == pytest.approx([0.1, 0.3, 0.6])
    m = retrieval_metrics(out, torch.tensor([1, 2]), directions=("t2v",))
    assert m["t2v_R1"] == 100.0  # raw: 50.0 (query 0 ranks video 1 second)
    assert retrieval_metrics(QUERIES, torch.tensor([1, 2]), directions=("t2v",))["t2v_R1"] == 50.0


def test_querybank_activation_set_grows_with_k():
    # k=2: the bank's top-2 are videos 0 and 1; a query whose nearest is video 1 is now normalised.
    query = torch.tensor([[0.2, 0.7, 0.1]])
    assert querybank_normalise(query, BANK, beta=10.0, k=1)[0].tolist() == pytest.approx([0.2, 0.7, 0.1])
    out = querybank_normalise(query, BANK, beta=10.0, k=2)
    denominators = [math.exp(9) + math.exp(8), math.exp(1) + math.exp(2), math.exp(0) + math.exp(1)]
    assert out[0].tolist() == pytest.approx(
        [math.exp(10 * s) / d for s, d in zip([0.2, 0.7, 0.1], denominators)], rel=1e-6
    )


def test_querybank_normalisation_against_numpy_loops():
    rng = np.random.default_rng(0)
    for _ in range(20):
        q, b, g = (int(x) for x in rng.integers(1, 12, 3))
        sim, bank = rng.uniform(-1, 1, (q, g)), rng.uniform(-1, 1, (b, g))
        beta, k = float(rng.uniform(1, 50)), int(rng.integers(1, g + 1))
        active = set()
        for row in bank:
            active |= set(np.argsort(-row, kind="stable")[:k].tolist())
        expected = sim.copy()
        for i, row in enumerate(sim):
            if int(np.argmax(row)) in active:
                expected[i] = [np.exp(beta * row[j]) / np.exp(beta * bank[:, j]).sum() for j in range(g)]
        got = querybank_normalise(torch.from_numpy(sim), torch.from_numpy(bank), beta=beta, k=k)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9)


# ------------------------------------------- the experiments' default against CLIP4Clip's own code
def clip4clip_video_to_text(sim: np.ndarray, owners: np.ndarray) -> dict[str, float]:
    """CLIP4Clip's multi-sentence video-to-text, written out as its code computes it
    (``main_task_retrieval.py``: captions grouped per video into ``[V, S, V]`` padded with -inf;
    ``tensor_video_to_text_sim``: max over each video's captions, transposed; ``compute_metrics``)."""
    n_vid = sim.shape[1]
    per_video = [sim[owners == v] for v in range(n_vid)]
    longest = max(len(rows) for rows in per_video)
    grouped = np.full((n_vid, longest, n_vid), -np.inf)
    for v, rows in enumerate(per_video):
        grouped[v, : len(rows)] = rows
    x = grouped.max(axis=1).T  # [V, V]: row = query video, column = a video's best caption for it
    sx = np.sort(-x, axis=1)
    d = np.diag(-x)[:, np.newaxis]
    ind = np.where(sx - d == 0)[1]  # one entry per position an exact tie occupies
    return {
        "v2t_R1": float(np.sum(ind == 0)) * 100 / len(ind),
        "v2t_R5": float(np.sum(ind < 5)) * 100 / len(ind),
        "v2t_R10": float(np.sum(ind < 10)) * 100 / len(ind),
        "v2t_MdR": float(np.median(ind) + 1),
        "v2t_MnR": float(np.mean(ind) + 1),
    }


@pytest.mark.parametrize("experiment", ["msvd", "vatex", "msrvtt"])
def test_multi_caption_experiments_default_to_clip4clip_video_to_text(experiment):
    """On MSVD-like data (videos with 1-40 captions, scores on a coarse grid so exact ties occur) the
    experiment's own ranking conventions give CLIP4Clip's video-to-text figures, which the schema's
    defaults (all captions, pessimistic ties) do not give on the same matrix."""
    from stop_lightning.config import load_config

    task = load_config(experiment).task
    rng = np.random.default_rng(0)
    n_vid = 30
    owners = np.concatenate([np.full(rng.integers(1, 41), v) for v in range(n_vid)])
    sim = np.round(rng.normal(size=(len(owners), n_vid)) + 1.5 * np.eye(n_vid)[owners], 1)
    ours = retrieval_metrics(
        torch.tensor(sim),
        torch.tensor(owners),
        tie_rank=task.tie_rank,
        v2t_captions=task.v2t_captions,
        directions=("v2t",),
    )
    theirs = clip4clip_video_to_text(sim, owners)
    assert ours == pytest.approx(theirs)
    default = retrieval_metrics(torch.tensor(sim), torch.tensor(owners), directions=("v2t",))
    assert default["v2t_MnR"] != pytest.approx(theirs["v2t_MnR"])
