"""`stop-lightning search`: exact top-k, the text side of the model that made the embeddings, refusals."""

import importlib.util

import numpy as np
import pytest
import torch

from stop_lightning.cli import main
from stop_lightning.inference import checkpoint_datamodule, save_embeddings
from stop_lightning.model_io import load_checkpoint, model_fingerprint
from stop_lightning.search import load_collection, search, top_k


def _independent_top(queries: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    scores = queries.astype(np.float64) @ rows.astype(np.float64).T  # [Q, N]
    return -np.sort(-scores, axis=1)[:, :k]


@pytest.mark.parametrize(
    "n,chunk,k", [(1, 4, 3), (50, 7, 5), (50, 50, 50), (50, 64, 80), (333, 32, 10), (1000, 1, 4)]
)
def test_top_k_equals_a_full_sort(n, chunk, k):
    g = torch.Generator().manual_seed(n * 31 + chunk)
    rows = torch.nn.functional.normalize(torch.randn(n, 16, generator=g), dim=-1)
    rows[n // 2 :: 5] = rows[0].clone()  # exact ties with row 0, across chunks
    queries = torch.cat(
        [torch.randn(3, 16, generator=g), rows[:1]]
    )  # the last query hits the tied rows first
    scores, index = top_k(queries, rows, k, chunk_rows=chunk)
    expected = _independent_top(queries.numpy(), rows.numpy(), k)
    assert scores.shape == index.shape == (4, min(k, n))
    np.testing.assert_allclose(scores.numpy(), expected, atol=1e-5)
    for q in range(4):  # each index scores what its rank says, and no row comes twice
        assert len(set(index[q].tolist())) == index.shape[1]
        np.testing.assert_allclose((rows[index[q]] @ queries[q]).numpy(), scores[q].numpy(), atol=1e-5)
    tied = {0, *range(n // 2, n, 5)}
    assert set(index[3, : min(len(tied), k)].tolist()) <= tied


@pytest.fixture(scope="module")
def retrieval(retrieval_run):
    loaded = load_checkpoint(retrieval_run.ckpt, device="cpu")
    return loaded, checkpoint_datamodule(loaded, "test").datasets["test"]


def test_search_finds_the_video_whose_caption_names_its_colour(retrieval, tmp_path):
    """A collection whose video rows are what a perfect video side would give: the model's own text
    feature of each video's caption ("a red square moves left"). Only the caption naming a video's
    colour and motion ranks that video first, so the search must encode the query with the same text
    side, rank exactly and map rows back to the right ids and paths."""
    loaded, dataset = retrieval
    captions = [caps[0] for caps in dataset.captions]
    unique = [i for i, c in enumerate(captions) if captions.count(c) == 1]
    assert len(unique) >= 4, captions
    with torch.no_grad():
        rows = loaded.module.encode_texts(captions)  # [N, E]
    ids = [r.video_id for r in dataset.records]
    out = save_embeddings(
        tmp_path / "oracle.pt",
        rows,
        ids,
        [r.path for r in dataset.records],
        {"checkpoint": str(loaded.path), "fingerprint": model_fingerprint(loaded.module)},
    )
    collection = load_collection(out)
    results = search(loaded, collection, [captions[i] for i in unique], top=3)
    for i, hits in zip(unique, results):
        assert hits[0].id == ids[i] and hits[0].path == dataset.records[i].path, captions[i]
        assert hits[0].score == pytest.approx(1.0, abs=1e-5) and hits[1].score < hits[0].score


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_search_cli_ranks_embed_output_by_cosine(retrieval_run, retrieval, tmp_path, capsys, suffix):
    loaded, dataset = retrieval
    emb = tmp_path / f"videos{suffix}"
    embed_with_cli(retrieval_run, loaded, emb)
    query = "a red square moves left"
    capsys.readouterr()
    assert main(["search", str(emb), query, "--top", "5"]) == 0  # the checkpoint named in the file
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == query and len(lines) == 6
    got = [(line.split()[1], float(line.split()[2])) for line in lines[1:]]
    # Independently: the model's text feature against every embedded video, sorted.
    rows = load_collection(emb)
    with torch.no_grad():
        text = loaded.module.encode_texts([query])[0].numpy().astype(np.float64)
    scores = rows.embeddings.numpy().astype(np.float64) @ text
    order = np.argsort(-scores, kind="stable")[:5]
    assert [s for _, s in got] == pytest.approx([scores[i] for i in order], abs=1e-4)
    assert got[0][0] == rows.ids[order[0]] or scores[order[0]] - scores[order[1]] < 1e-6


def dataset_manifest(loaded):
    return checkpoint_datamodule(loaded).manifest_dir / "test.jsonl"


def embed_with_cli(run, loaded, out) -> None:
    """``stop-lightning embed`` of the run's test videos into ``out``."""
    args = ["embed", "--ckpt", str(run.ckpt), "--manifest", str(dataset_manifest(loaded)), "--out", str(out)]
    assert main(args) == 0


def test_search_with_an_export_folder_equals_the_checkpoint(retrieval_run, retrieval, tmp_path, capsys):
    loaded, _ = retrieval
    emb, folder = tmp_path / "videos.pt", tmp_path / "export"
    embed_with_cli(retrieval_run, loaded, emb)
    assert main(["export", str(retrieval_run.ckpt), str(folder)]) == 0
    capsys.readouterr()
    assert main(["search", str(emb), "a blue box moving up", "--top", "4"]) == 0
    from_ckpt = capsys.readouterr().out
    assert main(["search", str(emb), "a blue box moving up", "--top", "4", "--ckpt", str(folder)]) == 0
    assert capsys.readouterr().out == from_ckpt


def test_search_refuses_another_models_embeddings(retrieval_run, demo_run, retrieval, tmp_path, capsys):
    loaded, dataset = retrieval
    emb = tmp_path / "videos.pt"
    embed_with_cli(retrieval_run, loaded, emb)
    capsys.readouterr()
    assert main(["search", str(emb), "a red square", "--ckpt", str(demo_run.ckpt)]) == 2
    # One error line (other lines may be provenance warnings: the run's git state differs from now).
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert (
        len(err) == 1
        and "does not match these video features" in err[0]
        and "stop-lightning embed --ckpt" in err[0]
    )
    # A file from elsewhere, without the fingerprint, is refused too.
    save_embeddings(tmp_path / "bare.pt", torch.zeros(2, 4), ["a", "b"], ["a.mp4", "b.mp4"], {})
    assert main(["search", str(tmp_path / "bare.pt"), "a red square"]) == 2
    assert "fingerprint" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "none.pt"), "a red square"]) == 2
    assert "none.pt does not exist" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("faiss") is not None, reason="faiss is installed")
def test_faiss_flag_without_faiss_says_how_to_install(retrieval_run, retrieval, tmp_path, capsys):
    loaded, _ = retrieval
    emb = tmp_path / "videos.pt"
    embed_with_cli(retrieval_run, loaded, emb)
    capsys.readouterr()
    assert main(["search", str(emb), "a red square", "--faiss"]) == 2
    assert "pip install faiss-cpu" in capsys.readouterr().err
