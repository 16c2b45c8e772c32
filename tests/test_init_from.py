"""`model.init_from`: a new run starts from another run's trained tensors (not resuming it), through
the command line: what it took equals the source at step 0, what it refuses leaves no run folder."""

import json

import lightning as L
import pytest
import torch

import stop_lightning.train as train_module
from stop_lightning.cli import main
from stop_lightning.model_io import load_checkpoint, model_fingerprint, trained_state

pytestmark = pytest.mark.slow

DEMO_RUN_DATA = [  # the demo_run fixture's data (its synthetic set is already in the cache)
    "data.synthetic_clips_per_class=8",
    "data.synthetic_classes=4",
    "data.synthetic_looks=0",
]


def overrides(cache_dir, out, *extra: str) -> list[str]:
    return [
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={out}",
        "logger.wandb=false",
        "trainer.enable_progress_bar=false",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=0",
        "checkpoint.monitor=''",
        *DEMO_RUN_DATA,
        *extra,
    ]


class AtFirstStep(L.Callback):
    """Keeps a copy of the module's trained tensors before the first optimiser step, and the step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not hasattr(self, "state"):
            self.step = trainer.global_step
            self.state = {k: v.clone() for k, v in trained_state(pl_module).items()}


@pytest.mark.parametrize("form", ["ckpt", "export"])
def test_init_from_takes_the_fitting_tensors_and_says_which(
    demo_run, cache_dir, tmp_path, capsys, monkeypatch, form
):
    """A stop_fast run's tensors (its .ckpt, or its export folder) as the start of a dgl run (its local
    and global prompts and adapters are stop_fast's; its aggregator, spatial and temporal modules are
    not there)."""
    source = torch.load(demo_run.ckpt, map_location="cpu", weights_only=True)["state_dict"]
    origin = demo_run.ckpt
    if form == "export":
        origin = tmp_path / "exported"
        assert main(["export", str(demo_run.ckpt), str(origin)]) == 0
    seen = AtFirstStep()
    build = train_module.build_callbacks
    monkeypatch.setattr(train_module, "build_callbacks", lambda *a: build(*a) + [seen])
    monkeypatch.setenv("STOP_RUN_STAMP", "init")
    capsys.readouterr()
    args = overrides(cache_dir, tmp_path, f"model.init_from={origin}", "model.preset=dgl")
    assert main(["train", "demo", *args]) == 0
    assert seen.step == 0  # a fresh run: no epoch, step or loop state came with the tensors
    taken = sorted(k for k in seen.state if k in source and source[k].shape == seen.state[k].shape)
    assert taken and any(k.startswith("model.local_prompts") for k in taken)
    for key in taken:
        assert torch.equal(seen.state[key], source[key]), key
    left = sorted(set(source) - set(taken))
    assert any(k.startswith("model.aggregator") for k in left)  # stop_fast only
    line = next(
        line for line in capsys.readouterr().err.splitlines() if "model.init_from=" in line and "took" in line
    )
    groups = {".".join(k.split(".")[:2]) for k in taken}
    assert f"took {len(taken)} trained tensors" in line and all(f"{g} (" in line for g in groups), line
    assert f"left {len(left)} of the source" in line
    info = json.loads((tmp_path / "demo" / "init" / "run_info.json").read_text())["initialised_from"]
    assert info["path"] == str(origin.resolve()) and info["taken"] == taken and info["left"] == left
    assert info["fingerprint"] == model_fingerprint(load_checkpoint(demo_run.ckpt).module)
    # The run trained from there: its checkpoint holds no optimiser state of the source's run.
    trained = torch.load(tmp_path / "demo" / "init" / "checkpoints" / "last.ckpt", weights_only=True)
    assert trained["global_step"] == 1 and trained["epoch"] == 0


@pytest.mark.parametrize(
    "change, says",
    [
        ("model.clip.tiny_width=32", "was trained on the CLIP"),  # another CLIP
        ("model.preset=vop", "none of its"),  # no tensor of the same name and shape
    ],
)
def test_a_source_that_does_not_fit_is_refused_before_a_run_folder(
    demo_run, cache_dir, tmp_path, capsys, change, says
):
    capsys.readouterr()
    args = overrides(cache_dir, tmp_path, f"model.init_from={demo_run.ckpt}", change)
    assert main(["train", "demo", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and "model.init_from" in err[0], err
    assert err[0].count("config hash" if "CLIP" in says else "model.") >= 2  # names both sides
    assert not (tmp_path / "demo").exists()


def test_a_checkpoint_that_names_no_clip_is_refused(demo_run, cache_dir, tmp_path, capsys):
    """Trained tensors alone (another tool's file): nothing says which CLIP they belong to."""
    bare = tmp_path / "bare.ckpt"
    state = torch.load(demo_run.ckpt, map_location="cpu", weights_only=True)["state_dict"]
    torch.save({"state_dict": state}, bare)
    assert main(["train", "demo", *overrides(cache_dir, tmp_path, f"model.init_from={bare}")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not say which CLIP" in err[0] and "bare.ckpt" in err[0], err
    assert not (tmp_path / "demo").exists()


def test_a_missing_source_is_a_config_error(cache_dir, tmp_path, capsys):
    args = overrides(cache_dir, tmp_path, f"model.init_from={tmp_path / 'nothing.ckpt'}")
    assert main(["train", "demo", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.init_from" in err and "nothing.ckpt" in err and len(err.splitlines()) == 1


def test_a_run_resumes_after_its_init_from_source_has_gone(demo_run, cache_dir, tmp_path, monkeypatch):
    """The source is read once, when the run starts; a resumed run has its own weights, so a source
    deleted since (a scratch folder cleaned) must not stop the resume."""
    source = tmp_path / "source.ckpt"
    source.write_bytes(demo_run.ckpt.read_bytes())
    monkeypatch.setenv("STOP_RUN_STAMP", "gone")
    args = overrides(cache_dir, tmp_path, f"model.init_from={source}")
    assert main(["train", "demo", *args]) == 0
    source.unlink()
    resume = [*args, "trainer.max_epochs=2", "--resume", "auto", "--allow-change", "trainer"]
    assert main(["train", "demo", *resume]) == 0
    last = torch.load(tmp_path / "demo" / "gone" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1  # the second epoch ran
