"""The published figure beside a run's own (published.py): shown, recorded and sent to W&B only when the
run is the published setting (preset, CLIP, the target's settings); nothing otherwise."""

import json
from pathlib import Path

import pytest

from stop_lightning.config import load_config
from stop_lightning.published import backbone_matches, compare_published, published_line
from stop_lightning.train import evaluate, train

T2V = {"test/t2v_R1": 46.9, "test/v2t_R1": 45.0}


def names(cfg, metrics) -> list[str]:
    return [e["name"] for e in compare_published(cfg, metrics)]


def test_msrvtt_compares_the_row_of_its_preset_and_backbone():
    assert names(load_config("msrvtt"), T2V) == ["stop"]
    entry = compare_published(load_config("msrvtt"), T2V)[0]
    assert entry["published"] == 47.7 and entry["difference"] == pytest.approx(46.9 - 47.7)
    assert "47.70 published, difference -0.80" in published_line(entry)
    # A local copy of the same hub checkpoint is the same backbone.
    local = ["model.clip.source=/models/clip-vit-base-patch32/"]
    assert names(load_config("msrvtt", local), T2V) == ["stop"]
    assert names(load_config("msrvtt", ["model.preset=stop_official"]), T2V) == ["stop_official"]
    assert names(load_config("msrvtt", ["model.preset=vop_fc"]), T2V) == ["vop_fc"]
    # DGL's two rows differ by the shared latent space.
    assert names(load_config("msrvtt", ["model.preset=dgl"]), T2V) == ["dgl_linear"]
    transformer = ["model.preset=dgl", "model.shared_latent=transformer"]
    assert names(load_config("msrvtt", transformer), T2V) == ["dgl_transformer"]


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.clip.source=tiny"],  # the tiny CLIP compares with nothing
        ["model.clip.source=openai/clip-vit-base-patch16"],  # another backbone
        ["model.preset=stop_fast"],  # a preset no published row stands for
        ["model.preset=clip4clip_meanp"],  # CLIP4Clip's row is full fine-tuning: no preset stands for it
    ],
)
def test_msrvtt_compares_nothing_outside_the_published_setting(overrides):
    assert names(load_config("msrvtt", overrides), T2V) == []


def test_recognition_targets_are_in_percent_and_need_the_supervised_protocol():
    cfg = load_config("hmdb51")
    [entry] = compare_published(cfg, {"test/top1": 0.70})
    assert entry["run"] == pytest.approx(70.0) and entry["published"] == 72.0
    assert "not stated" in published_line(entry)
    few_shot = load_config("hmdb51", ["data.protocol=few_shot", "data.shots=2"])
    assert names(few_shot, {"test/top1": 0.7}) == []
    assert names(cfg, {"test/top5": 0.9}) == []  # the target's metric was not logged


def test_backbone_matches():
    hub = "openai/clip-vit-base-patch32"
    assert backbone_matches(hub, hub) and backbone_matches("/m/clip-vit-base-patch32", hub)
    assert not backbone_matches("/m/clip-vit-base-patch16", hub)
    assert not backbone_matches("tiny", hub) and not backbone_matches("tiny", "")
    assert backbone_matches("tiny", "tiny")


def tiny_target(preset: str, backbone: str = "tiny") -> list[str]:
    """A published target pointed at the tiny CLIP, so a test run can be its setting."""
    key = "published.paper"
    return [
        f"{key}.method=Paper",
        f"{key}.preset={preset}",
        f"{key}.backbone={backbone}",
        f"{key}.metric=test/top1",
        f"{key}.value=50.0",
        f"{key}.scale=100",
        f"{key}.source=Paper (2025), Table 1",
        f"{key}.protocol=synthetic split 1",
    ]


def tiny_cfg(cache_dir: Path, out: Path, *extra: str):
    return load_config(
        "demo",
        [
            f"paths.cache_dir={cache_dir}",
            f"paths.output_dir={out}",
            "data.synthetic_clips_per_class=8",
            "trainer.max_epochs=0",  # test only: the comparison is what is checked here
            "trainer.enable_progress_bar=false",
            "logger.wandb=true",
            "logger.mode=offline",
            *extra,
        ],
    )


def record_wandb_summaries(monkeypatch) -> list[tuple[dict, bool]]:
    """What published.py puts in the W&B run summary, and whether a W&B run took it (an offline run
    writes its summary only into its binary log, so it is caught on the way)."""
    import stop_lightning.published as published

    calls: list[tuple[dict, bool]] = []
    real = published.update_wandb_summary
    monkeypatch.setattr(
        published, "update_wandb_summary", lambda values: calls.append((values, real(values)))
    )
    return calls


def test_a_matching_tiny_run_shows_records_and_logs_the_comparison(cache_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("STOP_RUN_STAMP", "match")
    summaries = record_wandb_summaries(monkeypatch)
    metrics = train(tiny_cfg(cache_dir, tmp_path, "model.preset=stop_fast", *tiny_target("stop_fast")))
    run = tmp_path / "demo" / "match"
    own = 100 * metrics["test/top1"]
    line = f"published Paper: test/top1 {own:.2f} here, 50.00 published, difference {own - 50:+.2f}"
    assert line + " (Paper (2025), Table 1; synthetic split 1)" in capsys.readouterr().out
    [entry] = json.loads((run / "run_info.json").read_text())["published"]
    assert entry["run"] == pytest.approx(own) and entry["published"] == 50.0
    assert entry["difference"] == pytest.approx(own - 50.0)
    assert "versions" in json.loads((run / "run_info.json").read_text())  # the rest is kept
    [(values, taken)] = summaries
    assert taken and values["published/paper/difference"] == pytest.approx(own - 50.0)
    assert values["published/paper/published"] == 50.0


@pytest.mark.parametrize(
    "target", [tiny_target("stop"), tiny_target("zero_shot", backbone="openai/clip-vit-base-patch32")]
)
def test_a_tiny_run_outside_the_published_setting_shows_nothing(
    cache_dir, tmp_path, capsys, monkeypatch, target
):
    summaries = record_wandb_summaries(monkeypatch)
    evaluate(tiny_cfg(cache_dir, tmp_path, "model.preset=zero_shot", *target))
    assert "published" not in capsys.readouterr().out
    [run] = (tmp_path / "demo").iterdir()
    assert "published" not in json.loads((run / "run_info.json").read_text())
    assert summaries == []
