"""DataModules: batch shapes and dtypes, sampled frames, protocols, bad-video policies, determinism."""

import logging
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from stop_lightning.data.datamodules import RecognitionDataModule, RetrievalDataModule
from stop_lightning.data.decode import VideoDecodeError
from stop_lightning.data.manifest import (
    ClipRecord,
    ManifestError,
    read_manifest,
    write_classes,
    write_manifest,
)
from stop_lightning.data.synthetic import ensure_synthetic, frame_code_frames, read_frame_code, write_video
from stop_lightning.schema import ConfigError, DataConfig
from stop_lightning.tasks.factory import build_datamodule

MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's normalisation
STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


def test_recognition_batches(hmdb, data_cfg):
    root, manifests = hmdb
    cfg = data_cfg(root, manifests, test_clips=2, test_crops=3)
    dm = RecognitionDataModule(cfg, image_size=24, mean=MEAN, std=STD)
    dm.setup()
    assert dm.class_names == ["move down", "move left", "move right", "move up"] and dm.num_classes == 4
    for stage, video_shape in [
        ("train", (4, 4, 3, 24, 24)),
        ("val", (4, 4, 3, 24, 24)),
        ("test", (4, 6, 4, 3, 24, 24)),
    ]:
        batch = next(iter(getattr(dm, f"{stage}_dataloader")()))
        assert set(batch) == {"video", "label", "index", "unreadable"}
        assert batch["unreadable"].dtype == torch.bool and not batch["unreadable"].any()
        assert batch["video"].shape == video_shape and batch["video"].dtype == torch.float32
        assert batch["label"].dtype == torch.int64 and batch["index"].dtype == torch.int64
        records = dm.datasets[stage].records
        assert [records[i].label for i in batch["index"].tolist()] == batch["label"].tolist()
    assert len(dm.datasets["train"]) == 12 and len(dm.datasets["test"]) == 8


def test_retrieval_batches_and_captions(msrvtt, data_cfg):
    root, manifests = msrvtt
    cfg = data_cfg(root, manifests, sampling="fps", fps=3.0, num_frames=8)
    dm = RetrievalDataModule(cfg, image_size=24, mean=MEAN, std=STD)
    dm.setup()
    train = next(iter(dm.train_dataloader()))
    assert set(train) == {"video", "frame_mask", "caption", "index", "unreadable"}
    assert train["video"].shape == (4, 8, 3, 24, 24) and train["frame_mask"].dtype == torch.bool
    # 16 frames at 8 fps resampled at 3 fps -> 6 real frames, 2 padded.
    assert train["frame_mask"].sum(1).tolist() == [6] * 4
    # Whether a batch has padded frames is read on the host, before the transfer (the model does not).
    assert dm.on_before_batch_transfer(train, 0)["padded_frames"] is True
    unpadded = {**train, "frame_mask": torch.ones(4, 8, dtype=torch.bool)}
    assert dm.on_before_batch_transfer(unpadded, 0)["padded_frames"] is False
    assert isinstance(train["caption"], list) and len(train["caption"]) == 4
    for cap, vi in zip(train["caption"], train["index"].tolist()):
        assert cap in dm.datasets["train"].captions[vi]
    test = next(iter(dm.test_dataloader()))
    assert set(test) == {"video", "frame_mask", "index", "unreadable"}
    captions, owners = dm.eval_captions("test")
    assert len(captions) == len(owners) == len(dm.datasets["test"]) == 8  # 1k-A style: one per video
    assert captions[0] == read_manifest(manifests / "test.jsonl")[0].captions[0] and owners == list(range(8))


def test_multi_caption_eval_sets(tmp_path, msrvtt):
    root, manifests = msrvtt
    rows = read_manifest(manifests / "train.jsonl")[:3]
    # the same video twice (one caption per row) is merged into one item with both captions
    split = [
        ClipRecord(rows[0].path, captions=rows[0].captions[:1]),
        ClipRecord(rows[0].path, captions=rows[0].captions[1:2]),
    ]
    for stage in ("train", "val", "test"):
        write_manifest(tmp_path / f"{stage}.jsonl", split + rows[1:])
    cfg = DataConfig(dataset="manifest", video_root=str(root), manifest_dir=str(tmp_path), num_workers=0)
    dm = RetrievalDataModule(cfg, 16, MEAN, STD)
    dm.setup("test")
    captions, owners = dm.eval_captions("test")
    assert len(dm.datasets["test"]) == 3
    assert owners == [0, 0] + [1] * 5 + [2] * 5 and captions[:2] == list(rows[0].captions[:2])


