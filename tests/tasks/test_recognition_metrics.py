"""Recognition metrics and multi-view averaging on hand-made logits."""

import pytest
import torch

from stop_lightning.tasks.recognition import RecognitionModule, _metrics, harmonic_mean, subset_accuracy


def test_top1_top5_and_mean_class_on_hand_made_scores():
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],  # label 0: top-1 right
            [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],  # label 4: 5th best -> top-5 only
            [0.0, 0.1, 0.2, 0.3, 0.5, 0.4],  # label 0: last -> wrong at top-5 too
            [0.1, 0.8, 0.0, 0.0, 0.0, 0.0],  # label 1: top-1 right
        ]
    )
    labels = torch.tensor([0, 4, 0, 1])
    m = _metrics(6, "test/")
    m.update(scores, labels)
    out = {k: v.item() for k, v in m.compute().items()}
    assert out["test/top1"] == pytest.approx(2 / 4)
    assert out["test/top5"] == pytest.approx(3 / 4)
    # Per class: class 0 -> 1 of 2, class 1 -> 1 of 1, class 4 -> 0 of 1; classes with no clip are left
    # out (also when predicted: tests/tasks/test_metric_checks.py).
    assert out["test/mean_class"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_multiview_scores_average_probabilities_over_views():
    # Two clips, three views each; the module's forward sees [B*V, ...] and returns these logits.
    logits = torch.tensor(
        [
            [2.0, 0.0],
            [0.0, 2.0],
            [0.0, 2.0],  # clip 0: views disagree, 2 of 3 say class 1
            [1.0, 0.0],
            [1.0, 0.0],
            [1.0, 0.0],
        ]
    )  # clip 1: all say class 0
    seen = {}

    class Fake:
        def __call__(self, video):
            seen["shape"] = tuple(video.shape)
            return logits

    video = torch.zeros(2, 3, 4, 3, 8, 8)  # [B, V, T, 3, H, W]
    probs = RecognitionModule.multiview_scores(Fake(), video)
    assert seen["shape"] == (6, 4, 3, 8, 8)
    expected = logits.softmax(-1).view(2, 3, 2).mean(1)
    assert torch.allclose(probs, expected)
    assert probs.argmax(-1).tolist() == [1, 0] and torch.allclose(probs.sum(-1), torch.ones(2))


def test_base_novel_subset_accuracy_and_harmonic_mean():
    scores = torch.tensor(
        [[0.1, 0.9, 0.0, 0.0], [0.6, 0.4, 0.0, 0.0], [0.0, 0.0, 0.2, 0.8], [0.9, 0.0, 0.05, 0.1]]
    )
    labels = torch.tensor([1, 1, 2, 3])
    # Base classes {0, 1}: clips 0 and 1 are judged among classes 0 and 1 -> 1 of 2 right.
    assert subset_accuracy(scores, labels, [0, 1]) == pytest.approx(0.5)
    # Novel classes {2, 3}: clip 2 predicts 3 (wrong), clip 3 predicts 3 among {2, 3} (right) -> 0.5.
    assert subset_accuracy(scores, labels, [2, 3]) == pytest.approx(0.5)
    assert harmonic_mean(0.5, 1.0) == pytest.approx(2 / 3) and harmonic_mean(0.0, 0.0) == 0.0
