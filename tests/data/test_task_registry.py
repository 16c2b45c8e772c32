"""The task registry: one table serves the config's choices, the DataModule factory and the modules."""

import pytest

from stop_lightning.config import load_config
from stop_lightning.data.registry import dataset_names, get_dataset
from stop_lightning.schema import ConfigError
from stop_lightning.tasks.registry import TASKS, UnknownTaskError, get_task


def test_every_dataset_serves_a_registered_task():
    for name in dataset_names():
        task = get_dataset(name).task
        assert task is None or task in TASKS, (name, task)


def test_task_name_choices_come_from_the_table():
    assert load_config("demo", ["task.name=retrieval"]).task.name == "retrieval"
    with pytest.raises(ConfigError, match="'task.name' = 'detection'.*not one of: recognition, retrieval"):
        load_config("demo", ["task.name=detection"])
    with pytest.raises(UnknownTaskError, match="'detection' is not one of: recognition, retrieval"):
        get_task("detection")


def test_listing_the_tasks_imports_no_lightning():
    """The table names its classes by import path: reading it (config choices, --help) is cheap."""
    import subprocess
    import sys

    probe = (
        "import sys; from stop_lightning.tasks.registry import task_names; print(task_names()); "
        "print([m for m in ('torch', 'lightning') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["('recognition', 'retrieval')", "[]"]
    for spec in TASKS.values():  # ...and every path names a class
        assert spec.module.__name__ in spec.module_path and spec.datamodule.__name__ in spec.datamodule_path


def test_build_datamodule_and_module_come_from_the_table(hmdb, data_cfg, cache_dir):
    from types import SimpleNamespace

    from stop_lightning.models.backbone import load_clip
    from stop_lightning.tasks.factory import build_datamodule

    root, manifests = hmdb
    for name, spec in TASKS.items():
        dm = build_datamodule(data_cfg(root, manifests), name, 32, (0.5,) * 3, (0.25,) * 3)
        assert type(dm) is spec.datamodule
    cfg = load_config("demo", [f"paths.cache_dir={cache_dir}", "data.protocol=base_to_novel"])
    bundle = load_clip(cfg.model.clip, cfg.paths.cache_dir)
    fake_dm = SimpleNamespace(class_names=["a", "b", "c"], base_class_ids=[0, 2], novel_class_ids=[1])
    module = get_task("recognition").build_module(cfg, fake_dm, bundle)
    assert module.base_novel_split == ([0, 2], [1]) and module.hparams["base_novel_split"] == ([0, 2], [1])
    again = get_task("recognition").load_module(cfg, dict(module.hparams), bundle)
    assert again.base_novel_split == ([0, 2], [1]) and again.class_names == ["a", "b", "c"]
    with pytest.raises(KeyError, match="class_names"):
        get_task("recognition").load_module(cfg, {}, bundle)
