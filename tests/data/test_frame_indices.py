import torch

from stop_lightning.data.frame_indices import fps_indices, multi_clip_indices, segment_indices


def test_segment_eval_takes_segment_centres():
    # 32 frames, 8 segments of 4: centres at 2, 6, 10, ...
    assert segment_indices(32, 8, train=False) == [2, 6, 10, 14, 18, 22, 26, 30]
    # 10 frames, 4 segments of 2.5: floor(1.25), floor(3.75), floor(6.25), floor(8.75)
    assert segment_indices(10, 4, train=False) == [1, 3, 6, 8]


def test_segment_short_video_repeats_frames():
    assert segment_indices(4, 8, train=False) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert segment_indices(1, 3, train=True) == [0, 0, 0]


def test_segment_train_random_inside_each_segment_and_seeded():
    seen = set()
    for s in range(50):
        idx = segment_indices(32, 8, train=True, generator=torch.Generator().manual_seed(s))
        assert all(4 * k <= i < 4 * (k + 1) for k, i in enumerate(idx))
        seen.add(tuple(idx))
    assert len(seen) > 40
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert segment_indices(100, 8, True, g1) == segment_indices(100, 8, True, g2)


def test_multi_clip_views_shift_inside_segments():
    # 24 frames, 4 segments of 6, 3 clips at 1/6, 3/6, 5/6 of each segment.
    assert multi_clip_indices(24, 4, 3) == [[1, 7, 13, 19], [3, 9, 15, 21], [5, 11, 17, 23]]


def test_fps_sampling_pads_and_masks():
    # 30 fps video of 45 frames at 3 fps: frames 0, 10, 20, 30, 40 then padding.
    idx, mask = fps_indices(45, 30.0, 8, 3.0, train=False)
    assert idx == [0, 10, 20, 30, 40, 40, 40, 40]
    assert mask == [True] * 5 + [False] * 3


def test_fps_sampling_thins_long_videos_over_the_whole_video():
    # 300 frames at 30 fps -> 30 resampled frames at 3 fps; 6 kept, centred in 6 segments of 5.
    idx, mask = fps_indices(300, 30.0, 6, 3.0, train=False)
    assert idx == [20, 70, 120, 170, 220, 270] and all(mask)
    idx, mask = fps_indices(300, 30.0, 6, 3.0, train=True, generator=torch.Generator().manual_seed(0))
    assert all(mask) and all(50 * k <= i < 50 * (k + 1) and i % 10 == 0 for k, i in enumerate(idx))


def test_fps_sampling_non_integer_rate():
    idx, mask = fps_indices(25, 25.0, 4, 3.0, train=False)  # step 8.33 frames
    assert idx == [0, 8, 17, 17] and mask == [True, True, True, False]
