"""notebooks/explore_checkpoint.ipynb runs top to bottom against a tiny checkpoint."""

import nbformat
import pytest
from nbclient import NotebookClient

from stop_lightning.inference import checkpoint_datamodule, predict
from stop_lightning.model_io import load_checkpoint
from stop_lightning.schema import PROJECT_ROOT

NOTEBOOK = PROJECT_ROOT / "notebooks" / "explore_checkpoint.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")
    assert "parameters" in nb.cells[1].metadata.get("tags", [])


@pytest.mark.timeout(180)
def test_notebook_executes_and_shows_the_prediction(demo_run, monkeypatch):
    loaded = load_checkpoint(demo_run.ckpt)
    video = str(checkpoint_datamodule(loaded, "test").datasets["test"].paths[-1])
    best, _ = predict(loaded, [video], top=5)[0].top[0]

    monkeypatch.setenv("STOP_NOTEBOOK_CKPT", str(demo_run.ckpt))
    monkeypatch.setenv("STOP_NOTEBOOK_VIDEO", video)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"video: {video}" in text
    assert f"1. {best}" in text, text
    assert "mask keeps" in text and "w_t:" in text
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) == 2  # the frames with the mask, the frame-weight bars


def test_make_notebook_executes_a_copy_and_prints_how_to_open_it():
    """`make notebook` (dry run): nbconvert executes the notebook into runs/notebooks/ with the
    checkpoint and video as given (the notebook reads them from the project root), then prints the
    JupyterLab command the README shows; the dev extras install both tools."""
    import os
    import re
    import shlex
    import subprocess

    root = PROJECT_ROOT
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}

    def planned(*args: str) -> list[str]:
        run = subprocess.run(
            ["make", "-n", "--no-print-directory", "notebook", *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        return run.stdout.replace("\\\n", " ").splitlines()

    lines = planned("CKPT=runs/demo/x/checkpoints/last.ckpt", "VIDEO=clips/a b.mp4")
    (execute,) = [shlex.split(line) for line in lines if "nbconvert" in line and "import" not in line]
    ckpt, video = "STOP_NOTEBOOK_CKPT=runs/demo/x/checkpoints/last.ckpt", "STOP_NOTEBOOK_VIDEO=clips/a b.mp4"
    assert execute[:2] == [ckpt, video]
    i = execute.index("nbconvert")
    assert execute[i - 1 : i + 4] == ["-m", "nbconvert", "--to", "notebook", "--execute"]
    assert execute[execute.index("--output-dir") + 1] == "runs/notebooks"
    assert execute[-1] == str(NOTEBOOK.relative_to(root))
    (said,) = [line for line in lines if line.startswith("echo ")]
    opened = ".venv/bin/jupyter lab runs/notebooks/explore_checkpoint.ipynb"
    assert said.endswith(f'open it with: {opened}"')
    assert opened in (root / "README.md").read_text()
    # Without CKPT / VIDEO the notebook picks the newest demo run and its first test video.
    (bare,) = [shlex.split(line) for line in planned() if "nbconvert --to" in line]
    assert bare[:2] == ["STOP_NOTEBOOK_CKPT=", "STOP_NOTEBOOK_VIDEO="]

    (dev,) = re.findall(r"^dev = \[\n(.*?)^\]", (root / "pyproject.toml").read_text(), re.S | re.M)
    assert {"nbconvert", "jupyterlab"} <= set(re.findall(r'^\s*"([A-Za-z0-9_-]+)', dev, re.M))
