"""Text-video retrieval: symmetric InfoNCE with CLIP's logit scale over the global batch.

Training. Under DDP every rank's video and text features are all-gathered with gradients
(Lightning's ``all_gather(sync_grads=True)``), so each rank computes the loss of the *global*
batch. The gather's backward sums the gradients of the W identical losses into each rank's own
features (W x dL/dx), and DDP then averages the parameter gradients over the W ranks, so the
update equals that of one process on the whole global batch (``tests/tasks/test_retrieval.py``
checks this numerically). On one device the gather is the identity and the same code runs.

Evaluation. Every video of the split is embedded once (the ranks' features are gathered and the
sampler's padding repeats dropped), every caption of the split is embedded, and the metrics of
:mod:`retrieval_metrics` are computed on the ``[captions, videos]`` similarity matrix: 1k-A (one
caption per video) and multi-caption test sets alike, ranked by the conventions ``task.tie_rank``
and ``task.v2t_captions`` (docs/metrics.md). With ``task.dual_softmax`` the dual-softmax re-ranked
metrics are logged next to them as ``<stage>/dsl_*``; with ``task.qb_norm`` the test's
text-to-video metrics after QB-Norm, with the training captions as query bank, as ``test/qb_t2v_*``.

Padded frames. ``fps`` sampling repeats a short video's last frame and marks the repeats in
``frame_mask``, which the task passes to the video model and the model to its aggregator. Where
the video vector is a plain mean of frame features (``aggregation.output=mean_cls`` without the
MSA block: the CLIP4Clip meanP and zero-shot presets) the aggregator skips the repeats. Inside
the encoder STOP's global prompts, temporal prompts and MSA block still see the repeated frames;
VoP-C and VoP-F leave them out when the batch's ``padded_frames`` (read on the host by the
DataModule, so the model need not read the mask from the device) says there are any. On MSRVTT
this never matters (every video is >= 10 s; 12 frames at 3 fps span 4 s).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from stop_lightning.schema import ConfigError
from stop_lightning.tasks.base import VideoTaskModule, unique_by_index
from stop_lightning.tasks.retrieval_metrics import dual_softmax, querybank_normalise, retrieval_metrics
from stop_lightning.tasks.scores_dump import write_similarity

log = logging.getLogger(__name__)


def symmetric_infonce(text: torch.Tensor, video: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``text``, ``video``: ``[N, E]`` L2-normalised, row i of each a matching pair -> scalar loss.

    Mean of the text-to-video and video-to-text cross-entropies over the ``[N, N]`` logits.
    """
    logits = scale * text @ video.t()  # [N, N]
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def logged_metric_names(stage: str, dual: bool) -> list[str]:
    """The names an evaluation of ``stage`` logs, e.g. ``val/t2v_R1`` (and ``val/dsl_t2v_R1`` with
    ``dual``)."""
    names = list(
        retrieval_metrics(torch.ones(1, 1), torch.zeros(1, dtype=torch.long))
    )  # the one source of the names
    prefixes = [f"{stage}/"] + ([f"{stage}/dsl_"] if dual else [])
    return [p + n for p in prefixes for n in names]


