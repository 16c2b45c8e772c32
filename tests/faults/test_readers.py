"""Every kind of file the framework reads, made empty, cut short, foreign (another program's file of
the same name) or unreadable, through the command line: exit 2, one line on stderr naming the file,
no traceback, and no run folder left behind (docs/reliability.md, "Reading files").

The bad files are made here from small real ones (the session's demo checkpoint, an export of it,
an embed output written from random rows, a synthetic annotation layout); every case fails before a
model is trained, most before one is built.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from stop_lightning.cli import main
from stop_lightning.inference import save_embeddings

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # root reads a chmod 000 file anyway


@dataclass
class Case:
    """One bad file: ``make(ctx)`` writes it and returns (argv, the file the line must name)."""

    reader: str
    fault: str
    make: Callable[[Context], tuple[list[str], Path]]


@dataclass
class Context:
    tmp: Path
    cache_dir: Path
    demo_ckpt: Path
    exported: Path
    out: Path  # paths.output_dir of every run a case starts: it must stay without a run folder

    def overrides(self, *extra: str) -> list[str]:
        return [f"paths.cache_dir={self.cache_dir}", f"paths.output_dir={self.out}", *extra]


# ---------------------------------------------------------------- the faults, per kind of bytes
def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def zip_of_text() -> bytes:
    """A zip archive of another program: same magic number as a torch file, no data.pkl."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes/readme.txt", "not a model")
    return buffer.getvalue()


