"""Frame shards (data.format=shards): the same frames, items and policies as reading the videos."""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from stop_lightning.data.datamodules import RecognitionDataModule, RetrievalDataModule
from stop_lightning.data.decode import VideoDecodeError
from stop_lightning.data.item_order import EpochSampler
from stop_lightning.data.jpeg import decode_jpegs, encode_jpeg, jpeg_size
from stop_lightning.data.jpeg_clips import EncodedBatch, collate
from stop_lightning.data.manifest import ClipRecord, read_manifest, write_classes, write_manifest
from stop_lightning.data.shards import encode_item, write_items, write_shards
from stop_lightning.data.stored_copies import StoreSettings
from stop_lightning.data.synthetic import frame_code_frames, read_frame_code, write_video
from stop_lightning.schema import ConfigError

FLAT = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # no normalisation: pixels stay readable


def _codes(video: torch.Tensor) -> list[int]:
    return [read_frame_code((f * 255).clamp(0, 255).numpy()) for f in video]


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    """Frame-numbered videos of several lengths (8 fps) and their shards, every frame and 4 fps."""
    root = tmp_path_factory.mktemp("coded_shards")
    lengths = (16, 3, 40, 23)
    rows = [ClipRecord(f"c/v{n}.avi", label=i % 2) for i, n in enumerate(lengths)]
    for r, n in zip(rows, lengths):
        write_video(root / "videos" / r.path, frame_code_frames(n, 32), fps=8.0)
    manifests = root / "manifests"
    for stage in ("train", "val", "test"):
        write_manifest(manifests / "split1" / f"{stage}.jsonl", rows)
    write_classes(manifests / "classes.txt", ["a", "b"])
    shards = {fps: root / f"shards_fps{fps}" for fps in (0, 4)}
    for fps, out in shards.items():
        write_shards(root / "videos", manifests, out, StoreSettings(short_side=64, fps=fps), progress=False)
    return root / "videos", manifests, shards


def _epoch_codes(dm, stage: str, epoch: int) -> list[list[int]]:
    """Frame codes of every item in the order and with the seeds the training loader uses."""
    ds = dm.datasets[stage]
    sampler = EpochSampler(len(ds), seed=7, shuffle=stage == "train")
    sampler.set_epoch(epoch)
    out = []
    for key in sampler:
        video = ds[key]["video"]
        out.append([_codes(v) for v in video] if video.dim() == 5 else _codes(video))
    return out


@pytest.mark.parametrize(("sampling", "store_fps"), [("segment", 0), ("fps", 0), ("fps", 4)])
def test_shards_sample_the_same_frames_as_the_videos(coded, data_cfg, sampling, store_fps):
    videos, manifests, shards = coded
    seen = {}
    for fmt in ("video", "shards"):
        cfg = data_cfg(
            videos,
            manifests,
            format=fmt,
            shard_dir=str(shards[store_fps]),
            sampling=sampling,
            fps=4.0,
            num_frames=5,
            train_crop_scale=[1.0, 1.0],
            test_clips=3,
        )
        dm = RecognitionDataModule(cfg, 32, *FLAT)
        dm.setup()
        seen[fmt] = {
            (stage, e): _epoch_codes(dm, stage, e) for stage in ("train", "val", "test") for e in (0, 1)
        }
    assert seen["shards"] == seen["video"]
    # and the codes are the ones the sampling rules name (independent check on the 16-frame video, eval)
    if sampling == "segment":
        assert seen["video"][("val", 0)][0] == [int((k + 0.5) * 16 / 5) for k in range(5)]
    else:  # 16 frames at 8 fps read at 4 fps: frames 0, 2, ..., 14, thinned to 5 by centred segments
        resampled = list(range(0, 16, 2))
        assert seen["video"][("val", 0)][0] == [resampled[int((k + 0.5) * 8 / 5)] for k in range(5)]
    train = seen["video"][("train", 0)] + seen["video"][("train", 1)]
    assert len({tuple(c) for c in train}) > 4  # training draws differ: the comparison is not vacuous