# ---------------------------------------------------------------------------------------------
# Which frames were sampled: frame numbers are drawn into the pixels and read back.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    root = tmp_path_factory.mktemp("coded")
    write_video(root / "c" / "long16.avi", frame_code_frames(16, 32))
    write_video(root / "c" / "short3.avi", frame_code_frames(3, 32))
    manifests = root / "manifests"
    rows = [ClipRecord("c/long16.avi", label=0), ClipRecord("c/short3.avi", label=1)]
    for stage in ("train", "val", "test"):
        write_manifest(manifests / "split1" / f"{stage}.jsonl", rows)
    write_classes(manifests / "classes.txt", ["a", "b"])
    return root, manifests


def _codes(video: torch.Tensor) -> list[int]:
    return [read_frame_code((f * 255).clamp(0, 255).numpy()) for f in video]


def test_sampled_frames_eval_train_and_short(coded, data_cfg):
    root, manifests = coded
    cfg = data_cfg(root, manifests, train_crop_scale=[1.0, 1.0], test_clips=2)
    dm = RecognitionDataModule(cfg, 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    dm.setup()
    assert _codes(dm.datasets["val"][0]["video"]) == [2, 6, 10, 14]  # centres of 4 segments of 4
    assert _codes(dm.datasets["val"][1]["video"]) == [0, 1, 1, 2]  # 3 frames, 4 samples: repeats
    test = dm.datasets["test"][0]["video"]  # 2 clips at 1/4 and 3/4 of each segment
    assert [_codes(v) for v in test] == [[1, 5, 9, 13], [3, 7, 11, 15]]
    torch.manual_seed(0)
    draws = [_codes(dm.datasets["train"][0]["video"]) for _ in range(10)]
    assert all(4 * k <= i < 4 * (k + 1) for d in draws for k, i in enumerate(d))
    assert len({tuple(d) for d in draws}) > 1


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def broken(tmp_path, coded):
    """A manifest with one good video and one of each kind of bad video."""
    root = tmp_path / "videos"
    write_video(root / "good.avi", frame_code_frames(16, 32))
    (root / "garbage.avi").write_bytes(b"\x00\x01garbage" * 400)
    (root / "empty.avi").write_bytes(b"")
    write_video(root / "short.avi", frame_code_frames(2, 32))
    names = ["good.avi", "garbage.avi", "empty.avi", "missing.avi", "short.avi"]
    rows = [ClipRecord(n, label=0) for n in names]
    manifests = tmp_path / "manifests"
    for stage in ("train", "val", "test"):
        write_manifest(manifests / "split1" / f"{stage}.jsonl", rows)
    write_classes(manifests / "classes.txt", ["only"])
    return root, manifests


@pytest.mark.parametrize(
    ("index", "reason"),
    [
        (1, "garbage.avi: cannot open"),
        (2, "empty.avi: empty file"),
        (3, "missing.avi: file not found"),
        (4, "short.avi: too short: 2 frames"),
    ],
)
def test_raise_policy_names_file_and_reason(broken, data_cfg, index, reason):
    cfg = data_cfg(*broken, bad_video="raise", min_video_frames=4)
    dm = RecognitionDataModule(cfg, 32, MEAN, STD)
    dm.setup("validate")
    assert dm.datasets["val"][0]["video"].shape == (4, 3, 32, 32)
    with pytest.raises(VideoDecodeError, match=reason) as err:
        dm.datasets["val"][index]
    assert "data.bad_video=skip" in str(err.value)


def test_skip_policy_replaces_and_counts(broken, data_cfg, caplog):
    cfg = data_cfg(*broken, bad_video="skip", min_video_frames=4, batch_size=5)
    dm = RecognitionDataModule(cfg, 32, MEAN, STD)
    dm.setup()
    with caplog.at_level(logging.WARNING):
        torch.manual_seed(0)
        train = next(iter(dm.train_dataloader()))
    # Training: every bad clip is replaced by another (eventually the only good one).
    assert train["video"].shape == (5, 4, 3, 32, 32) and set(train["index"].tolist()) == {0}
    assert dm.skipped["train"] >= 4
    assert "skipping bad video" in caplog.text and "garbage.avi" in caplog.text
    # Evaluation: a bad clip becomes a blank one in place, so the metrics still count it.
    val = next(iter(dm.val_dataloader()))
    assert val["index"].tolist() == [0, 1, 2, 3, 4] and float(val["video"][1].abs().sum()) == 0.0
    assert dm.skipped["val"] == 4
    summary = dm.epoch_summary("val")
    assert summary["skipped"] == 4 and summary["clips"] == 1
    assert dm.skipped["val"] == 0  # reset for the next epoch


def test_skip_counts_cross_worker_processes(broken, data_cfg):
    cfg = data_cfg(*broken, bad_video="skip", min_video_frames=4, batch_size=1, num_workers=2)
    dm = RecognitionDataModule(cfg, 32, MEAN, STD)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    assert len(batches) == 5
    summary = dm.epoch_summary("val")  # counted inside the two worker processes
    assert (summary["clips"], summary["skipped"]) == (1, 4)


def test_escaping_path_is_refused_at_setup(tmp_path, data_cfg):
    manifests = tmp_path / "m"
    (manifests / "split1").mkdir(parents=True)
    (manifests / "split1" / "val.jsonl").write_text('{"path": "../outside.avi", "label": 0}\n')
    write_classes(manifests / "classes.txt", ["x"])
    (tmp_path / "videos").mkdir()
    dm = RecognitionDataModule(data_cfg(tmp_path / "videos", manifests), 32, MEAN, STD)
    with pytest.raises(ManifestError, match=r"val\.jsonl:1: field 'path' = '\.\./outside\.avi' escapes"):
        dm.setup("validate")


def test_missing_manifest_says_how_to_build_it(tmp_path, data_cfg):
    (tmp_path / "videos").mkdir()
    cfg = data_cfg(tmp_path / "videos", tmp_path / "manifests" / "hmdb51", dataset="hmdb51")
    with pytest.raises(ManifestError) as err:
        RecognitionDataModule(cfg, 32, MEAN, STD).setup()
    msg = str(err.value)
    assert "classes.txt does not exist" in msg
    assert (
        f"stop-lightning manifest hmdb51 --root {tmp_path / 'videos'}" in msg
        and f"--out {tmp_path / 'manifests' / 'hmdb51'}" in msg
    )
    cfg = data_cfg(tmp_path / "nope", tmp_path / "manifests")
    with pytest.raises(ManifestError, match="data.video_root=.*nope is not a directory"):
        RecognitionDataModule(cfg, 32, MEAN, STD).setup()


# ---------------------------------------------------------------------------------------------
# Protocols
# ---------------------------------------------------------------------------------------------


def _copy_manifests(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_few_shot_k_per_class_reproducible_and_written(tmp_path, hmdb, data_cfg):
    root, manifests = hmdb
    manifests = _copy_manifests(manifests, tmp_path / "m")

    def train_paths(seed: int) -> list[str]:
        dm = RecognitionDataModule(
            data_cfg(root, manifests, protocol="few_shot", shots=2, protocol_seed=seed), 16, MEAN, STD
        )
        dm.setup("fit")
        labels = [r.label for r in dm.train_records]
        assert sorted(labels) == [0, 0, 1, 1, 2, 2, 3, 3]
        return [r.path for r in dm.train_records]

    first = train_paths(0)
    written = manifests / "split1" / "train_fewshot_k2_seed0.jsonl"
    assert [r.path for r in read_manifest(written)] == first
    written.unlink()
    assert train_paths(0) == first  # same seed, same clips, even when drawn again
    assert train_paths(1) != first
    with pytest.raises(ConfigError, match="has only 3 training clips"):
        RecognitionDataModule(data_cfg(root, manifests, protocol="few_shot", shots=4), 16, MEAN, STD).setup(
            "fit"
        )


def test_base_to_novel_and_zero_shot(hmdb, data_cfg):
    root, manifests = hmdb
    dm = RecognitionDataModule(data_cfg(root, manifests, protocol="base_to_novel"), 16, MEAN, STD)
    dm.setup()
    # classes.txt: move_down, move_left, move_right, move_up -> base = first half alphabetically
    assert dm.base_class_ids == [0, 1] and dm.novel_class_ids == [2, 3]
    assert {r.label for r in dm.train_records} == {0, 1} and len(dm.train_records) == 6
    assert {r.label for r in dm.datasets["test"].records} == {0, 1, 2, 3}
    zs = RecognitionDataModule(data_cfg(root, manifests, protocol="zero_shot"), 16, MEAN, STD)
    zs.setup()
    assert zs.datasets["train"] is None and len(zs.datasets["test"]) == 8
    with pytest.raises(ConfigError, match="zero_shot has no training set"):
        zs.train_dataloader()


# ---------------------------------------------------------------------------------------------
# Synthetic on demand, determinism
# ---------------------------------------------------------------------------------------------


def test_build_datamodule_synthetic_is_idempotent_and_concurrent(tmp_path):
    cfg = DataConfig(
        dataset="synthetic",
        num_workers=0,
        synthetic_classes=2,
        synthetic_clips_per_class=3,
        synthetic_frames=8,
        synthetic_size=32,
    )
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_synthetic(cfg, tmp_path, "hmdb51")))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1
    video_root, manifest_dir = results[0]
    assert (manifest_dir / "split1" / "train.jsonl").is_file()
    assert [p.name for p in (tmp_path / "synthetic").iterdir()] == [video_root.parent.name]  # no leftovers
    stamp = (manifest_dir / "classes.txt").stat().st_mtime_ns
    dm = build_datamodule(cfg, "recognition", 16, MEAN, STD, seed=0, cache_dir=tmp_path)
    assert (manifest_dir / "classes.txt").stat().st_mtime_ns == stamp  # reused, not rewritten
    dm.setup()
    assert dm.class_names == ["move left", "move right"]
    dm = build_datamodule(
        replace(cfg, sampling="fps"), "retrieval", 16, MEAN, STD, seed=0, cache_dir=tmp_path
    )
    dm.setup("fit")
    assert "caption" in next(iter(dm.train_dataloader()))