def write(path: Path, content: bytes | None) -> Path:
    """``content`` into ``path``; ``None`` makes ``path`` a folder (unreadable as a file, even for root)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    return path


# ---------------------------------------------------------------- checkpoints (eval --ckpt)
def checkpoint_case(content: Callable[[Context], bytes | None]):
    def make(ctx: Context):
        bad = write(ctx.tmp / "bad.ckpt", content(ctx))
        return ["eval", "demo", "--ckpt", str(bad), *ctx.overrides()], bad

    return make


def resume_case(content: Callable[[Context], bytes | None]):
    def make(ctx: Context):
        run = ctx.out / "demo" / "r"  # the resumed run: nothing may be written in it
        bad = write(run / "checkpoints" / "last.ckpt", content(ctx))
        overrides = [f"paths.cache_dir={ctx.cache_dir}", f"paths.output_dir={ctx.out}"]
        return ["train", "demo", "--resume", str(bad), *overrides], bad

    return make


# ---------------------------------------------------------------- export folders (predict --ckpt)
def export_case(name: str, content: Callable[[Context], bytes | None]):
    def make(ctx: Context):
        folder = ctx.tmp / "export"
        shutil.copytree(ctx.exported, folder)
        (folder / name).unlink()
        bad = write(folder / name, content(ctx))
        return ["predict", "--ckpt", str(folder), str(ctx.tmp / "any.mp4")], bad

    return make


def export_cases(reader: str, name: str, foreign: bytes) -> list[Case]:
    return [
        Case(reader, "empty", export_case(name, lambda ctx: b"")),
        Case(
            reader, "truncated", export_case(name, lambda ctx: truncated((ctx.exported / name).read_bytes()))
        ),
        Case(reader, "foreign", export_case(name, lambda ctx: foreign)),
        Case(reader, "unreadable", export_case(name, lambda ctx: None)),
    ]


# ---------------------------------------------------------------- embeddings (search)
def embeddings_case(suffix: str, content: Callable[[Context, Path], bytes | None]):
    def make(ctx: Context):
        good = save_embeddings(
            ctx.tmp / f"good{suffix}", torch.randn(3, 4), ["a", "b", "c"], ["a.mp4", "b.mp4", "c.mp4"], {}
        )
        bad = write(ctx.tmp / f"bad{suffix}", content(ctx, good))
        return ["search", str(bad), "a square"], bad

    return make


def npz_without_embeddings() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, weights=np.zeros(3))
    return buffer.getvalue()


# ---------------------------------------------------------------- manifests (embed --manifest)
MANIFEST_ROWS = b'{"path": "a.mp4", "label": 0}\n{"path": "b.mp4", "label": 1}\n'


def manifest_case(content: bytes | None):
    def make(ctx: Context):
        bad = write(ctx.tmp / "bad.jsonl", content)
        argv = ["embed", "--ckpt", str(ctx.demo_ckpt), "--manifest", str(bad), "--out", str(ctx.tmp / "e.pt")]
        return argv, bad

    return make


# ---------------------------------------------------------------- a dataset's class list and split (eval)
def layout_case(name: str, content: bytes | None):
    """An HMDB51-style manifest folder where ``name`` is bad; evaluated zero-shot (nothing to load)."""

    def make(ctx: Context):
        manifests, videos = ctx.tmp / "manifests", ctx.tmp / "videos"
        videos.mkdir()
        write(manifests / "classes.txt", b"brush_hair\nclimb\n")
        for stage in ("train", "val", "test"):
            write(manifests / "split1" / f"{stage}.jsonl", MANIFEST_ROWS)
        (manifests / name).unlink()
        bad = write(manifests / name, content)
        overrides = ctx.overrides(
            "model.preset=zero_shot",
            "data.dataset=hmdb51",
            f"data.manifest_dir={manifests}",
            f"data.video_root={videos}",
        )
        return ["eval", "demo", *overrides], bad

    return make


# ---------------------------------------------------------------- YAML configs (train, sweep)
def yaml_case(command: str, content: bytes | None):
    def make(ctx: Context):
        bad = write(ctx.tmp / "bad.yaml", content)
        return [command, str(bad), *ctx.overrides()], bad

    return make


CUT_YAML = b"name: cut\ntrainer:\n  max_epochs: 1\n  limit_train"  # a file that stops mid-key


# ---------------------------------------------------------------- annotation files (manifest)
def annotation_case(content: bytes | None):
    def make(ctx: Context):
        from stop_lightning.data.synthetic import write_synthetic_dataset

        root = write_synthetic_dataset(
            ctx.tmp / "hmdb", "hmdb51", num_classes=2, clips_per_class=3, num_frames=4, size=16
        )
        listed = sorted(root.rglob("*_test_split1.txt"))[0]
        listed.unlink()
        bad = write(listed, content)
        argv = ["manifest", "hmdb51", "--root", str(root), "--out", str(ctx.tmp / "built"), "--quiet"]
        return argv, bad

    return make


# ---------------------------------------------------------------- shard indexes (eval data.format=shards)
def shard_case(content: bytes | None):
    def make(ctx: Context):
        items = ctx.tmp / "shards" / "items"
        items.mkdir(parents=True)
        bad = write(items / "index.json", content)
        overrides = ctx.overrides(
            "model.preset=zero_shot", "data.format=shards", f"data.shard_dir={items.parent}"
        )
        return ["eval", "demo", *overrides], bad

    return make


LITDATA_INDEX = json.dumps({"chunks": [{"filename": "chunk-0-0.bin", "chunk_size": 1}], "config": {}})


# ---------------------------------------------------------------- the tiny CLIP cache (eval)
def cache_case(name: str, content: Callable[[bytes], bytes | None]):
    def make(ctx: Context):
        cache = ctx.tmp / "cache"
        source = next(ctx.cache_dir.glob("tiny-clip-*"))
        shutil.copytree(source, cache / source.name)
        target = cache / source.name / name
        data = target.read_bytes()
        target.unlink()
        write(target, content(data))
        argv = [
            "eval",
            "demo",
            "model.preset=zero_shot",
            f"paths.cache_dir={cache}",
            f"paths.output_dir={ctx.out}",
        ]
        return argv, cache / source.name

    return make


# ---------------------------------------------------------------- an OpenAI CLIP .pt (model.clip.source)
def clip_file_case(content: Callable[[Context], bytes | None]):
    def make(ctx: Context):
        bad = write(ctx.tmp / "ViT-B-32.pt", content(ctx))
        return ["eval", "demo", *ctx.overrides("model.preset=zero_shot", f"model.clip.source={bad}")], bad

    return make


CASES = [
    Case("checkpoint", "empty", checkpoint_case(lambda ctx: b"")),
    Case("checkpoint", "truncated", checkpoint_case(lambda ctx: truncated(ctx.demo_ckpt.read_bytes()))),
    Case("checkpoint", "foreign-pickle", checkpoint_case(lambda ctx: pickle.dumps({"state_dict": 1}))),
    Case("checkpoint", "foreign-zip", checkpoint_case(lambda ctx: zip_of_text())),
    Case("checkpoint", "foreign-tensor", checkpoint_case(lambda ctx: torch_bytes(torch.ones(3)))),
    Case("checkpoint", "foreign-dict", checkpoint_case(lambda ctx: torch_bytes({"weights": torch.ones(3)}))),
    Case("checkpoint", "foreign-object", checkpoint_case(lambda ctx: torch_bytes(Case("a", "b", print)))),
    Case("checkpoint", "unreadable", checkpoint_case(lambda ctx: None)),
    Case("resumed-checkpoint", "empty", resume_case(lambda ctx: b"")),
    Case("resumed-checkpoint", "truncated", resume_case(lambda ctx: truncated(ctx.demo_ckpt.read_bytes()))),
    Case("resumed-checkpoint", "foreign", resume_case(lambda ctx: zip_of_text())),
    Case("resumed-checkpoint", "unreadable", resume_case(lambda ctx: None)),
    *export_cases("export-weights", "model.safetensors", b"GIF89a not weights"),
    *export_cases("export-meta", "stop_lightning.json", b'["a", "list"]'),
    *export_cases("export-config", "config.yaml", b"- a\n- list\n"),
    Case("embeddings-pt", "empty", embeddings_case(".pt", lambda ctx, good: b"")),
    Case(
        "embeddings-pt", "truncated", embeddings_case(".pt", lambda ctx, good: truncated(good.read_bytes()))
    ),
    Case("embeddings-pt", "foreign", embeddings_case(".pt", lambda ctx, good: torch_bytes(torch.ones(3)))),
    Case("embeddings-pt", "unreadable", embeddings_case(".pt", lambda ctx, good: None)),
    Case("embeddings-npz", "empty", embeddings_case(".npz", lambda ctx, good: b"")),
    Case(
        "embeddings-npz", "truncated", embeddings_case(".npz", lambda ctx, good: truncated(good.read_bytes()))
    ),
    Case("embeddings-npz", "foreign", embeddings_case(".npz", lambda ctx, good: npz_without_embeddings())),
    Case("embeddings-npz", "unreadable", embeddings_case(".npz", lambda ctx, good: None)),
    Case("manifest", "empty", manifest_case(b"")),
    Case("manifest", "truncated", manifest_case(truncated(MANIFEST_ROWS[: MANIFEST_ROWS.index(b"\n") + 1]))),
    Case("manifest", "foreign", manifest_case(b"path,label\na.mp4,0\n")),
    Case("manifest", "unreadable", manifest_case(None)),
    Case("split-manifest", "truncated", layout_case("split1/test.jsonl", MANIFEST_ROWS[:-9])),
    Case("split-manifest", "unreadable", layout_case("split1/test.jsonl", None)),
    Case("class-list", "empty", layout_case("classes.txt", b"")),
    Case("class-list", "truncated", layout_case("classes.txt", b"\n\n")),
    Case("class-list", "foreign", layout_case("classes.txt", b"\x89PNG\r\n\x1a\n\x00\x00")),
    Case("class-list", "unreadable", layout_case("classes.txt", None)),
    Case("experiment-yaml", "empty", yaml_case("train", b"")),
    Case("experiment-yaml", "truncated", yaml_case("train", CUT_YAML)),
    Case("experiment-yaml", "foreign", yaml_case("train", b"- a\n- list\n")),
    Case("experiment-yaml", "unreadable", yaml_case("train", None)),
    Case("sweep-yaml", "empty", yaml_case("sweep", b"")),
    Case("sweep-yaml", "foreign", yaml_case("sweep", b"\x00\x01\x02\xff binary")),
    Case("sweep-yaml", "unreadable", yaml_case("sweep", None)),
    Case("annotation", "empty", annotation_case(b"")),
    Case("annotation", "foreign", annotation_case(b"\xff\xd8\xff\xe0 a JPEG")),
    Case("annotation", "unreadable", annotation_case(None)),
    Case("shard-index", "empty", shard_case(b"")),
    Case("shard-index", "truncated", shard_case(LITDATA_INDEX.encode()[:30])),
    Case("shard-index", "foreign", shard_case(b'["not", "litdata"]')),
    Case("shard-index", "unreadable", shard_case(None)),
    Case("shard-index", "chunk-missing", shard_case(LITDATA_INDEX.encode())),
    Case("clip-checkpoint", "empty", clip_file_case(lambda ctx: b"")),
    Case("clip-checkpoint", "truncated", clip_file_case(lambda ctx: truncated(ctx.demo_ckpt.read_bytes()))),
    Case("clip-checkpoint", "foreign", clip_file_case(lambda ctx: torch_bytes(torch.ones(3)))),
    Case("clip-checkpoint", "unreadable", clip_file_case(lambda ctx: None)),
    Case("tiny-clip-cache", "empty", cache_case("model.safetensors", lambda data: b"")),
    Case("tiny-clip-cache", "truncated", cache_case("model.safetensors", truncated)),
    Case("tiny-clip-cache", "foreign", cache_case("config.json", lambda data: b"[1, 2, 3]")),
    Case("tiny-clip-cache", "unreadable", cache_case("model.safetensors", lambda data: None)),
]


@pytest.fixture(scope="module")
def exported(demo_run, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("faults_export") / "export"
    assert main(["export", str(demo_run.ckpt), str(folder)]) == 0
    return folder


@pytest.fixture
def ctx(tmp_path, cache_dir, demo_run, exported) -> Context:
    return Context(tmp_path, cache_dir, demo_run.ckpt, exported, tmp_path / "runs")


def assert_one_line(code: int, err: str, names: Path, out: Path) -> str:
    """Exit 2, one line (our INFO log lines aside) that names the file, no traceback, no run folder."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("INFO ")]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert str(names) in lines[0], lines[0]
    assert not out.exists() or not any(out.rglob("config.yaml")), sorted(out.rglob("*"))
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.reader}-{c.fault}" for c in CASES])
def test_a_bad_file_is_one_line_naming_it_and_exit_2(case, ctx, capsys):
    argv, names = case.make(ctx)
    capsys.readouterr()
    code = main(argv)
    line = assert_one_line(code, capsys.readouterr().err, names, ctx.out)
    assert "(" in line and line.rstrip().endswith(")") or "does not exist" in line, line  # says what to do