def test_shard_items_hold_the_stored_timeline(coded):
    videos, _, _ = coded
    item = encode_item(videos / "c/v40.avi", "c/v40.avi", StoreSettings(short_side=16, fps=3))
    meta = json.loads(item["meta"])
    # 40 frames at 8 fps kept at 3 fps: source frames round(k * 8/3) for k = 0..14
    assert (meta["num_frames"], meta["fps"], meta["source_frames"]) == (15, 3.0, 40)
    frames = decode_jpegs(
        [
            torch.frombuffer(bytearray(item["jpegs"][a:b]), dtype=torch.uint8)
            for a, b in zip(item["offsets"][:-1], item["offsets"][1:])
        ]
    )
    assert frames[0].shape == (3, 16, 16)


def test_retrieval_from_shards_matches_videos(msrvtt, data_cfg, tmp_path):
    root, manifests = msrvtt
    write_shards(
        root, manifests, tmp_path / "s", StoreSettings(short_side=64, fps=0), workers=2, progress=False
    )
    batches = {}
    for fmt in ("video", "shards"):
        cfg = data_cfg(
            root, manifests, format=fmt, shard_dir=str(tmp_path / "s"), sampling="fps", fps=3.0, num_frames=8
        )
        dm = RetrievalDataModule(cfg, 24, *FLAT)
        dm.setup()
        torch.manual_seed(0)
        batches[fmt] = next(iter(dm.train_dataloader()))
        assert dm.eval_captions("test")[1] == list(range(8))
    a, b = batches["video"], batches["shards"]
    assert a["caption"] == b["caption"] and torch.equal(a["frame_mask"], b["frame_mask"])
    assert (a["video"] - b["video"]).abs().mean() < 0.03  # the same frames, JPEG-encoded


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def broken_shards(tmp_path):
    """Shards of one good video, one unreadable file, one too short, an item with a corrupt JPEG and
    one whose stored frames are empty."""
    root = tmp_path / "videos"
    write_video(root / "good.avi", frame_code_frames(16, 32))
    (root / "garbage.avi").write_bytes(b"\x00\x01garbage" * 400)
    write_video(root / "short.avi", frame_code_frames(2, 32))
    write_video(root / "corrupt.avi", frame_code_frames(16, 32))
    write_video(root / "hole.avi", frame_code_frames(16, 32))
    names = ("good.avi", "garbage.avi", "short.avi", "corrupt.avi", "hole.avi")
    rows = [ClipRecord(n, label=0) for n in names]
    manifests = tmp_path / "manifests"
    for stage in ("train", "val", "test"):
        write_manifest(manifests / "split1" / f"{stage}.jsonl", rows)
    write_classes(manifests / "classes.txt", ["only"])
    settings = StoreSettings(short_side=64, fps=0)
    report = write_shards(root, manifests, tmp_path / "shards", settings, progress=False)
    # Three stages list the same five videos: each is stored once, the bad one reported once.
    assert report["written"] == {"items": 5} and report["manifests"] == 3
    assert [b["path"] for b in report["bad"]] == ["garbage.avi"]
    items = [encode_item(root / r.path, r.path, settings) for r in rows]
    items[3]["jpegs"] = b"\xff\xd8 not a jpeg" + bytes(items[3]["jpegs"])[12:]
    items[4]["jpegs"], items[4]["offsets"] = b"", np.zeros_like(items[4]["offsets"])
    write_items(tmp_path / "shards" / "items", items)
    return root, manifests, tmp_path / "shards"


@pytest.mark.parametrize(
    ("index", "reason"),
    [
        (1, r"item 1 \(garbage.avi\): bad when sharded: cannot open"),
        (2, r"item 2 \(short.avi\): too short: 2 frames"),
        (3, r"item 3 \(corrupt.avi\): stored frame \d+ is not a valid JPEG"),
        (4, r"item 4 \(hole.avi\): stored frame \d+ is not a valid JPEG"),
    ],
)
def test_bad_shard_item_raise_names_the_item(broken_shards, data_cfg, index, reason):
    root, manifests, shards = broken_shards
    cfg = data_cfg(
        root, manifests, format="shards", shard_dir=str(shards), bad_video="raise", min_video_frames=4
    )
    dm = RecognitionDataModule(cfg, 32, *FLAT)
    dm.setup("validate")
    assert _codes(dm.datasets["val"][0]["video"]) == [2, 6, 10, 14]
    with pytest.raises(VideoDecodeError, match=reason) as err:
        dm.datasets["val"][index]
    assert "data.bad_video=skip" in str(err.value) and "\n" not in str(err.value)


