"""Config composition and validation: errors name the key, the file and the valid choices."""

import re

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ReadonlyConfigError

from stop_lightning.config import available_experiments, load_config
from stop_lightning.schema import ConfigError, project_root, save_config


def test_every_shipped_experiment_composes():
    names = available_experiments()
    assert {"demo", "hmdb51", "ucf101", "msrvtt"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.name == name


def test_preset_then_experiment_then_override_order():
    cfg = load_config("hmdb51")
    assert cfg.model.preset == "stop" and cfg.model.spatial.generator == "reference"  # from presets/stop.yaml
    assert cfg.data.batch_size == 32  # from hmdb51.yaml
    cfg = load_config("hmdb51", ["model.preset=stop_fast", "trainer.max_epochs=3", "model.spatial.alpha=0.1"])
    assert cfg.model.spatial.generator == "fast"  # the override picked another preset
    assert cfg.trainer.max_epochs == 3 and cfg.model.spatial.alpha == pytest.approx(0.1)
    cfg = load_config("hmdb51", ["model.preset=dgl"])
    assert (
        not cfg.model.spatial.enabled and not cfg.model.temporal.enabled and cfg.model.global_prompts.enabled
    )


def test_interpolations_are_resolved_and_config_is_read_only(tmp_path):
    cfg = load_config("hmdb51", ["paths.data_root=/datasets"])
    assert cfg.data.video_root == "/datasets/hmdb51/videos"
    assert cfg.paths.run_dir == str(project_root() / "runs" / "hmdb51")  # relative: under the project
    with pytest.raises(ReadonlyConfigError):
        cfg.trainer.max_epochs = 7
    path = save_config(cfg, tmp_path / "config.yaml")
    assert OmegaConf.load(path).data.video_root == "/datasets/hmdb51/videos"


def test_misspelled_key_names_key_origin_and_suggestion():
    with pytest.raises(ConfigError) as err:
        load_config("demo", ["trainer.max_epoch=3"])
    msg = str(err.value)
    assert "trainer.max_epoch" in msg and "command-line overrides" in msg
    assert "Did you mean trainer.max_epochs" in msg


def test_unknown_key_in_experiment_file_names_the_file(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 1\n")
    (tmp_path / "bad.yaml").write_text("model:\n  spatial:\n    alpah: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config("bad", exp_dir=tmp_path)
    msg = str(err.value)
    assert "model.spatial.alpah" in msg and str(tmp_path / "bad.yaml") in msg
    assert "model.spatial.alpha" in msg  # suggestion


def test_wrong_type_names_expected_type():
    with pytest.raises(ConfigError) as err:
        load_config("demo", ["trainer.max_epochs=abc"])
    assert "trainer.max_epochs" in str(err.value) and "expected int" in str(err.value)


def test_bad_choice_lists_valid_choices_and_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config("demo", ["model.spatial.generator=slow"])
    assert "fast, reference" in str(err.value)
    (tmp_path / "x.yaml").write_text("model:\n  temporal:\n    insertion: medium\n")
    with pytest.raises(ConfigError) as err:
        load_config("x", exp_dir=tmp_path)
    assert (
        "model.temporal.insertion" in str(err.value)
        and "x.yaml" in str(err.value)
        and "soft, hard" in str(err.value)
    )


def test_out_of_range_and_unknown_experiment():
    with pytest.raises(ConfigError, match=r"model.spatial.topk_ratio.*\[0.0, 1.0\]"):
        load_config("demo", ["model.spatial.topk_ratio=1.5"])
    with pytest.raises(ConfigError, match="Did you mean 'hmdb51'"):
        load_config("hmdb5")
    with pytest.raises(ConfigError, match="key=value"):
        load_config("demo", ["trainer.max_epochs"])


def test_override_may_interpolate_another_key_and_is_still_checked():
    cfg = load_config(
        "demo", ["model.local_prompts.num_tokens=${model.temporal.num_tokens}", "model.temporal.num_tokens=6"]
    )
    assert cfg.model.local_prompts.num_tokens == 6
    with pytest.raises(ConfigError, match="model.temporal.num_tokens"):
        load_config("demo", ["model.temporal.num_tokens=${data.batch_size}", "data.batch_size=100"])


def test_text_prompt_cap_follows_the_tokenizer_length():
    cfg = load_config("demo", ["data.max_text_tokens=20"])
    assert cfg.model.text_prompts.max_text_tokens == 20  # one key: base.yaml interpolates the other


def test_lightning_debug_and_time_knobs_reach_the_trainer(tmp_path):
    from stop_lightning.train import build_trainer

    knobs = ["trainer.max_time=00:01:30:00", "trainer.profiler=simple", "trainer.detect_anomaly=true"]
    cfg = load_config(
        "demo", ["trainer.fast_dev_run=2", "trainer.benchmark=true", "logger.wandb=false", *knobs]
    )
    trainer = build_trainer(cfg, tmp_path, "fit")
    assert trainer.fast_dev_run == 2 and trainer.limit_train_batches == 2 and trainer.limit_test_batches == 2
    assert type(trainer.profiler).__name__ == "SimpleProfiler"
    assert trainer._detect_anomaly is True
    stop = [c for c in trainer.callbacks if type(c).__name__ == "Timer"]
    assert stop and stop[0]._duration == 90 * 60
    overfit = build_trainer(
        load_config("demo", ["trainer.overfit_batches=3", "logger.wandb=false"]), tmp_path, "fit"
    )
    assert overfit.overfit_batches == 3 and overfit.limit_train_batches == 3
    plain = build_trainer(load_config("demo", ["logger.wandb=false"]), tmp_path, "fit")
    assert plain.fast_dev_run is False and plain.overfit_batches == 0 and not plain._detect_anomaly
    assert not [c for c in plain.callbacks if type(c).__name__ == "Timer"]


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("trainer.fast_dev_run=-1", "'trainer.fast_dev_run' = -1: give true"),
        ("trainer.overfit_batches=1.5", "'trainer.overfit_batches' = 1.5: give a number of batches"),
        ("trainer.max_time=90m", "'trainer.max_time' = '90m': give DD:HH:MM:SS"),
        ("trainer.profiler=fancy", "'trainer.profiler' = 'fancy' in command-line overrides is not one of"),
        ("trainer.compile=reduce_overhead", "'trainer.compile' = 'reduce_overhead': give false"),
        ("trainer.compile=maxautotune", "max-autotune. Did you mean 'max-autotune'?"),
        ("trainer.compile=true", "'trainer.compile' = True: give false"),
        ("trainer.compile_backend=inductr", "'trainer.compile_backend' = 'inductr' in command-line"),
    ],
)
def test_lightning_knobs_are_checked_before_any_work(override, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_config("demo", [override])


@pytest.mark.parametrize("value", ["false", "default", "reduce-overhead", "max-autotune"])
def test_compile_takes_false_or_a_torch_compile_mode(value):
    cfg = load_config("demo", [f"trainer.compile={value}", "trainer.compile_backend=aot_eager"])
    assert cfg.trainer.compile == (False if value == "false" else value)


def test_debug_is_a_one_batch_smoke_run_without_wandb(capsys):
    from stop_lightning.cli import main

    assert main(["train", "demo", "--debug", "--print-config", "trainer.fast_dev_run=3"]) == 0
    out = capsys.readouterr().out
    assert "fast_dev_run: 3" in out  # a later override wins
    assert main(["train", "demo", "--debug", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "fast_dev_run: true" in out and "wandb: false" in out


def test_an_experiment_extends_another_and_changes_a_few_keys(tmp_path):
    child = tmp_path / "demo_es.yaml"
    child.write_text(
        "extends: demo\n"
        "trainer: {max_epochs: 3}\n"
        "callbacks:\n"
        "  early_stopping:\n"
        "    class_path: lightning.pytorch.callbacks.EarlyStopping\n"
        "    init_args: {monitor: val/top1, mode: max}\n"
    )
    grandchild = tmp_path / "demo_es_meanp.yaml"
    grandchild.write_text("extends: demo_es.yaml\nmodel: {preset: clip4clip_meanp}\n")
    demo = load_config("demo")
    cfg = load_config(child)
    assert cfg.name == "demo_es" and cfg.trainer.max_epochs == 3 and "early_stopping" in cfg.callbacks
    for key in ("model", "data", "task", "optim"):  # everything else is the demo's
        assert OmegaConf.to_container(cfg[key]) == OmegaConf.to_container(demo[key]), key
    deeper = load_config(grandchild, ["trainer.max_epochs=2"])
    assert deeper.name == "demo_es_meanp" and deeper.model.preset == "clip4clip_meanp"
    assert not deeper.model.temporal.enabled  # the preset file applies, under the experiments
    assert deeper.trainer.max_epochs == 2 and "early_stopping" in deeper.callbacks


def test_extends_errors_name_the_file(tmp_path):
    loop_a, loop_b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    loop_a.write_text("extends: b.yaml\n")
    loop_b.write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match=r"in a circle: a.yaml -> b.yaml -> a.yaml"):
        load_config(loop_a)
    typo = tmp_path / "typo.yaml"
    typo.write_text("extends: dmeo\n")
    with pytest.raises(ConfigError, match=r"no experiment 'dmeo' .* Did you mean 'demo'\?"):
        load_config(typo)
    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text("extends: demo\ntrainer: {max_epoch: 3}\n")
    with pytest.raises(ConfigError, match=r"'trainer.max_epoch' in .*bad_key.yaml"):
        load_config(bad_key)