@pytest.mark.parametrize(
    "content", [b"", truncated(torch_bytes({"Conv.weight": torch.ones(4)})), pickle.dumps([1]), None]
)
def test_a_bad_authors_checkpoint_is_one_line(content, tmp_path, capsys):
    from stop_lightning.models.official import main as official_main

    bad = write(tmp_path / "authors.pth", content)
    assert_one_line(official_main([str(bad)]), capsys.readouterr().err, bad, tmp_path / "runs")


@pytest.mark.skipif(AS_ROOT, reason="root reads a file whatever its mode; the folder cases cover unreadable")
@pytest.mark.parametrize("reader", ["checkpoint", "manifest", "experiment-yaml"])
def test_a_file_without_read_permission_is_one_line(reader, ctx, capsys):
    make = next(c.make for c in CASES if c.reader == reader and c.fault == "empty")
    argv, names = make(ctx)
    names.write_bytes(b"x")
    names.chmod(0)
    try:
        code = main(argv)
    finally:
        names.chmod(0o644)
    line = assert_one_line(code, capsys.readouterr().err, names, ctx.out)
    assert "permission denied" in line


# ---------------------------------------------------------------- the fault table's three named cases
def test_a_checkpoint_of_another_preset_names_itself_and_both_presets(ctx, demo_run, capsys):
    asked = "clip4clip_meanp"  # no prompts: every trained tensor of the stop_fast checkpoint is unexpected
    code = main(["eval", "demo", "--ckpt", str(ctx.demo_ckpt), *ctx.overrides(f"model.preset={asked}")])
    line = assert_one_line(code, capsys.readouterr().err, ctx.demo_ckpt, ctx.out)
    trained = demo_run.cfg.model.preset
    assert f"trained as model.preset={trained}" in line and f"loaded as model.preset={asked}" in line, line
    assert line.endswith(f"(set model.preset={trained}, the checkpoint's preset)"), line