def test_bad_shard_item_skip_is_counted(broken_shards, data_cfg):
    root, manifests, shards = broken_shards
    cfg = data_cfg(
        root,
        manifests,
        format="shards",
        shard_dir=str(shards),
        bad_video="skip",
        min_video_frames=4,
        batch_size=5,
        num_workers=2,
    )
    dm = RecognitionDataModule(cfg, 32, *FLAT)
    dm.setup("validate")
    val = list(dm.val_dataloader())[0]
    assert val["index"].tolist() == [0, 1, 2, 3, 4] and float(val["video"][1:].abs().sum()) == 0.0
    assert dm.epoch_summary("val")["skipped"] == 4


def test_shards_from_another_manifest_are_refused(broken_shards, data_cfg, tmp_path):
    root, manifests, shards = broken_shards
    rows = read_manifest(manifests / "split1" / "val.jsonl")[:2]
    other = tmp_path / "other"
    write_manifest(other / "split1" / "val.jsonl", rows)
    write_classes(other / "classes.txt", ["only"])
    cfg = data_cfg(root, other, format="shards", shard_dir=str(shards))
    with pytest.raises(Exception, match="hold 5 videos but the manifests in .* list 2"):
        RecognitionDataModule(cfg, 32, *FLAT).setup("validate")
    cfg = replace(cfg, shard_dir=str(tmp_path / "nothing"))
    with pytest.raises(Exception, match="no shards at .*stop-lightning shard"):
        RecognitionDataModule(cfg, 32, *FLAT).setup("validate")


def test_write_shards_skips_complete_folders(coded, tmp_path):
    videos, manifests, _ = coded
    first = write_shards(
        videos, manifests, tmp_path / "s", StoreSettings(short_side=32, fps=0), progress=False
    )
    again = write_shards(
        videos, manifests, tmp_path / "s", StoreSettings(short_side=32, fps=0), progress=False
    )
    assert list(first["written"]) == again["existing"] == ["items"] and not again["written"]
    assert not list((tmp_path / "s").rglob("*.partial"))
    assert (tmp_path / "s" / "items" / "index.json").is_file()
    # One copy of every video any manifest lists, however many splits and stages list it.
    listed = {r.path for f in manifests.rglob("*.jsonl") for r in read_manifest(f)}
    assert first["written"]["items"] == len(listed)


# ---------------------------------------------------------------------------------------------
# The demo, trained from the videos and from their shards
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_from_shards_reaches_the_same_accuracy(cache_dir, tmp_path):
    from stop_lightning.config import load_config
    from stop_lightning.data.sources import video_sources
    from stop_lightning.train import train

    def cfg(*extra: str):
        return load_config(
            "demo",
            [
                f"paths.cache_dir={cache_dir}",
                f"paths.output_dir={tmp_path}",
                "data.synthetic_clips_per_class=8",
                "trainer.max_epochs=2",
                "trainer.enable_progress_bar=false",
                *extra,
            ],
        )

    c = cfg()
    videos, manifests = video_sources(c.data, c.task.name, c.paths.cache_dir)
    write_shards(
        videos,
        manifests,
        tmp_path / "shards",
        StoreSettings(short_side=64, fps=0, jpeg_quality=95),
        progress=False,
    )
    from_videos = train(cfg("name=videos"))
    from_shards = train(cfg("name=shards", "data.format=shards", f"data.shard_dir={tmp_path / 'shards'}"))
    test_clips = len(read_manifest(manifests / "split1" / "test.jsonl"))
    assert abs(from_shards["test/top1"] - from_videos["test/top1"]) <= 1 / test_clips


# ---------------------------------------------------------------------------------------------
# data.decode_on=device: only the JPEG bytes leave the workers; the batch is decoded after the transfer
# ---------------------------------------------------------------------------------------------


def _batches(dm, stage: str, epoch: int, device_side: bool) -> list[dict]:
    """Every batch of ``stage``'s loader in ``epoch``, passed through the DataModule's after-transfer
    hook (the 'device' is the CPU here) as the Trainer does."""
    loader = {"train": dm.train_dataloader, "test": dm.test_dataloader}[stage]()
    loader.sampler.set_epoch(epoch)
    batches = list(loader)
    assert all(isinstance(b["video"], EncodedBatch) == device_side for b in batches)
    return [dm.on_after_batch_transfer(b, 0) for b in batches]


