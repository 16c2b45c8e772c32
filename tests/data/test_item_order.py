"""EpochSampler: order and per-item seeds depend only on (seed, epoch, position)."""

import random

import torch

from stop_lightning.data import item_order
from stop_lightning.data.item_order import EpochSampler, seeded


def test_same_epoch_same_order_other_epoch_other_order():
    a, b = EpochSampler(10, seed=3), EpochSampler(10, seed=3)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b)
    first = [i for i, _ in a]
    assert sorted(first) == list(range(10))
    a.set_epoch(2)
    assert [i for i, _ in a] != first


def test_unshuffled_keeps_order():
    assert [i for i, _ in EpochSampler(5, shuffle=False)] == [0, 1, 2, 3, 4]


def test_ranks_are_disjoint_and_padded(monkeypatch):
    seen = []
    for rank in (0, 1):
        monkeypatch.setattr(item_order, "_rank_and_world", lambda r=rank: (r, 2))
        s = EpochSampler(7, seed=0)
        assert len(s) == 4
        seen.append([i for i, _ in s])
    assert set(seen[0]) | set(seen[1]) == set(range(7))
    assert len(seen[0]) + len(seen[1]) == 8  # one item repeated to even the ranks


def test_seeded_is_reproducible_and_restores_global_state():
    torch.manual_seed(0)
    random.seed(0)
    before = torch.get_rng_state().clone(), random.getstate()
    with seeded(42):
        x = torch.rand(3), random.random()
    with seeded(42):
        y = torch.rand(3), random.random()
    assert torch.equal(x[0], y[0]) and x[1] == y[1]
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]


def test_seeded_draws_what_torch_manual_seed_draws():
    """Only the CPU generator is seeded now; the draws (hence the sampled frames and crops) are those
    ``torch.manual_seed`` gave, for torch, numpy and python alike."""
    import numpy as np

    for seed in (0, 1, 7, 2**31 - 2, 123456789):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        expected = torch.rand(4), torch.randint(0, 1000, (3,)), random.random(), np.random.rand()
        torch.manual_seed(99)  # some other global state, which seeded() must not use
        with seeded(seed):
            got = torch.rand(4), torch.randint(0, 1000, (3,)), random.random(), np.random.rand()
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        assert got[2:] == expected[2:]