def test_embed_of_a_bad_video_gives_advice_embed_can_act_on(ctx, capsys):
    videos = ctx.tmp / "videos"
    write(videos / "broken.mp4", b"\x00\x00\x00\x18ftypmp42 then nothing")
    manifest = write(ctx.tmp / "m.jsonl", b'{"path": "broken.mp4"}\n')
    argv = ["embed", "--ckpt", str(ctx.demo_ckpt), "--manifest", str(manifest), "--video-root", str(videos)]
    code = main([*argv, "--out", str(ctx.tmp / "e.pt")])
    line = assert_one_line(code, capsys.readouterr().err, videos / "broken.mp4", ctx.out)
    assert "data.bad_video" not in line and "--drop-unreadable" in line, line
    assert not (ctx.tmp / "e.pt").exists()


def _test_top1(ctx, manifests: Path, video_root: Path, capsys) -> tuple[float, str]:
    """Zero-shot top-1 of ``manifests``' test split, and what the run said on stderr."""
    from stop_lightning.config import load_config
    from stop_lightning.train import evaluate

    overrides = ctx.overrides(
        "model.preset=zero_shot",
        "data.dataset=hmdb51",
        f"data.manifest_dir={manifests}",
        f"data.video_root={video_root}",
        "logger.wandb=false",
    )
    capsys.readouterr()
    metrics = evaluate(load_config("demo", overrides))
    return metrics["test/top1"], capsys.readouterr().err