def _both_paths(cls, data_cfg, where: tuple, shard_dir, stage=None, mean_std=FLAT, seed=0, **overrides):
    """``{decode_on: DataModule set up for stage}`` for data.decode_on=worker and =device over the
    shards at ``shard_dir`` of ``where`` (videos, manifests), otherwise alike."""
    out = {}
    for decode_on in ("worker", "device"):
        cfg = data_cfg(*where, format="shards", shard_dir=str(shard_dir), decode_on=decode_on, **overrides)
        out[decode_on] = cls(cfg, 24, *mean_std, seed=seed)
        out[decode_on].setup(stage)
    return out


@pytest.mark.parametrize("module", ["recognition", "retrieval"])
def test_decode_on_device_gives_the_worker_batches(coded, msrvtt, data_cfg, tmp_path, module):
    """The same crops, flips, resizes and views from the bytes-only path as from decoding in the
    worker, for several seeds and epochs, training and multi-view testing."""
    if module == "recognition":
        videos, manifests, shards = coded
        shard_dir, cls, views = shards[0], RecognitionDataModule, {"test_clips": 2, "test_crops": 3}
    else:
        videos, manifests = msrvtt
        shard_dir, cls, views = tmp_path / "s", RetrievalDataModule, {"sampling": "fps", "fps": 3.0}
        write_shards(videos, manifests, shard_dir, StoreSettings(short_side=48, fps=0), progress=False)
    crops = set()
    for seed in (0, 1, 5):
        dms = _both_paths(
            cls,
            data_cfg,
            (videos, manifests),
            shard_dir,
            mean_std=((0.4, 0.5, 0.6), (0.2, 0.3, 0.25)),
            seed=seed,
            num_frames=3,
            hflip=True,
            train_crop_scale=[0.3, 1.0],
            **views,
        )
        seen = {
            decode_on: {
                (stage, epoch): _batches(dm, stage, epoch, decode_on == "device")
                for stage in ("train", "test")
                for epoch in (0, 1)
            }
            for decode_on, dm in dms.items()
        }
        for key, worker in seen["worker"].items():
            device = seen["device"][key]
            assert len(device) == len(worker) > 0
            for a, b in zip(worker, device):
                assert a["video"].dtype == b["video"].dtype == torch.float32
                assert torch.equal(a["video"], b["video"]), key
                assert torch.equal(a["index"], b["index"])
        crops.add(float(seen["worker"][("train", 0)][0]["video"].sum()))
    assert len(crops) == 3  # the seeds draw different crops: the comparison is not vacuous


def test_codec_raises_no_deprecation_warning(coded, data_cfg):
    """torchvision 0.29 deprecates its image functions (a DeprecationWarning at every call): the
    codec the shards use raises none, writing or reading, on either path."""
    videos, manifests, shards = coded
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        blob = encode_jpeg(torch.full((3, 8, 16), 7, dtype=torch.uint8), 90)
        (frame,) = decode_jpegs([torch.frombuffer(bytearray(blob), dtype=torch.uint8)])
        assert frame.shape == (3, 8, 16) and jpeg_size(blob) == (8, 16)
        dms = _both_paths(RecognitionDataModule, data_cfg, (videos, manifests), shards[0], "validate")
        for dm in dms.values():
            assert dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)["video"].shape[0] == 4