def test_same_seed_same_batches(hmdb, data_cfg):
    root, manifests = hmdb

    def first_batch(seed: int):
        torch.manual_seed(123)  # what Lightning's seed_everything does in the main process
        dm = RecognitionDataModule(data_cfg(root, manifests), 16, MEAN, STD, seed=seed)
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))

    a, b, c = first_batch(0), first_batch(0), first_batch(1)
    assert torch.equal(a["index"], b["index"]) and torch.equal(a["video"], b["video"])
    assert not torch.equal(a["index"], c["index"])


def test_loader_throughput_benchmark(tmp_path, hmdb, data_cfg):
    from benchmarks.loader import loader_throughput, markdown_table

    root, manifests = hmdb
    rows = loader_throughput(
        data_cfg(root, manifests), cache_dir=tmp_path, image_size=16, workers=(0,), frames=(4,), batches=2
    )
    assert len(rows) == 1 and rows[0]["clips"] == 8 and rows[0]["clips_per_s"] > 0
    assert "| 4 | 0 |" in markdown_table(rows)


def test_worker_decode_error_is_the_same_line_as_in_process(broken, data_cfg):
    """A bad video found in a DataLoader worker ends in the same one-line message as without workers."""
    messages = []
    for workers in (0, 1):
        cfg = data_cfg(*broken, bad_video="raise", min_video_frames=4, batch_size=5, num_workers=workers)
        dm = RecognitionDataModule(cfg, 32, MEAN, STD)
        dm.setup("validate")
        with pytest.raises(VideoDecodeError) as err:
            next(iter(dm.val_dataloader()))
        messages.append((str(err.value), err.value.path, err.value.reason))
    assert messages[0] == messages[1], messages
    assert "\n" not in messages[1][0] and messages[1][0].endswith(
        "(set data.bad_video=skip to skip bad videos)"
    )