class RetrievalModule(VideoTaskModule):
    """Videos and captions in CLIP's joint space. Batches: see :mod:`stop_lightning.data.datamodules`."""

    def __init__(self, cfg: dict, bundle=None) -> None:
        super().__init__(cfg, bundle=bundle)
        self._eval_feats: list[torch.Tensor] = []
        self._eval_index: list[torch.Tensor] = []
        self._eval_unreadable: list[torch.Tensor] = []
        self._unreadable_videos = torch.zeros(0, dtype=torch.bool)  # [V] of the last evaluation
        # The test's unreadable videos (data.bad_video=skip): {"count", "total", "paths"}.
        self.unreadable: dict = {}
        self.last_eval_sizes: dict[str, int] = {}  # videos and captions of the last evaluation
        self._eval_video_feats = torch.zeros(0, 1)  # [V, E] of the last evaluation
        # The last test's (video rows [V], caption positions [C], similarity [C, V], caption columns [C],
        # unreadable [V]) with keep_test_scores.
        self.test_scores: tuple[torch.Tensor, ...] = ()

    def setup(self, stage: str) -> None:
        # Fail before training, not after the first validation, on a monitor this task never logs
        # (e.g. the recognition default val/top1).
        monitor = str(self.cfg.checkpoint.monitor or "")
        valid = ["train/loss", *logged_metric_names("val", bool(self.cfg.task.dual_softmax))]
        if stage == "fit" and monitor and monitor not in valid:
            raise ConfigError(
                f"checkpoint.monitor = {monitor!r} is not logged by the retrieval task; use one of "
                f"{', '.join(valid)} (e.g. checkpoint.monitor=val/t2v_R1 checkpoint.mode=max)"
            )

    def _world_size(self) -> int:
        # `self.trainer` raises when the module is used outside a Trainer (tests, notebooks).
        return self._trainer.world_size if self._trainer is not None else 1

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, ...]`` per rank -> ``[world * B, ...]``, differentiable (identity on one process)."""
        if self._world_size() == 1:
            return x
        return self.all_gather(x, sync_grads=True).flatten(0, 1)  # [W, B, ...] -> [W*B, ...]

    def contrastive_loss(self, batch: dict) -> torch.Tensor:
        """Symmetric InfoNCE of a batch's videos and captions against the whole global batch."""
        video, _ = self.encode_videos(
            batch["video"], batch.get("frame_mask"), batch.get("padded_frames")
        )  # [B, E]
        text = self.encode_texts(batch["caption"])  # [B, E]
        return symmetric_infonce(self.gather(text), self.gather(video), self.logit_scale)

    def training_step(self, batch, batch_idx):
        loss = self.contrastive_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["video"].shape[0])
        return loss

    # ---------------------------------------------------------------- evaluation
    def _eval_step(self, batch) -> None:
        feats, _ = self.encode_videos(batch["video"], batch.get("frame_mask"), batch.get("padded_frames"))
        self._eval_feats.append(feats.detach())
        self._eval_index.append(batch["index"].detach().to(feats.device))
        unreadable = batch.get("unreadable")  # True for a video that could not be read (a blank stand-in)
        unreadable = (
            torch.zeros(len(feats), dtype=torch.bool) if unreadable is None else torch.as_tensor(unreadable)
        )
        self._eval_unreadable.append(unreadable.to(feats.device, torch.bool))

    def _collect_eval_videos(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(video index ``[V]``, features ``[V, E]``, unreadable ``[V]`` bool) of every video this
        evaluation saw, on every rank."""
        feats = torch.cat(self._eval_feats) if self._eval_feats else torch.zeros(0, 1, device=self.device)
        index = (
            torch.cat(self._eval_index)
            if self._eval_index
            else torch.zeros(0, dtype=torch.long, device=self.device)
        )
        bad = (
            torch.cat(self._eval_unreadable)
            if self._eval_unreadable
            else torch.zeros(0, dtype=torch.bool, device=self.device)
        )
        for kept in (self._eval_feats, self._eval_index, self._eval_unreadable):
            kept.clear()
        if self._world_size() > 1:
            # EpochSampler gives every rank ceil(n / world) items, so the shapes agree across ranks.
            feats = self.all_gather(feats).flatten(0, 1)  # [W, n, E] -> [W*n, E]
            index = self.all_gather(index).flatten(0, 1)
            bad = self.all_gather(bad.long()).flatten(0, 1).bool()  # gloo gathers no bool
        return unique_by_index(index, feats, bad)

    def similarity(self, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The evaluation's ``[captions, videos]`` cosine similarities and each caption's video column."""
        index, feats, bad = self._collect_eval_videos()
        captions, owners = self.trainer.datamodule.eval_captions(stage)
        owners = torch.as_tensor(owners, dtype=torch.long, device=feats.device)
        # Videos are numbered 0..V-1 in the split; map each caption's video to its row of `feats`.
        size = max(
            int(owners.max()) + 1 if owners.numel() else 0, int(index.max()) + 1 if index.numel() else 0
        )
        column = torch.full((size,), -1, dtype=torch.long, device=feats.device)
        column[index] = torch.arange(index.numel(), device=feats.device)
        targets = column[owners]
        seen = targets >= 0
        if not bool(seen.all()):  # limit_{val,test}_batches < 1: score the videos that were embedded
            log.warning(
                "%s retrieval: %d of %d videos embedded; scoring their %d of %d captions only",
                stage,
                index.numel(),
                size,
                int(seen.sum()),
                len(captions),
            )
            captions = [c for c, s in zip(captions, seen.tolist()) if s]
            targets = targets[seen]
        if not captions:
            raise RuntimeError(
                f"{stage} retrieval: no video with a caption was embedded (is the {stage} split empty?)"
            )
        with torch.no_grad():
            text = self.encode_texts(captions)  # [C, E]
        self.last_eval_sizes = {"videos": int(index.numel()), "captions": len(captions)}
        self._eval_video_feats = feats  # [V, E], for QB-Norm's bank similarities
        self._unreadable_videos = bad  # [V], rows of feats
        if stage == "test":
            dataset = getattr(self.trainer.datamodule, "datasets", {}).get("test")
            rows = index[bad].tolist()
            paths = (
                [dataset.records[i].path for i in rows] if dataset is not None else [f"row {i}" for i in rows]
            )
            self.unreadable = {"count": int(bad.sum()), "total": int(index.numel()), "paths": paths}
        sim = text @ feats.t()  # [C, V]
        if stage == "test" and self.keep_test_scores:
            positions = torch.nonzero(seen).flatten()  # [C]: each row's place in the split's caption list
            self.test_scores = tuple(t.cpu() for t in (index, positions, sim, targets, bad))
        return sim, targets  # [C, V], [C]

    def write_test_scores(self, folder: Path) -> Path:
        dataset = self.trainer.datamodule.datasets["test"]
        return write_similarity(folder, dataset.records, dataset.captions, *self.test_scores)

    def query_bank(self) -> torch.Tensor:
        """QB-Norm's query bank: the training split's captions, L2-normalised ``[B, E]``."""
        captions, _ = self.trainer.datamodule.eval_captions("train")
        if not captions:
            raise RuntimeError(
                "task.qb_norm=true needs training captions for its query bank; the train split has none"
            )
        with torch.no_grad():
            return self.encode_texts(captions)

    def _eval_epoch_end(self, stage: str) -> dict[str, float]:
        sim, targets = self.similarity(stage)
        task = self.cfg.task
        conventions = {
            "tie_rank": str(task.tie_rank),
            "v2t_captions": str(task.v2t_captions),
            "unreadable": self._unreadable_videos,
        }
        metrics = retrieval_metrics(sim, targets, prefix=f"{stage}/", **conventions)
        if task.dual_softmax:
            reranked = dual_softmax(sim, temperature=float(self.logit_scale))
            metrics.update(retrieval_metrics(reranked, targets, prefix=f"{stage}/dsl_", **conventions))
        if task.qb_norm and stage == "test":
            # Text-to-video only: the bank holds captions, so it normalises caption queries.
            bank_sim = self.query_bank() @ self._eval_video_feats.t()  # [B, V]
            normalised = querybank_normalise(sim, bank_sim, float(task.qb_norm_beta), int(task.qb_norm_k))
            metrics.update(
                retrieval_metrics(
                    normalised, targets, prefix=f"{stage}/qb_", directions=("t2v",), **conventions
                )
            )
        metrics[f"{stage}/unreadable"] = float(self._unreadable_videos.sum())
        return metrics

    def _log_eval(self, metrics: dict[str, float], headline: str) -> None:
        # Every rank computed the same numbers from the gathered features; sync_dist averages
        # identical values (and keeps Lightning from warning about epoch-level logging under DDP).
        value = metrics.pop(headline)
        self.log_dict(metrics, sync_dist=True)
        self.log(headline, value, prog_bar=True, sync_dist=True)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_eval(self._eval_epoch_end("val"), "val/t2v_R1")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._log_eval(self._eval_epoch_end("test"), "test/t2v_R1")
