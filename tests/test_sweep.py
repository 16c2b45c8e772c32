"""Sweep files, trial planning, the offline search end to end, and the online path with W&B stubbed."""

import csv
import itertools
import math
import os
from pathlib import Path

import pytest
import yaml

from stop_lightning.config import load_config
from stop_lightning.sweep.report import PLOT_FILE, trial_label
from stop_lightning.sweep.runner import sweep_main, trial_config
from stop_lightning.sweep.spec import SweepError, load_sweep
from stop_lightning.sweep.trials import grid_trials, plan_trials, random_trials


def write_sweep(tmp_path: Path, **body) -> Path:
    spec = {
        "experiment": "demo",
        "method": "grid",
        "metric": {"name": "test/top1", "goal": "maximize"},
        "parameters": {"optim.lr": {"values": [1e-3, 2e-3]}},
    }
    spec.update(body)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def tiny_overrides(cache_dir: Path, out: Path) -> list[str]:
    return [f"paths.cache_dir={cache_dir}", f"paths.output_dir={out}", "trainer.enable_progress_bar=false"]


# ---------------------------------------------------------------------------------- planning
def test_grid_enumerates_exactly_the_grid():
    params = {"a": {"values": [1, 2]}, "b": {"values": ["x", "y", "z"]}, "c": {"value": 0.5}}
    trials = grid_trials(params)
    assert trials == [{"a": a, "b": b, "c": 0.5} for a, b in itertools.product([1, 2], ["x", "y", "z"])]


def test_random_search_draws_from_each_distribution_reproducibly():
    params = {
        "n": {"distribution": "int_uniform", "min": 1, "max": 3},
        "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
        "q": {"distribution": "q_uniform", "min": 0, "max": 1, "q": 0.25},
        "c": {"values": ["a", "b"]},
        "u": {"min": 0.0, "max": 1.0},  # W&B's default: uniform for float bounds
    }
    trials = random_trials(params, 200, seed=3)
    assert trials == random_trials(params, 200, seed=3) and trials != random_trials(params, 200, seed=4)
    assert {t["n"] for t in trials} == {1, 2, 3}
    assert all(1e-4 <= t["lr"] <= 1e-2 for t in trials)
    logs = [math.log10(t["lr"]) for t in trials]
    assert min(logs) < -3.5 and max(logs) > -2.5  # spread over the decades, not bunched at the top
    assert all(abs(t["q"] / 0.25 - round(t["q"] / 0.25)) < 1e-9 for t in trials)
    assert {t["c"] for t in trials} == {"a", "b"} and all(0 <= t["u"] <= 1 for t in trials)


def test_offline_plan_follows_the_method(tmp_path, caplog):
    assert len(plan_trials(load_sweep(write_sweep(tmp_path)))) == 2
    capped = load_sweep(write_sweep(tmp_path, method="random", run_cap=5))
    assert len(plan_trials(capped)) == 5
    bayes = load_sweep(write_sweep(tmp_path, method="bayes", run_cap=3))
    assert plan_trials(bayes) == random_trials(bayes.parameters, 3, bayes.seed)
    with pytest.raises(SweepError, match="run_cap"):
        plan_trials(load_sweep(write_sweep(tmp_path, method="random")))


@pytest.mark.parametrize(
    "body, message",
    [
        ({"method": "hyperband"}, "method = 'hyperband' is not one of"),
        ({"metric": {"goal": "maximize"}}, "metric needs a name"),
        (
            {"parameters": {"optim.lr": {"distribution": "uniform", "min": 0.001, "max": 0.01}}},
            "parameters.optim.lr: a grid search needs",
        ),
        (
            {"parameters": {"optim.lr": {"distribution": "gamma", "min": 1, "max": 2}}},
            "distribution 'gamma' is not one of",
        ),
        (
            {"parameters": {"optim.lr": {"distribution": "normal", "mu": 1}}, "method": "random"},
            "needs mu, sigma",
        ),
        ({"program": "train.py"}, "unknown key 'program'"),
    ],
)
def test_sweep_file_errors_name_the_file_and_key(tmp_path, body, message):
    path = write_sweep(tmp_path, **body)
    with pytest.raises(SweepError, match=message) as err:
        load_sweep(path)
    assert str(path) in str(err.value)


def test_sweep_of_an_unknown_config_key_fails_before_any_run(tmp_path, cache_dir):
    path = write_sweep(tmp_path, parameters={"optim.learning_rate": {"values": [1e-3]}})
    with pytest.raises(
        SweepError, match="unknown config key 'optim.learning_rate'.*Valid keys under 'optim'"
    ):
        sweep_main(str(path), tiny_overrides(cache_dir, tmp_path))
    assert not (tmp_path / "sweeps").exists()


