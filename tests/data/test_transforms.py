import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from stop_lightning.data.transforms import EvalTransform, TrainTransform, normalize, three_crops

MEAN, STD = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)


def test_train_shapes_dtype_and_normalisation():
    video = torch.full((4, 3, 40, 60), 255, dtype=torch.uint8)
    out = TrainTransform(32, MEAN, STD)(video)
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    # (1 - mean) / std per channel
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.tensor([1.0, 3.0, 1.0]))


def test_train_crop_is_the_same_for_every_frame():
    torch.manual_seed(0)
    frame = torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8)
    out = TrainTransform(24, MEAN, STD)(frame.expand(6, 3, 48, 48).clone())
    assert all(torch.equal(out[0], out[t]) for t in range(1, 6))


def test_flip_is_off_by_default_and_configurable():
    video = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    video[..., :16] = 255  # left half bright
    torch.manual_seed(0)
    no_flip = [TrainTransform(32, MEAN, STD, scale=(1.0, 1.0))(video) for _ in range(20)]
    assert all(o[0, 0, :, :8].mean() > o[0, 0, :, -8:].mean() for o in no_flip)
    flipped = [TrainTransform(32, MEAN, STD, hflip=True, scale=(1.0, 1.0))(video) for _ in range(40)]
    assert any(o[0, 0, :, :8].mean() < o[0, 0, :, -8:].mean() for o in flipped)


def test_eval_centre_crop_resizes_short_side():
    video = torch.zeros(3, 3, 40, 80, dtype=torch.uint8)
    video[..., 30:50] = 255  # a bright band in the middle
    out = EvalTransform(20, (0.0,) * 3, (1.0,) * 3)(video)  # -> 20 x 40, centre 20 x 20 = columns 10..30
    assert out.shape == (3, 3, 20, 20)
    assert out[..., 6:14].min() > 0.9 and out[..., :4].max() < 0.1


def test_eval_three_crops():
    video = torch.arange(60, dtype=torch.uint8).repeat(2, 3, 30, 1)  # [2, 3, 30, 60], value = column
    out = EvalTransform(30, (0.0,) * 3, (1.0,) * 3, crops=3)(video)
    assert out.shape == (3, 2, 3, 30, 30)
    firsts = [round(float(out[c, 0, 0, 0, 0]) * 255) for c in range(3)]
    assert firsts == [0, 15, 30]  # left, centre, right
    crops = three_crops(torch.zeros(1, 3, 50, 20), 20)  # portrait: top, centre, bottom
    assert [c.shape[-2:] for c in crops] == [torch.Size([20, 20])] * 3
    with pytest.raises(ValueError, match="1 \\(centre\\) or 3"):
        EvalTransform(30, MEAN, STD, crops=2)


def _torchvision_reference(image_size: int, mean, std, hflip: bool):
    """The transform as torchvision's own v2 steps: crop/flip, ToDtype(scale), Normalize."""
    steps = [v2.RandomResizedCrop(image_size, scale=(0.4, 1.0), ratio=(3 / 4, 4 / 3), antialias=True)]
    steps += [v2.RandomHorizontalFlip()] if hflip else []
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    pipeline = v2.Compose(steps)
    return lambda video: pipeline(tv_tensors.Video(video)).as_subclass(torch.Tensor)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("hflip", [False, True])
def test_train_transform_matches_torchvision_steps_for_the_same_seed(channels_last, hflip):
    """The fused float step changes neither the random crop (same draws for the same seed, so the
    same pixels as before) nor the values, for frames in either memory layout the decoders give."""
    gen = torch.Generator().manual_seed(3)
    for case in range(6):
        h, w = [(48, 64), (64, 48), (31, 57), (40, 40), (224, 298), (17, 90)][case]
        frames = torch.randint(0, 256, (5, h, w, 3), dtype=torch.uint8, generator=gen)
        video = frames.permute(0, 3, 1, 2) if channels_last else frames.permute(0, 3, 1, 2).contiguous()
        mean, std = torch.rand(3, generator=gen).tolist(), (0.1 + torch.rand(3, generator=gen)).tolist()
        torch.manual_seed(case)
        ours = TrainTransform(32, mean, std, hflip=hflip)(video)
        torch.manual_seed(case)
        ref = _torchvision_reference(32, mean, std, hflip)(video)
        assert ours.is_contiguous() and ours.dtype == torch.float32
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_normalize_values_layout_and_dtype():
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (3, 9, 11, 3), dtype=torch.uint8, generator=gen)
    video = frames.permute(0, 3, 1, 2)  # channels-last view, as decoded
    mean, std = (0.2, 0.5, 0.9), (0.3, 0.05, 2.0)
    out = normalize(mean, std)(video)
    expected = (frames.double() / 255 - torch.tensor(mean, dtype=torch.double)) / torch.tensor(
        std, dtype=torch.double
    )  # [3, 9, 11, 3], channel last
    torch.testing.assert_close(out.double(), expected.permute(0, 3, 1, 2), rtol=1e-6, atol=1e-5)
    assert out.is_contiguous() and out.dtype == torch.float32
    eval_out = EvalTransform(9, mean, std)(video)
    assert eval_out.is_contiguous()
    with pytest.raises(TypeError, match="uint8"):
        normalize(mean, std)(video.float())