def test_manifest_with_non_utf8_bytes_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"path": "a.avi", "label": 0}\n{"path": "caf\xe9.avi", "label": 0}\n')
    with pytest.raises(ManifestError, match=r"train\.jsonl:2: not UTF-8 text \(byte 0xe9 at column 14\)"):
        read_manifest(path)


def test_frames_past_a_cut_videos_end_are_counted_and_reported(tmp_path, data_cfg, caplog):
    """A file cut short by less than half still decodes (its wanted frames past the cut repeat the
    last decoded one): never silently, the count reaches the epoch summary and its warning."""
    root = tmp_path / "videos"
    whole = write_video(root / "whole.avi", frame_code_frames(40, 32), fps=25, gop=10)
    data = whole.read_bytes()
    (root / "cut.avi").write_bytes(data[: int(len(data) * 0.8)])
    rows = [ClipRecord("whole.avi", label=0), ClipRecord("cut.avi", label=0)]
    manifests = tmp_path / "manifests"
    for stage in ("train", "val", "test"):
        write_manifest(manifests / "split1" / f"{stage}.jsonl", rows)
    write_classes(manifests / "classes.txt", ["only"])
    dm = RecognitionDataModule(data_cfg(root, manifests, num_frames=8), 32, MEAN, STD)
    dm.setup("validate")
    assert dm.datasets["val"][0]["video"].shape[0] == 8
    assert dm.epoch_summary("val")["missing_frames"] == 0  # the whole file: nothing repeated
    cut = dm.datasets["val"][1]["video"]  # [T, 3, H, W]
    with caplog.at_level(logging.WARNING):
        summary = dm.epoch_summary("val")
    missing = summary["missing_frames"]
    assert 1 <= missing <= 4 and summary["files_with_missing_frames"] == 1 and summary["skipped"] == 0
    # The frames past the cut are copies of the last one decoded.
    for t in range(8 - missing, 8):
        assert torch.equal(cut[t], cut[7 - missing])
    assert not torch.equal(cut[7 - missing], cut[6 - missing])
    assert f"{missing} frames past a video's end repeated in 1 files" in caplog.text