def test_command_line_may_not_override_a_swept_key(tmp_path, cache_dir):
    with pytest.raises(SweepError, match="sets 'model.spatial.alpha', which .*demo_grid.yaml sweeps"):
        sweep_main("demo_grid", [*tiny_overrides(cache_dir, tmp_path), "model.spatial.alpha=0.1"])


def test_hmdb51_fig4_sweep_makes_valid_configs():
    spec = load_sweep("hmdb51_fig4")
    assert set(spec.parameters) == {
        "model.temporal.num_tokens",
        "model.spatial.alpha",
        "model.spatial.topk_ratio",
        "optim.lr",
    }
    assert "experiment" not in spec.wandb_config() and "overrides" not in spec.wandb_config()
    for params in plan_trials(spec):
        cfg = trial_config(spec, ["model.clip.source=tiny"], params)
        assert cfg.name == "hmdb51" and cfg.data.dataset == "hmdb51"
        assert (
            cfg.model.local_prompts.num_tokens
            == cfg.model.temporal.num_tokens
            == params["model.temporal.num_tokens"]
        )
        assert cfg.model.temporal.alpha == cfg.model.spatial.alpha == params["model.spatial.alpha"]
        assert (
            cfg.optim.lr == params["optim.lr"]
            and cfg.model.spatial.topk_ratio == params["model.spatial.topk_ratio"]
        )


# ---------------------------------------------------------------------------------- running
def test_trial_names_show_the_parameters_and_spell_out_keys_that_end_alike():
    params = {"model.spatial.alpha": 0.05, "model.temporal.alpha": 1e-05, "optim.lr": 2, "data.x": [1, 2]}
    assert trial_label(7, params) == (
        "trial-007 model.spatial.alpha=0.05 model.temporal.alpha=1e-05 lr=2 x=[1, 2]"
    )
    assert trial_label(12, {}) == "trial-012"


