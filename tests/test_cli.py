"""The command line ends user errors with a message and exit code 2, never a traceback."""

import pytest

from stop_lightning.cli import main


def test_bad_config_key_is_a_config_error(capsys):
    assert main(["train", "demo", "trainer.max_epoch=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error:") and "trainer.max_epochs" in err and "Traceback" not in err


def test_missing_dataset_names_the_manifest_command(tmp_path, capsys):
    code = main(
        [
            "train",
            "hmdb51",
            f"paths.data_root={tmp_path}",
            f"paths.manifest_root={tmp_path}/m",
            "model.clip.source=tiny",
            f"paths.cache_dir={tmp_path}/cache",
            f"paths.output_dir={tmp_path}/runs",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and "stop-lightning manifest hmdb51 --root" in err
    assert not (tmp_path / "runs").exists()  # a run that cannot start leaves no folder behind


def test_missing_checkpoint_for_resume(tmp_path, capsys):
    assert (
        main(["train", "demo", "--resume", str(tmp_path / "gone.ckpt"), f"paths.output_dir={tmp_path}"]) == 2
    )
    assert "gone.ckpt" in capsys.readouterr().err


def test_overrides_after_options_reach_the_config(capsys):
    assert main(["train", "demo", "--print-config", "trainer.max_epochs=3", "model.spatial.alpha=0.2"]) == 0
    out = capsys.readouterr().out
    assert "max_epochs: 3" in out and "alpha: 0.2" in out


def test_every_subcommand_and_option_has_help_text():
    import argparse

    from stop_lightning.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    assert set(helps) == set(sub.choices) and all(helps.values()), helps
    assert "bench" not in sub.choices  # `make bench` runs the benchmarks; no stale subcommand
    for name, parser in sub.choices.items():
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"{name} {action.option_strings or action.dest} has no help text"


def test_hydra_style_experiment_override_gets_the_hint(capsys):
    for argv in (["train", "demo", "experiment=hmdb51"], ["eval", "experiment=hmdb51"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("config error:") and "the experiment is the first argument" in err
        assert "stop-lightning train hmdb51" in err


def test_abbreviated_options_are_refused(capsys):
    """`--resum auto` once meant `--resume auto` (argparse's prefix matching) and started a new run."""
    with pytest.raises(SystemExit) as stop:
        main(["train", "demo", "--resum", "auto"])
    assert stop.value.code == 2 and "unrecognized arguments: --resum auto" in capsys.readouterr().err


def test_version_and_the_print_config_spelling_of_other_tools(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert (
        stop.value.code == 0
        and capsys.readouterr().out.strip() == f"stop-lightning {version('stop_lightning')}"
    )
    assert main(["train", "demo", "--print_config", "trainer.max_epochs=3"]) == 0
    assert "max_epochs: 3" in capsys.readouterr().out


def test_make_eval_needs_no_checkpoint_for_a_zero_shot_experiment():
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    # Run as a top-level make (not as a sub-make of `make test`, which would print its directory).
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}

    def command(*args: str) -> list[str]:
        run = subprocess.run(
            ["make", "-n", "--no-print-directory", *args], cwd=root, env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stdout + run.stderr
        (line,) = [line for line in run.stdout.splitlines() if " eval " in line]
        return line.split()

    assert command("eval", "EXP=hmdb51_zero_shot")[-2:] == ["eval", "hmdb51_zero_shot"]  # no --ckpt
    assert command("eval", "EXP=hmdb51", "CKPT=a.ckpt")[-3:] == ["hmdb51", "--ckpt", "a.ckpt"]
