"""Every figure the tasks report, against an independent NumPy / plain-Python computation.

Seeded loops over generated cases, including the awkward ones: random scores, data sorted by
class, a first batch of one class all correct, ties, uneven last batches. The module's own
evaluation path runs (steps, then epoch end); only the video model is replaced by given scores.
The 2-process DDP case with sampler padding is in tests/tasks/test_metric_checks_ddp.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from stop_lightning.config import load_config
from stop_lightning.models.backbone import load_clip
from stop_lightning.tasks.recognition import RecognitionModule, _metrics, confusion_counts
from stop_lightning.tasks.retrieval_metrics import dual_softmax, retrieval_metrics

CASES = ("random", "sorted", "one_class_first", "ties")


# ------------------------------------------------------------------------------ references (NumPy)
def np_topk(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """A clip is right when fewer than k classes score strictly above its label."""
    own = scores[np.arange(len(labels)), labels]
    above = (scores > own[:, None]).sum(1)
    return float(np.mean(above < k))


def np_mean_class(scores: np.ndarray, labels: np.ndarray) -> float:
    pred = scores.argmax(1)
    return float(np.mean([np.mean(pred[labels == c] == c) for c in sorted(set(labels.tolist()))]))


def np_subset_top1(scores: np.ndarray, labels: np.ndarray, ids: list[int]) -> float:
    rows = [i for i, y in enumerate(labels) if y in ids]
    if not rows:
        return 0.0
    right = 0
    for i in rows:
        best = max(ids, key=lambda c: (scores[i, c], -c))  # highest score, first class on a tie
        right += best == labels[i]
    return right / len(rows)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def generate(case: str, n: int, classes: int, first_batch: int, rng: np.random.Generator):
    """Scores ``[n, classes]`` and labels ``[n]``. Ties never involve the label (a tie with the
    label is ranked by torch's argmax/topk index order, documented in docs/metrics.md)."""
    labels = rng.integers(0, classes, n)
    scores = rng.normal(size=(n, classes))
    if case == "sorted":
        labels = np.sort(labels)
    elif case == "one_class_first":
        labels[:first_batch] = 0
        scores[:first_batch, 0] = scores[:first_batch].max(1) + 1.0  # all correct
    elif case == "ties":
        scores = rng.integers(0, 3, size=(n, classes)).astype(float)
        scores[np.arange(n), labels] = rng.integers(0, 3, n) + 0.5
    return scores.astype(np.float32), labels


# ------------------------------------------------------------------------------ recognition
@pytest.fixture(scope="module")
def bundle_and_cfg(cache_dir):
    cfg = load_config("demo", [f"paths.cache_dir={cache_dir}"])
    return load_clip(cfg.model.clip, cfg.paths.cache_dir), cfg


def score_module(bundle_and_cfg, classes: int, base_novel_split=None) -> RecognitionModule:
    """A RecognitionModule whose 'video' input is already the clip's class scores."""
    bundle, cfg = bundle_and_cfg
    module = RecognitionModule(
        cfg, [f"class {c}" for c in range(classes)], base_novel_split=base_novel_split, bundle=bundle
    )
    module.multiview_scores = lambda video: video  # type: ignore[method-assign]
    return module


def run_eval(module: RecognitionModule, scores: np.ndarray, labels: np.ndarray, batch: int, stage: str):
    step = module.validation_step if stage == "val" else module.test_step
    for i, start in enumerate(range(0, len(labels), batch)):
        sl = slice(start, start + batch)
        step(
            {
                "video": torch.from_numpy(scores[sl]),
                "label": torch.from_numpy(labels[sl]),
                "index": torch.arange(len(labels))[sl],
            },
            i,
        )
    values, _, _ = module._eval_metrics(stage)
    return values


def test_the_issue_reproduction_gives_the_standalone_top5():
    """51 classes; a first batch of 8 clips of class 0, all correct, then 64 random clips. With
    torchmetrics' compute groups on, top-5 reported mean-class's value (the issue's run: 0.375 for
    0.708; this seed, with the old collection: 0.111 for 0.167)."""
    rng = np.random.default_rng(0)
    scores, labels = generate("one_class_first", 72, 51, 8, rng)
    collection, standalone = _metrics(51, ""), MulticlassAccuracy(51, top_k=5, average="micro")
    for start in (0, 8):
        sl = slice(start, 8 if start == 0 else None)
        collection.update(torch.from_numpy(scores[sl]), torch.from_numpy(labels[sl]))
        standalone.update(torch.from_numpy(scores[sl]), torch.from_numpy(labels[sl]))
    expected = np_topk(scores, labels, 5)
    assert collection.compute()["top5"].item() == pytest.approx(expected)
    # Our mean-class metric keeps other states than top-5, so it cannot merge with it here; the
    # switch itself is what keeps any future metric of the collection from merging.
    assert collection._enable_compute_groups is False
    assert standalone.compute().item() == pytest.approx(expected)
    # The case does trigger the merging this guards against: a collection with compute groups on.
    grouped = MetricCollection(
        {
            "top5": MulticlassAccuracy(51, top_k=5, average="micro"),
            "mean_class": MulticlassAccuracy(51, top_k=1, average="macro"),
        }
    )
    for start in (0, 8):
        sl = slice(start, 8 if start == 0 else None)
        grouped.update(torch.from_numpy(scores[sl]), torch.from_numpy(labels[sl]))
    assert grouped.compute()["top5"].item() != pytest.approx(expected)


@pytest.mark.parametrize("classes", [2, 6, 51])
def test_top1_top5_mean_class_against_numpy(bundle_and_cfg, classes):
    module = score_module(bundle_and_cfg, classes)
    rng = np.random.default_rng(classes)
    for case in CASES:
        for n, batch in ((37, 8), (20, 20), (9, 4), (64, 7), (5, 1)):  # uneven last batches
            for stage in ("val", "test"):
                scores, labels = generate(case, n, classes, batch, rng)
                got = run_eval(module, scores, labels, batch, stage)
                where = f"{case} n={n} batch={batch} {stage}"
                assert got[f"{stage}/top1"] == pytest.approx(np_topk(scores, labels, 1), abs=1e-6), where
                assert got[f"{stage}/top5"] == pytest.approx(
                    np_topk(scores, labels, min(5, classes)), abs=1e-6
                ), where
                assert got[f"{stage}/mean_class"] == pytest.approx(np_mean_class(scores, labels), abs=1e-6), (
                    where
                )


def test_mean_class_ignores_a_predicted_class_without_clips(bundle_and_cfg):
    module = score_module(bundle_and_cfg, 3)
    scores = np.array(
        [[1.0, 0.0, 2.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32
    )  # class 2 predicted, absent
    labels = np.array([0, 0, 1])
    got = run_eval(module, scores, labels, 2, "test")
    assert got["test/mean_class"] == pytest.approx((0.5 + 1.0) / 2)


def test_sampler_padding_repeats_count_once(bundle_and_cfg):
    """What a rank sees under DDP: padded repeats of the first clips (same index) are dropped."""
    module = score_module(bundle_and_cfg, 5)
    rng = np.random.default_rng(1)
    for _ in range(10):
        scores, labels = generate("random", 11, 5, 4, rng)
        padded = np.concatenate([np.arange(11), [0, 1, 2]])  # 14 = 2 ranks x 7: 3 repeats
        for i, start in enumerate(range(0, 14, 4)):
            idx = padded[start : start + 4]
            module.test_step(
                {
                    "video": torch.from_numpy(scores[idx]),
                    "label": torch.from_numpy(labels[idx]),
                    "index": torch.from_numpy(idx),
                },
                i,
            )
        got, _, _ = module._eval_metrics("test")
        assert got["test/top1"] == pytest.approx(np_topk(scores, labels, 1), abs=1e-6)
        assert got["test/mean_class"] == pytest.approx(np_mean_class(scores, labels), abs=1e-6)


def test_base_novel_and_harmonic_mean_against_numpy(bundle_and_cfg):
    module = score_module(bundle_and_cfg, 6, base_novel_split=([0, 1, 2], [3, 4, 5]))
    rng = np.random.default_rng(2)
    for case in CASES:
        for n, batch in ((30, 7), (12, 12), (3, 2)):
            scores, labels = generate(case, n, 6, batch, rng)
            got = run_eval(module, scores, labels, batch, "test")
            base, novel = np_subset_top1(scores, labels, [0, 1, 2]), np_subset_top1(scores, labels, [3, 4, 5])
            hm = 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)
            assert got["test/base_top1"] == pytest.approx(base, abs=1e-6), case
            assert got["test/novel_top1"] == pytest.approx(novel, abs=1e-6), case
            assert got["test/hm_top1"] == pytest.approx(hm, abs=1e-6), case


def test_multiview_scores_average_view_probabilities_against_numpy():
    rng = np.random.default_rng(3)
    for b, v, c in ((2, 3, 4), (5, 1, 7), (1, 6, 2), (4, 2, 51)):
        logits = rng.normal(size=(b * v, c)).astype(np.float32) * 3

        class Fake:  # the module's forward: [B*V, ...] -> these logits
            def __init__(self, out: np.ndarray):
                self.out = out

            def __call__(self, video):
                return torch.from_numpy(self.out)

        got = RecognitionModule.multiview_scores(Fake(logits), torch.zeros(b, v, 2, 3, 4, 4)).numpy()
        expected = softmax(logits.astype(np.float64)).reshape(b, v, c).mean(1)
        np.testing.assert_allclose(got, expected, atol=1e-6)


# ------------------------------------------------------------------------------ retrieval
def brute_force_ranks(
    sim: np.ndarray, owners: list[int], tie_rank: str, v2t: str
) -> tuple[list[int], list[int]]:
    """Ranks by sorting each query's candidates, one loop per query, no vectorised counting."""

    def rank_of(scored: list[tuple[float, bool]]) -> list[int]:
        # scored: (score, is_positive) per candidate -> rank(s) of the best positive
        best = max(s for s, p in scored if p)
        others = [s for s, p in scored if not p]
        order = sorted(others + [best], reverse=True)
        first = order.index(best) + 1  # 1-based, ahead of its ties
        ties = sum(1 for s in others if s == best)
        if tie_rank == "optimistic":
            return [first]
        if tie_rank == "pessimistic":
            return [first + ties]
        return list(range(first, first + ties + 1))  # clip4clip: every position the tie occupies

    n_cap, n_vid = sim.shape
    t2v = []
    for c in range(n_cap):
        t2v += rank_of([(float(sim[c, v]), v == owners[c]) for v in range(n_vid)])
    v2t_ranks = []
    videos = sorted(set(owners))
    for v in videos:
        if v2t == "all_captions":  # every caption of the split is a candidate
            v2t_ranks += rank_of([(float(sim[c, v]), owners[c] == v) for c in range(n_cap)])
        else:  # each video is represented by its caption most similar to v
            group_best = {u: max(float(sim[c, v]) for c in range(n_cap) if owners[c] == u) for u in videos}
            v2t_ranks += rank_of([(group_best[u], u == v) for u in videos])
    return t2v, v2t_ranks


def summary(ranks: list[int]) -> dict[str, float]:
    r = np.array(ranks, dtype=np.float64)
    out = {f"R{k}": 100.0 * float(np.mean(r <= k)) for k in (1, 5, 10)}
    s = sorted(ranks)
    mid = len(s) // 2
    out["MdR"] = float(s[mid]) if len(s) % 2 else (s[mid - 1] + s[mid]) / 2  # midpoint of an even count
    out["MnR"] = float(np.mean(r))
    return out


def retrieval_case(rng: np.random.Generator, case: str):
    n_vid = int(rng.integers(2, 30))
    if case == "one_caption":
        owners = list(range(n_vid))
    else:  # several captions per video, in shuffled order; every video has at least one
        owners = list(range(n_vid)) + rng.integers(0, n_vid, int(rng.integers(0, 2 * n_vid))).tolist()
        rng.shuffle(owners)
    sim = rng.normal(size=(len(owners), n_vid))
    if case == "ties":
        sim = np.round(sim)  # a handful of levels: ties everywhere, also with the positives
    elif case == "constant":
        sim = np.zeros_like(sim)
    return sim.astype(np.float32), owners


@pytest.mark.parametrize("tie_rank", ["pessimistic", "optimistic", "clip4clip"])
@pytest.mark.parametrize("v2t", ["all_captions", "best_caption"])
def test_retrieval_metrics_against_brute_force_ranks(tie_rank, v2t):
    rng = np.random.default_rng(7 * len(tie_rank) + len(v2t))
    for case in ("one_caption", "multi_caption", "ties", "constant"):
        for trial in range(12):
            sim, owners = retrieval_case(rng, case)
            got = retrieval_metrics(
                torch.from_numpy(sim), torch.tensor(owners), tie_rank=tie_rank, v2t_captions=v2t
            )
            t2v, v2t_ranks = brute_force_ranks(sim, owners, tie_rank, v2t)
            for name, ranks in (("t2v", t2v), ("v2t", v2t_ranks)):
                for key, value in summary(ranks).items():
                    assert got[f"{name}_{key}"] == pytest.approx(value, abs=1e-6), (case, trial, name, key)


def test_dual_softmax_metrics_against_numpy():
    rng = np.random.default_rng(5)
    for case in ("one_caption", "multi_caption", "ties"):
        for _ in range(10):
            sim, owners = retrieval_case(rng, case)
            sim = sim / 4  # cosine-like range
            temperature = float(rng.uniform(1, 100))
            e = np.exp(temperature * sim.astype(np.float64) - (temperature * sim).max(0, keepdims=True))
            reranked = sim * e / e.sum(0, keepdims=True)  # softmax over the captions of each video
            got_sim = dual_softmax(torch.from_numpy(sim), temperature)
            np.testing.assert_allclose(got_sim.numpy(), reranked, rtol=1e-4, atol=1e-7)
            got = retrieval_metrics(torch.from_numpy(reranked), torch.tensor(owners))
            t2v, v2t = brute_force_ranks(reranked, owners, "pessimistic", "all_captions")
            for key, value in summary(t2v).items():
                assert got[f"t2v_{key}"] == pytest.approx(value, abs=1e-6)
            for key, value in summary(v2t).items():
                assert got[f"v2t_{key}"] == pytest.approx(value, abs=1e-6)


def test_even_count_median_is_the_midpoint():
    # Ranks 1, 2, 3, 4 (caption i's video ranked i+1): the median of an even count is 2.5, not 2 or 3.
    sim = torch.tensor([[4.0, 3, 2, 1], [4, 3, 2, 1], [4, 3, 2, 1], [4, 3, 2, 1]])
    m = retrieval_metrics(sim, torch.arange(4))
    assert m["t2v_MdR"] == 2.5 and m["t2v_MnR"] == 2.5


def test_recall_at_5_and_10_on_known_ranks():
    # 12 captions, caption i's video at rank i+1: R@1 = 1/12, R@5 = 5/12, R@10 = 10/12.
    n = 12
    sim = torch.zeros(n, n)
    for i in range(n):
        order = [i] + [j for j in range(n) if j != i]  # video i first, then the rest...
        order = order[1 : i + 1] + [i] + order[i + 1 :]  # ...moved to position i
        for pos, v in enumerate(order):
            sim[i, v] = float(n - pos)
    m = retrieval_metrics(sim, torch.arange(n))
    assert m["t2v_R1"] == pytest.approx(100 / 12)
    assert m["t2v_R5"] == pytest.approx(500 / 12)
    assert m["t2v_R10"] == pytest.approx(1000 / 12)
    assert m["t2v_MdR"] == 6.5 and m["t2v_MnR"] == 6.5


# ------------------------------------------------------------------------------ unreadable videos
# data.bad_video=skip: an unreadable video's blank stand-in gets the best possible scores here, so a
# metric that looked at it would count a hit; every figure must count it as a miss.
def np_top_k_with_misses(scores, labels, bad, k):
    own = scores[np.arange(len(labels)), labels]
    return float(np.mean(((scores > own[:, None]).sum(1) < k) & ~bad))


def np_mean_class_with_misses(scores, labels, bad):
    hit = (scores.argmax(1) == labels) & ~bad
    return float(np.mean([hit[labels == c].mean() for c in sorted(set(labels.tolist()))]))


def test_recognition_counts_unreadable_clips_as_misses(bundle_and_cfg):
    classes = 6
    module = score_module(bundle_and_cfg, classes, base_novel_split=([0, 1, 2], [3, 4, 5]))
    rng = np.random.default_rng(0)
    for case in ("random", "sorted", "one_class_first", "ties"):
        for n, batch, p_bad in ((37, 8, 0.3), (9, 4, 1.0), (20, 20, 0.0), (5, 1, 0.6)):
            scores, labels = generate(case, n, classes, batch, rng)
            bad = rng.random(n) < p_bad
            scores[bad] = 0.0
            scores[bad, labels[bad]] = 10.0  # a stand-in that would be right if it were scored
            for i, start in enumerate(range(0, n, batch)):
                sl = slice(start, start + batch)
                module.test_step(
                    {
                        "video": torch.from_numpy(scores[sl]),
                        "label": torch.from_numpy(labels[sl]),
                        "index": torch.arange(n)[sl],
                        "unreadable": torch.from_numpy(bad[sl]),
                    },
                    i,
                )
            got, _, _ = module._eval_metrics("test")
            where = f"{case} n={n} bad={bad.sum()}"
            assert got["test/top1"] == pytest.approx(
                np_top_k_with_misses(scores, labels, bad, 1), abs=1e-6
            ), where
            assert got["test/top5"] == pytest.approx(
                np_top_k_with_misses(scores, labels, bad, 5), abs=1e-6
            ), where
            assert got["test/mean_class"] == pytest.approx(
                np_mean_class_with_misses(scores, labels, bad), abs=1e-6
            ), where
            assert got["test/unreadable"] == bad.sum() and module.unreadable["count"] == bad.sum(), where
            base_rows = np.isin(labels, [0, 1, 2])
            if base_rows.any():
                pred = np.array([0, 1, 2])[scores[base_rows][:, :3].argmax(1)]
                want = np.mean((pred == labels[base_rows]) & ~bad[base_rows])
                assert got["test/base_top1"] == pytest.approx(want, abs=1e-6), where
            table = confusion_counts(
                torch.from_numpy(scores), torch.from_numpy(labels), torch.from_numpy(bad)
            ).numpy()
            assert table.shape == (classes, classes + 1)
            assert (table[:, -1] == np.bincount(labels[bad], minlength=classes)).all(), where
            assert table[:, :-1].sum() == (~bad).sum(), where


def np_retrieval_ranks(sim, owner, bad, direction):
    """Pessimistic ranks by brute force: an unreadable video is a miss (rank = number of candidates)
    and, as a candidate, below every readable one."""
    n_cap, n_vid = sim.shape
    ranks = []
    if direction == "t2v":
        for c in range(n_cap):
            v = owner[c]
            if bad[v]:
                ranks.append(n_vid)
                continue
            others = [u for u in range(n_vid) if u != v and not bad[u]]
            ranks.append(1 + sum(sim[c, u] >= sim[c, v] for u in others))
    else:
        for v in range(n_vid):
            own = [c for c in range(n_cap) if owner[c] == v]
            if not own:
                continue
            if bad[v]:
                ranks.append(n_cap)
                continue
            best = max(sim[c, v] for c in own)
            ranks.append(1 + sum(sim[c, v] >= best for c in range(n_cap) if owner[c] != v))
    return np.array(ranks, dtype=float)


def test_retrieval_ranks_unreadable_videos_last():
    rng = np.random.default_rng(1)
    for trial in range(30):
        n_vid = int(rng.integers(2, 12))
        owner = np.concatenate([np.arange(n_vid), rng.integers(0, n_vid, int(rng.integers(0, 6)))])
        sim = (
            rng.integers(0, 4, size=(len(owner), n_vid)).astype(np.float64)
            if trial % 2
            else rng.normal(size=(len(owner), n_vid))
        )
        bad = rng.random(n_vid) < 0.3
        sim[:, bad] = 100.0  # a blank embedding that every caption would prefer
        got = retrieval_metrics(
            torch.from_numpy(sim), torch.from_numpy(owner), unreadable=torch.from_numpy(bad)
        )
        for direction in ("t2v", "v2t"):
            ranks = np_retrieval_ranks(sim, owner, bad, direction)
            for k in (1, 5, 10):
                assert got[f"{direction}_R{k}"] == pytest.approx(100 * np.mean(ranks <= k)), (
                    trial,
                    direction,
                    k,
                )
            assert got[f"{direction}_MdR"] == pytest.approx(np.median(ranks)), (trial, direction)
            assert got[f"{direction}_MnR"] == pytest.approx(ranks.mean()), (trial, direction)
