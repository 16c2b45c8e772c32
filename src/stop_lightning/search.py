"""Text-to-video search over a collection: ``stop-lightning search EMBEDDINGS "a person riding a bike"``.

``stop-lightning embed`` writes the collection's video features with a trained model; search encodes
the query with the text side of the same model and ranks every video by cosine similarity. Which
model made the features is checked by its fingerprint (:func:`stop_lightning.model_io.model_fingerprint`),
so a query is never scored against another model's features.

The search is exact: a chunked matrix product and a running top-k, in memory bounded by the chunk,
so millions of 512-d rows fit on a CPU (docs/benchmarks.md gives the time for 100k). With ``faiss``
installed (not a dependency), ``--faiss`` uses its exact inner-product index instead.
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stop_lightning.checkpoint_io import unloadable
from stop_lightning.errors import USER_ERRORS, UserError
from stop_lightning.inference import EMBEDDING_SUFFIXES
from stop_lightning.model_io import LoadedCheckpoint, load_model, model_fingerprint
from stop_lightning.reading import check_file, problem

DEFAULT_CHUNK_ROWS = 1 << 16
EMBEDDING_FIELDS = ("embeddings", "ids", "paths")  # what every embed output holds, .pt or .npz


class SearchError(UserError, ValueError):
    """An embeddings file, query or model that search cannot use; the message says what to do."""


@dataclass
class Collection:
    """What ``stop-lightning embed`` wrote: one L2-normalised row per video."""

    path: Path
    embeddings: torch.Tensor  # [N, E]
    ids: list[str]
    paths: list[str]
    meta: dict[str, Any] = field(default_factory=dict)  # checkpoint, clip, task, manifest, fingerprint


@dataclass
class Hit:
    rank: int
    id: str
    path: str
    score: float  # cosine similarity of query and video


def load_collection(path: str | Path) -> Collection:
    """Read an ``embed`` output (.pt or .npz), checking its shape and fields."""
    path = Path(path)
    todo = f"write it with `stop-lightning embed --ckpt C --manifest M --out {path.name}`"
    check_file(path, "embeddings file", SearchError, todo)
    if path.suffix not in EMBEDDING_SUFFIXES:
        raise SearchError(
            f"embeddings file {path}: unknown format '{path.suffix}', "
            f"expected {' or '.join(EMBEDDING_SUFFIXES)} from `stop-lightning embed`"
        )
    kind = f"{path.suffix} embeddings file"
    try:
        if path.suffix == ".pt":
            with warnings.catch_warnings():  # torch's notes on a foreign pickle would add lines
                warnings.simplefilter("ignore")
                saved = torch.load(path, map_location="cpu", weights_only=True)
        else:
            with np.load(path, allow_pickle=False) as npz:
                saved = {name: npz[name] for name in npz.files}
    except Exception as err:
        raise SearchError(problem(path, unloadable(path, kind), todo)) from err
    missing = [k for k in EMBEDDING_FIELDS if k not in saved] if isinstance(saved, dict) else EMBEDDING_FIELDS
    if missing:
        held = "" if isinstance(saved, dict) else f"holds a {type(saved).__name__}, "
        raise SearchError(
            problem(path, f"{held}has no {', '.join(missing)}: not `stop-lightning embed` output", todo)
        )
    emb = torch.as_tensor(saved["embeddings"])  # [N, E]
    ids, paths = np.asarray(saved["ids"]).tolist(), np.asarray(saved["paths"]).tolist()
    meta = {k: v for k, v in saved.items() if k not in EMBEDDING_FIELDS}
    if path.suffix == ".npz":  # the meta dict travels as one JSON string
        try:
            meta = json.loads(str(saved["meta"])) if "meta" in saved else {}
        except json.JSONDecodeError as err:
            raise SearchError(
                problem(path, f"its meta is not JSON ({err.msg}): not `stop-lightning embed` output", todo)
            ) from err
    if emb.ndim != 2 or len(ids) != emb.shape[0] or len(paths) != emb.shape[0]:
        raise SearchError(
            f"embeddings file {path}: embeddings {tuple(emb.shape)} do not match "
            f"{len(ids)} ids and {len(paths)} paths"
        )
    return Collection(path, emb, [str(i) for i in ids], [str(p) for p in paths], meta)


def top_k(
    queries: torch.Tensor, embeddings: torch.Tensor, k: int, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product search: ``queries [Q, E]`` x ``embeddings [N, E]`` -> (scores, indices)
    ``[Q, k']``, best first, ``k' = min(k, N)``. Only ``Q x chunk_rows`` scores exist at a time."""
    q = queries.float()
    k = min(k, embeddings.shape[0])
    best_scores = torch.empty(q.shape[0], 0)
    best_index = torch.empty(q.shape[0], 0, dtype=torch.long)
    for start in range(0, embeddings.shape[0], chunk_rows):
        chunk = embeddings[start : start + chunk_rows].float()  # [C, E]
        scores = q @ chunk.T  # [Q, C]
        s, i = scores.topk(min(k, chunk.shape[0]), dim=1)
        merged_scores = torch.cat([best_scores, s], dim=1)  # [Q, <= 2k]
        merged_index = torch.cat([best_index, i + start], dim=1)
        keep = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1).indices
        best_scores, best_index = merged_scores.gather(1, keep), merged_index.gather(1, keep)
    return best_scores, best_index