def test_repeated_test_rows_are_counted_and_scored_once(ctx, demo_run, capsys):
    from stop_lightning.cli import configure_logging
    from stop_lightning.data.sources import video_sources

    configure_logging()  # the warning goes to stderr, as under the CLI
    video_root, manifests = video_sources(demo_run.cfg.data, "recognition", ctx.cache_dir)
    copy = ctx.tmp / "repeated"
    shutil.copytree(manifests, copy)
    test = copy / "split1" / "test.jsonl"
    rows = test.read_bytes().splitlines(keepends=True)
    test.write_bytes(b"".join(rows) + rows[0] * 2)  # the first clip listed three times in all
    once, said_once = _test_top1(ctx, manifests, video_root, capsys)
    # Counted three times, the first clip (a hit or a miss) would move top-1 off `once` unless `once`
    # is 0 or 1. Measured: 0.25 at 1 and 2 threads (zero-shot tiny CLIP, no seed to vary).
    assert 0.0 < once < 1.0, once
    repeated, said = _test_top1(ctx, copy, video_root, capsys)
    assert repeated == once
    assert f"{test}: 2 of {len(rows) + 2} rows repeat an earlier row" in said, said
    assert "repeat an earlier row" not in said_once


def test_a_foreign_pickle_is_one_line_in_a_fresh_process(tmp_path):
    """As a user runs it: torch's warnings about a foreign pickle would reach stderr here (pytest
    captures them in process)."""
    import subprocess
    import sys

    bad = write(tmp_path / "authors.pth", pickle.dumps({"Conv.weight": [1.0]}))
    run = subprocess.run(  # the lightest command that reads a torch file: torch and no Lightning
        [sys.executable, "-m", "stop_lightning.models.official", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line(run.returncode, run.stderr, bad, tmp_path / "runs")