def _cut_frames(item: dict) -> dict:
    """``item`` with every stored frame cut short after its scan header: its size still reads, its
    pixels do not decode."""
    jpegs, offsets = bytes(item["jpegs"]), item["offsets"]
    frames = [jpegs[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    cut = [f[: f.index(b"\xff\xda") + 24] for f in frames]
    new = np.zeros_like(offsets)
    new[1:] = np.cumsum([len(f) for f in cut])
    return {**item, "jpegs": b"".join(cut), "offsets": new}


@pytest.mark.parametrize("damage", ["header", "pixels"])
def test_corrupt_stored_jpeg_is_the_same_line_on_both_paths(broken_shards, data_cfg, tmp_path, damage):
    root, manifests, shards = broken_shards
    if damage == "pixels":  # the header is whole: only the decoder, on the device, finds it
        settings = StoreSettings(short_side=64, fps=0)
        names = ("good.avi", "garbage.avi", "short.avi", "corrupt.avi", "hole.avi")
        items = [encode_item(root / n, n, settings) for n in names]
        items[3] = _cut_frames(items[3])
        shards = tmp_path / "cut"
        write_items(shards / "items", items)
    lines = {}
    for decode_on, dm in _both_paths(
        RecognitionDataModule, data_cfg, (root, manifests), shards, "validate"
    ).items():
        with pytest.raises(VideoDecodeError) as err:
            dm.on_after_batch_transfer(collate([dm.datasets["val"][3]]), 0)
        lines[decode_on] = str(err.value)
    assert lines["worker"] == lines["device"], lines
    expected = r".* item 3 \(corrupt.avi\): stored frame \d+ is not a valid JPEG \(.+\) "
    expected += r"\(set data.bad_video=skip to skip bad videos\)"
    assert re.fullmatch(expected, lines["worker"]) and "\n" not in lines["worker"]
    if damage == "pixels":  # under skip the worker path replaces it; the device path cannot and says so
        dm = _both_paths(
            RecognitionDataModule, data_cfg, (root, manifests), shards, "validate", bad_video="skip"
        )
        assert dm["worker"].datasets["val"][3]["unreadable"] is True
        with pytest.raises(
            VideoDecodeError, match=r"found on the device, .* set data.decode_on=worker"
        ) as err:
            dm["device"].on_after_batch_transfer(collate([dm["device"].datasets["val"][3]]), 0)
        assert str(err.value).startswith(lines["worker"].rsplit(" (set data.bad_video", 1)[0])


def test_decode_on_device_skip_keeps_blank_stand_ins(broken_shards, data_cfg):
    """data.bad_video=skip: the items found bad in the worker are blank stand-ins, batched with the
    undecoded good ones and counted, as when decoding in the worker."""
    root, manifests, shards = broken_shards
    out = {}
    dms = _both_paths(
        RecognitionDataModule,
        data_cfg,
        (root, manifests),
        shards,
        "validate",
        bad_video="skip",
        min_video_frames=4,
        batch_size=5,
    )
    for decode_on, dm in dms.items():
        out[decode_on] = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
        assert dm.epoch_summary("val")["skipped"] == 4
    assert torch.equal(out["worker"]["video"], out["device"]["video"])
    assert torch.equal(out["device"]["unreadable"], torch.tensor([False, True, True, True, True]))


def test_decode_on_device_needs_shards(coded, data_cfg):
    videos, manifests, _ = coded
    with pytest.raises(ConfigError, match="data.decode_on=device .* set data.format=shards"):
        RecognitionDataModule(data_cfg(videos, manifests, decode_on="device"), 32, *FLAT)


@pytest.mark.slow
def test_demo_trains_to_the_same_weights_decoding_on_device(cache_dir, tmp_path):
    """The bytes-only path (2 loader workers, decoded after the transfer) trains the demo from its
    shards to bitwise the weights that decoding in the workers gives, for the same seed."""
    from stop_lightning.checkpoint_io import read_checkpoint
    from stop_lightning.config import load_config
    from stop_lightning.data.sources import video_sources
    from stop_lightning.train import train

    def cfg(decode_on: str):
        return load_config(
            "demo",
            [
                f"paths.cache_dir={cache_dir}",
                f"paths.output_dir={tmp_path / decode_on}",
                "trainer.max_epochs=1",
                "trainer.enable_progress_bar=false",
                "data.synthetic_clips_per_class=8",
                "data.train_crop_scale=[0.5,1.0]",  # random crops: the draws must agree
                "data.num_workers=2",
                "data.format=shards",
                f"data.shard_dir={tmp_path / 'shards'}",
                f"data.decode_on={decode_on}",
            ],
        )

    c = cfg("worker")
    videos, manifests = video_sources(c.data, c.task.name, c.paths.cache_dir)
    write_shards(videos, manifests, tmp_path / "shards", StoreSettings(short_side=64, fps=0), progress=False)
    metrics, weights = {}, {}
    for decode_on in ("worker", "device"):
        metrics[decode_on] = train(cfg(decode_on))
        (ckpt,) = (tmp_path / decode_on).rglob("last.ckpt")
        saved = read_checkpoint(ckpt)
        assert saved["global_step"] > 0  # it trained
        weights[decode_on] = saved["state_dict"]
    assert weights["worker"].keys() == weights["device"].keys() and weights["worker"]
    for key, value in weights["worker"].items():
        assert torch.equal(value, weights["device"][key]), key
    assert metrics["worker"]["test/top1"] == metrics["device"]["test/top1"]