@pytest.mark.parametrize("module", ["recognition", "retrieval"])
def test_normalize_on_device_gives_the_same_batches_after_the_transfer(hmdb, msrvtt, data_cfg, module):
    """data.normalize_on_device: the loader yields uint8 clips (a quarter of the bytes), and the
    DataModule's after-transfer hook turns them into exactly what the float loader gives, for the
    same seed (same frames, same crops), in training, evaluation and multi-view testing."""
    cls, (root, manifests) = (
        (RecognitionDataModule, hmdb) if module == "recognition" else (RetrievalDataModule, msrvtt)
    )
    views = {"test_clips": 2, "test_crops": 3} if module == "recognition" else {}

    def batches(on_device: bool):
        torch.manual_seed(5)
        dm = cls(data_cfg(root, manifests, normalize_on_device=on_device, **views), 24, MEAN, STD)
        dm.setup()
        return dm, [
            next(iter(loader())) for loader in (dm.train_dataloader, dm.val_dataloader, dm.test_dataloader)
        ]

    (_, floats), (dm, raw) = batches(False), batches(True)
    for f, r in zip(floats, raw):
        assert r["video"].dtype == torch.uint8 and f["video"].dtype == torch.float32
        assert torch.equal(f["index"], r["index"])
        moved = dm.on_after_batch_transfer(r, 0)
        assert moved["video"].dtype == torch.float32 and moved["video"].shape == f["video"].shape
        torch.testing.assert_close(moved["video"], f["video"], rtol=0, atol=1e-5)
    float_batch = floats[0]
    assert dm.on_after_batch_transfer(float_batch, 0)["video"] is float_batch["video"]  # floats pass


def test_normalize_on_device_placeholder_is_uint8(broken, data_cfg):
    cfg = data_cfg(*broken, bad_video="skip", min_video_frames=4, batch_size=5, normalize_on_device=True)
    dm = RecognitionDataModule(cfg, 32, MEAN, STD)
    dm.setup("validate")
    val = next(iter(dm.val_dataloader()))  # good clip + 4 blank ones collate together
    assert val["video"].dtype == torch.uint8 and float(val["video"][1:].float().abs().sum()) == 0.0
