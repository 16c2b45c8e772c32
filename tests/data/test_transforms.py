import pytest
import torch

from stop_lightning.data.transforms import eval_transform, three_crops, train_transform

MEAN, STD = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)


def test_train_shapes_dtype_and_normalisation():
    video = torch.full((4, 3, 40, 60), 255, dtype=torch.uint8)
    out = train_transform(32, MEAN, STD)(video)
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    # (1 - mean) / std per channel
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.tensor([1.0, 3.0, 1.0]))


def test_train_crop_is_the_same_for_every_frame():
    torch.manual_seed(0)
    frame = torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8)
    out = train_transform(24, MEAN, STD)(frame.expand(6, 3, 48, 48).clone())
    assert all(torch.equal(out[0], out[t]) for t in range(1, 6))


def test_flip_is_off_by_default_and_configurable():
    video = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    video[..., :16] = 255  # left half bright
    torch.manual_seed(0)
    no_flip = [train_transform(32, MEAN, STD, scale=(1.0, 1.0))(video) for _ in range(20)]
    assert all(o[0, 0, :, :8].mean() > o[0, 0, :, -8:].mean() for o in no_flip)
    flipped = [train_transform(32, MEAN, STD, hflip=True, scale=(1.0, 1.0))(video) for _ in range(40)]
    assert any(o[0, 0, :, :8].mean() < o[0, 0, :, -8:].mean() for o in flipped)


def test_eval_centre_crop_resizes_short_side():
    video = torch.zeros(3, 3, 40, 80, dtype=torch.uint8)
    video[..., 30:50] = 255  # a bright band in the middle
    out = eval_transform(20, (0.0,) * 3, (1.0,) * 3)(video)  # -> 20 x 40, centre 20 x 20 = columns 10..30
    assert out.shape == (3, 3, 20, 20)
    assert out[..., 6:14].min() > 0.9 and out[..., :4].max() < 0.1


def test_eval_three_crops():
    video = torch.arange(60, dtype=torch.uint8).repeat(2, 3, 30, 1)  # [2, 3, 30, 60], value = column
    out = eval_transform(30, (0.0,) * 3, (1.0,) * 3, crops=3)(video)
    assert out.shape == (3, 2, 3, 30, 30)
    firsts = [round(float(out[c, 0, 0, 0, 0]) * 255) for c in range(3)]
    assert firsts == [0, 15, 30]  # left, centre, right
    crops = three_crops(torch.zeros(1, 3, 50, 20), 20)  # portrait: top, centre, bottom
    assert [c.shape[-2:] for c in crops] == [torch.Size([20, 20])] * 3
    with pytest.raises(ValueError, match="1 \\(centre\\) or 3"):
        eval_transform(30, MEAN, STD, crops=2)
