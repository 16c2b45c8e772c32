"""The command-line habits of other tools, through ``stop-lightning``: ``eval --print-config``,
``predict --json``, ``embed`` over files and folders, ``--device`` and ``export --ckpt``."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from stop_lightning import model_io
from stop_lightning.cli import main
from stop_lightning.config import load_config
from stop_lightning.inference import checkpoint_datamodule
from stop_lightning.model_io import WEIGHTS_FILE, DeviceError, from_pretrained, load_checkpoint
from stop_lightning.schema import PROJECT_ROOT_ENV, to_yaml


@pytest.fixture(scope="module")
def loaded(demo_run):
    return load_checkpoint(demo_run.ckpt, device="cpu")


@pytest.fixture(scope="module")
def test_set(loaded):
    return checkpoint_datamodule(loaded, "test").datasets["test"]


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def one_error(capsys) -> str:
    """The command's one ``error:`` line (and nothing on stdout)."""
    captured = capsys.readouterr()
    lines = error_lines(captured.err)
    assert len(lines) == 1 and not captured.out.strip(), (captured.out, captured.err)
    return lines[0]


def test_eval_print_config_prints_the_resolved_config_and_loads_nothing(capsys, monkeypatch):
    import stop_lightning.train

    def must_not_run(*args, **kwargs):
        raise AssertionError("--print-config went on to evaluate")

    monkeypatch.setattr(stop_lightning.train, "evaluate", must_not_run)
    for spelling in ("--print-config", "--print_config"):
        assert main(["eval", "demo", spelling, "trainer.max_epochs=3", "data.num_frames=4"]) == 0
        out = capsys.readouterr().out
        assert (
            out.strip() == to_yaml(load_config("demo", ["trainer.max_epochs=3", "data.num_frames=4"])).strip()
        )


def expected_top(loaded, test_set, i: int, k: int) -> list[dict]:
    """The test loader's own clip through the module's scores: the top ``k`` as predict --json writes them."""
    with torch.no_grad():
        probs = loaded.module.multiview_scores(test_set[i]["video"][None])[0]
    best = probs.topk(k)
    return [{"class": loaded.class_names[j], "score": float(p)} for p, j in zip(best.values, best.indices)]


def test_predict_json_is_one_document_with_each_videos_top_classes(
    demo_run, loaded, test_set, tmp_path, capsys
):
    good = [str(p) for p in test_set.paths[:2]]
    missing = str(tmp_path / "missing.mp4")
    argv = ["predict", "--ckpt", str(demo_run.ckpt), "--json", "--top", "3", "--device", "cpu"]
    assert main([*argv, good[0], missing, good[1]]) == 2  # one video failed: exit 2, still a document
    captured = capsys.readouterr()
    document = json.loads(captured.out)  # stdout holds the JSON and nothing else
    assert [entry["video"] for entry in document] == [good[0], missing, good[1]]
    assert document[1] == {"video": missing, "error": "no such file"}
    for entry, i in ((document[0], 0), (document[2], 1)):
        assert [t["class"] for t in entry["top"]] == [
            t["class"] for t in expected_top(loaded, test_set, i, 3)
        ]
        for got, want in zip(entry["top"], expected_top(loaded, test_set, i, 3)):
            assert got["score"] == pytest.approx(want["score"], abs=1e-6)
    assert error_lines(captured.err)[0] == f"error: {missing}: no such file"


def copy_videos(test_set, folder: Path, count: int) -> list[Path]:
    """The first ``count`` test videos copied into two subfolders of ``folder``, and a non-video file."""
    copies = []
    for i, src in enumerate(test_set.paths[:count]):
        dst = folder / f"group{i % 2}" / f"clip{i}{Path(src).suffix}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
        copies.append(dst)
    (folder / "notes.txt").write_text("not a video")
    return copies


