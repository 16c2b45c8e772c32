"""The run's name, group and tags as loggers get them (logger.name/group/tags): checked with the config,
filled in for the loggers that take a run name. What an offline W&B run records is checked in
test_callbacks.py (a plain run) and test_sweep.py (sweep trials)."""

from pathlib import Path

import pytest
from lightning.pytorch.loggers import Logger

from stop_lightning.cli import main
from stop_lightning.config import load_config
from stop_lightning.loggers import build_loggers


class NamedLogger(Logger):
    """A logger with MLflow's notion of a run name (``run_name``), recording what it was given."""

    def __init__(self, run_name: str | None = None, save_dir: str = "") -> None:
        super().__init__()
        self.given = (run_name, save_dir)

    @property
    def name(self) -> str:
        return "named"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


NAMED = "loggers.named.class_path=test_logger_names.NamedLogger"


@pytest.mark.parametrize(
    "overrides, name",
    [([], "demo/20250101-120000"), (["logger.name=ablation lr"], "ablation lr")],
)
def test_a_logger_that_takes_a_run_name_gets_the_runs_name(overrides, name, tmp_path):
    cfg = load_config("demo", [NAMED, "logger.wandb=false", *overrides])
    run_dir = tmp_path / "demo" / "20250101-120000"
    named = [lg for lg in build_loggers(cfg, run_dir) if isinstance(lg, NamedLogger)]
    assert [lg.given for lg in named] == [(name, str(run_dir))]
    cfg = load_config("demo", [NAMED, "logger.wandb=false", "loggers.named.init_args.run_name=mine"])
    assert [lg.given[0] for lg in build_loggers(cfg, run_dir) if isinstance(lg, NamedLogger)] == ["mine"]


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "logger.nmae=x",
            "unknown config key 'logger.nmae' in command-line overrides. Did you mean logger.name",
        ),
        ("logger.grup=x", "Did you mean logger.group"),
        (
            "logger.tags=[ok,'']",
            "config key 'logger.tags[1]' = '' has 0 characters: W&B takes tags of 1 to 64",
        ),
        (f"logger.tags=[{'t' * 65}]", "config key 'logger.tags[0]' = 'tttt"),
        ("logger.tags=solo", "bad value for config key 'logger.tags'"),
    ],
)
def test_bad_logger_names_are_one_line_and_exit_2(override, message, tmp_path, capsys):
    assert main(["train", "demo", f"paths.output_dir={tmp_path}", override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not any(Path(tmp_path).iterdir())  # no run folder
    # 64 characters is still a tag W&B takes
    assert load_config("demo", [f"logger.tags=[{'t' * 64}]"]).logger.tags == ["t" * 64]