def faiss_top_k(queries: torch.Tensor, embeddings: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`top_k` through faiss's exact inner-product index (``IndexFlatIP``)."""
    try:
        import faiss
    except ImportError as err:
        raise SearchError(
            "--faiss needs the faiss package (pip install faiss-cpu); "
            "without --faiss the search is exact in torch"
        ) from err
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(np.ascontiguousarray(embeddings.float().numpy()))
    scores, ids = index.search(np.ascontiguousarray(queries.float().numpy()), min(k, embeddings.shape[0]))
    return torch.from_numpy(scores), torch.from_numpy(ids).long()


def text_side(
    collection: Collection,
    ckpt: str | Path | None = None,
    clip_source: str | None = None,
    device: str | torch.device = "auto",
) -> LoadedCheckpoint:
    """The model whose text side belongs with ``collection``: ``ckpt`` (a .ckpt or an export folder),
    else the checkpoint the collection names; refused unless its fingerprint is the collection's."""
    made_by = collection.meta.get("fingerprint")
    if not made_by:
        raise SearchError(
            f"{collection.path} does not say which model made it "
            "(no 'fingerprint'; an older `embed` or another tool); "
            "write it again with `stop-lightning embed --ckpt C ...`"
        )
    source = ckpt if ckpt is not None else collection.meta.get("checkpoint")
    if not source:
        raise SearchError(
            f"{collection.path} names no checkpoint; "
            "pass --ckpt with the checkpoint or export folder that made it"
        )
    loaded = load_model(source, clip_source, device)
    found = model_fingerprint(loaded.module)
    if found != made_by:
        raise SearchError(
            f"{collection.path} was embedded by model {made_by[:12]} "
            f"({collection.meta.get('checkpoint', '?')}) but {source} "
            f"is model {found[:12]}: its text side does not match these video features. "
            "Pass the --ckpt that made them, "
            f"or embed again: stop-lightning embed --ckpt {source} --manifest M --out {collection.path}"
        )
    return loaded


@torch.no_grad()
def search(
    loaded: LoadedCheckpoint,
    collection: Collection,
    queries: list[str],
    top: int = 10,
    use_faiss: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> list[list[Hit]]:
    """The ``top`` videos of ``collection`` for each query, best first."""
    if top < 1:
        raise SearchError(f"--top must be >= 1, got {top}")
    if not queries or any(not q.strip() for q in queries):
        raise SearchError('every query must be non-empty text, e.g. "a person riding a bike"')
    text = loaded.module.encode_texts(list(queries)).float().cpu()  # [Q, E], L2-normalised
    if text.shape[1] != collection.embeddings.shape[1]:
        raise SearchError(
            f"{collection.path} has {collection.embeddings.shape[1]}-d rows "
            f"but the model's text features are {text.shape[1]}-d"
        )
    if use_faiss:
        scores, index = faiss_top_k(text, collection.embeddings, top)
    else:
        scores, index = top_k(text, collection.embeddings, top, chunk_rows)
    return [
        [
            Hit(r + 1, collection.ids[i], collection.paths[i], float(s))
            for r, (s, i) in enumerate(zip(row_s.tolist(), row_i.tolist()))
        ]
        for row_s, row_i in zip(scores, index)
    ]


def format_hits(queries: list[str], results: list[list[Hit]]) -> str:
    lines = []
    for query, hits in zip(queries, results):
        lines.append(query)
        width = max((len(h.id) for h in hits), default=2)
        lines += [f"  {h.rank:>3}. {h.id:<{width}}  {h.score:.4f}  {h.path}" for h in hits]
    return "\n".join(lines)


def search_main(
    embeddings: str,
    queries: list[str],
    top: int = 10,
    ckpt: str | None = None,
    clip_source: str | None = None,
    use_faiss: bool = False,
    device: str = "auto",
) -> int:
    """``stop-lightning search EMBEDDINGS QUERY [QUERY ...] [--top K] [--ckpt C] [--device D]``."""
    try:
        collection = load_collection(embeddings)
        loaded = text_side(collection, ckpt, clip_source, device)
        results = search(loaded, collection, queries, top, use_faiss)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_hits(queries, results))
    return 0
