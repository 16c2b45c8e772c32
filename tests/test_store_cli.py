"""`stop-lightning preprocess` and `stop-lightning shard` from the command line: they run on an
experiment's data, a rerun redoes nothing, and the overrides they print train a run on the result."""

import re

import pytest

from stop_lightning.cli import main


@pytest.fixture
def demo_args(cache_dir, tmp_path):
    return [
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={tmp_path / 'runs'}",
        "data.synthetic_clips_per_class=8",
        "trainer.enable_progress_bar=false",
    ]


def printed_overrides(out: str) -> list[str]:
    line = [row for row in out.splitlines() if row.startswith("use them with: ")][-1]
    return line.removeprefix("use them with: ").split()


def train_one_epoch(overrides: list[str], demo_args: list[str], capsys) -> str:
    assert main(["train", "demo", *demo_args, "trainer.max_epochs=1", *overrides]) == 0
    return capsys.readouterr().out


def test_preprocess_cli_resumes_and_its_overrides_train(demo_args, tmp_path, capsys):
    out_dir = tmp_path / "pre"
    assert main(["preprocess", "demo", "--out", str(out_dir), "--workers", "1", *demo_args]) == 0
    first = capsys.readouterr().out
    written = int(re.search(r"(\d+) videos written, 0 already there, 0 failed", first).group(1))
    assert written == 16  # 2 classes x 8 clips of the synthetic HMDB51 layout
    # Segment sampling (recognition): every source frame kept, not data.fps.
    assert "fps=0.0" in first
    assert main(["preprocess", "demo", "--out", str(out_dir), "--workers", "1", *demo_args]) == 0
    assert f"0 videos written, {written} already there, 0 failed" in capsys.readouterr().out
    overrides = printed_overrides(first)
    # The synthetic demo would be generated again without data.dataset=manifest.
    assert overrides[0] == "data.dataset=manifest"
    assert any(o == f"data.video_root={out_dir / 'videos'}" for o in overrides)
    assert not list(out_dir.rglob("*.tmp"))
    trained = train_one_epoch(overrides, demo_args, capsys)
    assert "test/top1" in trained


def test_shard_cli_and_its_overrides_train(demo_args, tmp_path, capsys):
    out_dir = tmp_path / "shards"
    assert main(["shard", "demo", "--out", str(out_dir), "--workers", "1", *demo_args]) == 0
    first = capsys.readouterr().out
    # Synthetic HMDB51, 8 clips per class: a clip is used by a split unless it is j >= 3 with
    # j % 3 == split % 3; every j is used by some split, so all 16 videos are stored, once each.
    assert f"{out_dir}/items: 16 videos (each once, from 9 manifests)" in first, first
    assert main(["shard", "demo", "--out", str(out_dir), "--workers", "1", *demo_args]) == 0
    assert "already complete, kept:" in capsys.readouterr().out
    overrides = printed_overrides(first)
    assert "data.format=shards" in overrides and f"data.shard_dir={out_dir}" in overrides
    trained = train_one_epoch(overrides, demo_args, capsys)
    assert "test/top1" in trained
