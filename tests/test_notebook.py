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