def test_predict_and_embed_take_a_folder_of_videos(demo_run, loaded, test_set, tmp_path, capsys):
    folder = tmp_path / "videos"
    copies = copy_videos(test_set, folder, 3)
    assert main(["predict", "--ckpt", str(demo_run.ckpt), "--json", "--top", "2", str(folder)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [entry["video"] for entry in document] == [str(p) for p in sorted(copies)]
    assert document[0]["top"][0]["class"] == expected_top(loaded, test_set, 0, 1)[0]["class"]

    out = tmp_path / "folder.pt"
    assert (
        main(["embed", "--ckpt", str(demo_run.ckpt), "--out", str(out), "--device", "cpu", str(folder)]) == 0
    )
    saved = torch.load(out, weights_only=True)
    assert saved["paths"] == [p.relative_to(folder).as_posix() for p in sorted(copies)]
    assert saved["ids"] == saved["paths"] and saved["manifest"] is None
    with torch.no_grad():
        for row, i in enumerate(sorted(range(3), key=lambda i: copies[i])):
            want, _ = loaded.module.encode_videos(test_set[i]["video"][None])
            assert torch.allclose(saved["embeddings"][row], want[0], atol=1e-6)
    # Single files, in the order given, each row what the folder gave for the same video.
    files = tmp_path / "files.npz"
    argv = ["embed", "--ckpt", str(demo_run.ckpt), "--out", str(files), str(copies[2]), str(copies[0])]
    assert main(argv) == 0
    rows = np.load(files)
    assert list(rows["paths"]) == [copies[2].name, copies[0].name]  # both in group0: relative to it
    by_path = dict(zip(saved["paths"], saved["embeddings"]))
    for path, emb in zip(rows["paths"], rows["embeddings"]):
        assert torch.allclose(torch.from_numpy(emb), by_path[f"group0/{path}"], atol=1e-6)


def test_a_folder_without_videos_and_a_wrong_embed_form_are_one_line(demo_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    assert main(["predict", "--ckpt", str(demo_run.ckpt), str(empty)]) == 2
    assert "holds no video files" in one_error(capsys)
    out = str(tmp_path / "e.pt")
    assert main(["embed", "--ckpt", str(demo_run.ckpt), "--out", out]) == 2
    assert "got neither" in one_error(capsys)
    assert (
        main(["embed", "--ckpt", str(demo_run.ckpt), "--out", out, "--manifest", "m.jsonl", str(empty)]) == 2
    )
    assert "not both" in one_error(capsys)
    assert main(["embed", "--ckpt", str(demo_run.ckpt), "--out", out, "--video-root", "v", str(empty)]) == 2
    assert "--video-root is for the paths of a --manifest" in one_error(capsys)
    assert not Path(out).exists()


def test_device_rule(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert model_io.resolve_device("auto") == torch.device("cuda")
    assert model_io.resolve_device("cuda:1") == torch.device("cuda:1")
    assert model_io.resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"2 CUDA GPU\(s\), cuda:0 to cuda:1"):
        model_io.resolve_device("cuda:2")
    for bad in ("gpu", "cuda:", "cuda:-1", "mps0"):
        with pytest.raises(DeviceError, match="is not a device"):
            model_io.resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert model_io.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        model_io.resolve_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_gpu_that_is_not_there_is_one_line_on_predict_embed_and_search(
    demo_run, test_set, tmp_path, capsys
):
    ckpt, video = str(demo_run.ckpt), str(test_set.paths[0])
    embeddings = str(tmp_path / "e.pt")
    assert main(["embed", "--ckpt", ckpt, "--out", embeddings, "--device", "cpu", video]) == 0
    capsys.readouterr()
    for argv in (
        ["predict", "--ckpt", ckpt, video],
        ["embed", "--ckpt", ckpt, "--out", str(tmp_path / "f.pt"), video],
        ["search", embeddings, "a square moving left"],
    ):
        assert main([*argv, "--device", "cuda"]) == 2, argv
        assert (
            one_error(capsys)
            == "error: --device cuda: this machine has no CUDA GPU torch can use; use --device cpu"
        )
    assert main(["predict", "--ckpt", ckpt, video, "--device", "cpu"]) == 0
    assert main(["search", embeddings, "a square moving left", "--device", "cpu", "--top", "1"]) == 0


def test_export_takes_ckpt_as_the_other_commands_do(demo_run, cache_dir, tmp_path, capsys, monkeypatch):
    # The session cache lies under this project root: the export names it relative to the root.
    monkeypatch.setenv(PROJECT_ROOT_ENV, str(cache_dir.parent))
    named, positional = tmp_path / "named", tmp_path / "positional"
    assert main(["export", "--ckpt", str(demo_run.ckpt), str(named)]) == 0
    assert main(["export", str(demo_run.ckpt), str(positional)]) == 0
    # Tensors and metadata, not bytes: safetensors writes its metadata keys in a hash map's order.
    weights = [load_file(str(folder / WEIGHTS_FILE)) for folder in (named, positional)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    metadata = [safe_open(str(folder / WEIGHTS_FILE), "pt").metadata() for folder in (named, positional)]
    assert metadata[0] == metadata[1] and metadata[0]["fingerprint"]
    assert (named / "config.yaml").read_text() == (positional / "config.yaml").read_text()
    from omegaconf import OmegaConf

    assert OmegaConf.load(named / "config.yaml").paths.cache_dir == cache_dir.name
    assert from_pretrained(named, device="cpu").cfg.paths.cache_dir == str(cache_dir)
    capsys.readouterr()

    for argv, says in (
        (
            ["export", "--ckpt", str(demo_run.ckpt), str(demo_run.ckpt), str(tmp_path / "both")],
            "two checkpoints",
        ),
        (["export", str(tmp_path / "neither")], "needs a checkpoint and a folder"),
        (["export", "--ckpt", str(demo_run.ckpt)], "got 0 paths"),
    ):
        assert main(argv) == 2, argv
        line = one_error(capsys)
        assert says in line and "export --ckpt CKPT OUT_DIR" in line
    assert not (tmp_path / "both").exists() and not (tmp_path / "neither").exists()