@pytest.mark.slow
def test_offline_sweep_runs_every_trial_and_writes_table_and_plot(cache_dir, tmp_path, monkeypatch):
    from stop_lightning.cli import main
    from test_callbacks import wandb_records

    monkeypatch.setenv("STOP_SWEEP_STAMP", "s")
    monkeypatch.delenv("STOP_RUN_STAMP", raising=False)
    team = ["logger.wandb=true", "logger.mode=offline", "logger.tags=[team-a,fig4]"]
    assert main(["sweep", "demo_grid", *tiny_overrides(cache_dir, tmp_path), *team]) == 0
    assert "STOP_RUN_STAMP" not in os.environ  # the per-trial run name does not leak out
    sweep_dir = tmp_path / "sweeps" / "demo_grid" / "s"
    with open(sweep_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial"] for r in rows] == ["trial-000", "trial-001"]
    assert [float(r["model.spatial.alpha"]) for r in rows] == [0.05, 0.5]
    for row in rows:
        trial = sweep_dir / row["trial"]
        cfg = load_config(trial / "config.yaml")  # the config the trial really ran with
        assert cfg.model.spatial.alpha == cfg.model.temporal.alpha == float(row["model.spatial.alpha"])
        # In W&B each trial is named by its parameters, in the sweep's group, with the run's tags.
        name = f"{row['trial']} alpha={float(row['model.spatial.alpha']):g} lr=0.002"
        assert (cfg.logger.name, cfg.logger.group) == (name, "demo_grid-s")
        (run_file,) = trial.glob("wandb/offline-run-*/run-*.wandb")
        run = next(r.run for r in wandb_records(run_file) if r.WhichOneof("record_type") == "run")
        assert (run.display_name, run.run_group, list(run.tags)) == (name, "demo_grid-s", ["team-a", "fig4"])
        assert cfg.trainer.max_epochs == 1 and cfg.paths.run_dir == str(trial)
        with open(trial / "csv" / "metrics.csv") as f:
            logged = [float(r["test/top1"]) for r in csv.DictReader(f) if r.get("test/top1")]
        assert logged == [pytest.approx(float(row["test/top1"]))] and row["status"] == "ok"
        assert (trial / "checkpoints" / "last.ckpt").is_file()
    markdown = (sweep_dir / "results.md").read_text()
    assert markdown.count("| trial-00") == 2 and "(best)" in markdown
    plot = (sweep_dir / PLOT_FILE).read_bytes()
    assert plot[:8] == b"\x89PNG\r\n\x1a\n" and len(plot) > 5000
    assert yaml.safe_load((sweep_dir / "sweep.yaml").read_text())["experiment"] == "demo"


def test_online_creates_a_wandb_sweep_and_runs_trials_through_the_agent(cache_dir, tmp_path, monkeypatch):
    import wandb

    import stop_lightning.sweep.runner as runner_module  # the trials call train() from here

    calls = {}
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("STOP_SWEEP_STAMP", "online")

    def create_sweep(sweep, project, entity):
        calls["sweep"] = (sweep, project, entity)
        return "sweep-id"

    def agent(sweep_id, function, count, project, entity):
        calls["agent"] = (sweep_id, count)
        function()

    class FakeRun:
        config = {"model.spatial.alpha": 0.5, "optim.lr": 0.002}

    def fake_train(cfg, resume=None):
        calls["trained"] = (cfg, os.environ.get("STOP_RUN_STAMP"))
        return {"test/top1": 0.5}

    def init(**kwargs):
        calls["init"] = kwargs
        calls["run"] = FakeRun()
        return calls["run"]

    monkeypatch.setattr(wandb, "sweep", create_sweep)
    monkeypatch.setattr(wandb, "agent", agent)
    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(runner_module, "train", fake_train)
    assert sweep_main("demo_grid", [*tiny_overrides(cache_dir, tmp_path), "logger.wandb=true"]) == 0
    sent, project, entity = calls["sweep"]
    assert set(sent) == {"method", "metric", "parameters"} and sent["method"] == "grid"
    assert project == "stop-lightning" and entity is None
    assert calls["agent"] == ("sweep-id", None)
    cfg, stamp = calls["trained"]
    assert cfg.model.spatial.alpha == cfg.model.temporal.alpha == 0.5 and stamp == "trial-000"
    assert cfg.paths.run_dir == str(tmp_path / "sweeps" / "demo_grid" / "online")
    # The agent's run is the trial's W&B run: named by its parameters, grouped by the sweep id.
    assert calls["init"] == {"group": "demo_grid-sweep-id", "tags": []}
    assert calls["run"].name == cfg.logger.name == "trial-000 alpha=0.5 lr=0.002"
    assert cfg.logger.group == "demo_grid-sweep-id"


def fake_online_wandb(monkeypatch, calls: dict) -> None:
    """W&B online with ``wandb.sweep`` and ``wandb.agent`` recorded, and ``train`` not run."""
    import wandb

    import stop_lightning.sweep.runner as runner_module

    class FakeRun:
        config = {"model.spatial.alpha": 0.05}

    def agent(sweep_id, function, count, project, entity):
        calls["agent"] = (sweep_id, project, entity)
        function()

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setattr(wandb, "sweep", lambda **kwargs: calls.setdefault("created", kwargs))
    monkeypatch.setattr(wandb, "agent", agent)
    monkeypatch.setattr(wandb, "init", lambda **kwargs: calls.setdefault("init", kwargs) and FakeRun())
    monkeypatch.setattr(runner_module, "train", lambda cfg: calls.setdefault("trained", cfg) and {})


def test_sweep_id_joins_the_existing_online_sweep(cache_dir, tmp_path, monkeypatch):
    from stop_lightning.cli import main

    calls: dict = {}
    fake_online_wandb(monkeypatch, calls)
    monkeypatch.setenv("STOP_SWEEP_STAMP", "node2")
    where = ["logger.wandb=true", "logger.entity=lab", "logger.project=stop-team", "logger.tags=[b]"]
    argv = ["sweep", "demo_grid", "--id", "lab/stop-team/ab12cd34", *tiny_overrides(cache_dir, tmp_path)]
    assert main([*argv, *where]) == 0
    assert "created" not in calls  # joined, not created
    assert calls["agent"] == ("lab/stop-team/ab12cd34", "stop-team", "lab")
    assert calls["init"] == {"group": "demo_grid-ab12cd34", "tags": ["b"]}
    assert calls["trained"].logger.group == "demo_grid-ab12cd34"


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (
            ["--id", "ab12cd34"],
            {"WANDB_MODE": "offline"},
            "--id ab12cd34 joins an online W&B sweep, but W&B is",
        ),
        (["--id", "ab12cd34", "logger.wandb=false"], {}, "but logger.wandb is false"),
        (["--id", "ab 12"], {}, "--id 'ab 12' is not a W&B sweep id"),
    ],
)
def test_sweep_id_without_online_wandb_is_one_line_and_exit_2(
    argv, env, message, cache_dir, tmp_path, monkeypatch, capsys
):
    from stop_lightning.cli import main

    calls: dict = {}
    fake_online_wandb(monkeypatch, calls)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["sweep", "demo_grid", *tiny_overrides(cache_dir, tmp_path), "logger.wandb=true", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not calls and not (tmp_path / "sweeps").exists()
