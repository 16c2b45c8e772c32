"""Text-video retrieval: symmetric InfoNCE with CLIP's logit scale over the global batch.

Under DDP the features of every rank are all-gathered with gradients, so the loss sees the
global batch exactly as one process with the whole batch would; on one device the same code
path runs (the gather is the identity).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stop_lightning.tasks.base import VideoTaskModule
from stop_lightning.tasks.retrieval_metrics import dual_softmax, retrieval_metrics


def symmetric_infonce(text: torch.Tensor, video: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``text``, ``video``: ``[N, E]`` L2-normalised, row i of each a matching pair."""
    logits = scale * text @ video.t()  # [N, N]
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


class RetrievalModule(VideoTaskModule):
    def __init__(self, cfg: dict, bundle=None) -> None:
        super().__init__(cfg, bundle=bundle)
        self._eval_feats: list[torch.Tensor] = []
        self._eval_index: list[torch.Tensor] = []

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, ...]`` per rank -> ``[world * B, ...]``, differentiable."""
        if self.trainer is None or self.trainer.world_size == 1:
            return x
        return self.all_gather(x, sync_grads=True).flatten(0, 1)

    def training_step(self, batch, batch_idx):
        video_feats, _ = self.encode_videos(batch["video"])  # [B, E]
        text_feats = self.encode_texts(batch["caption"])  # [B, E]
        video_all, text_all = self.gather(video_feats), self.gather(text_feats)
        loss = symmetric_infonce(text_all, video_all, self.logit_scale)
        self.log("train/loss", loss, prog_bar=True, batch_size=video_feats.shape[0])
        return loss

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch) -> None:
        feats, _ = self.encode_videos(batch["video"])
        self._eval_feats.append(feats.detach())
        self._eval_index.append(batch["video_index"].detach())

    def _eval_epoch_end(self, stage: str) -> dict[str, float]:
        feats = torch.cat(self._eval_feats) if self._eval_feats else torch.zeros(0, 1, device=self.device)
        index = torch.cat(self._eval_index) if self._eval_index else torch.zeros(0, dtype=torch.long, device=self.device)
        self._eval_feats.clear()
        self._eval_index.clear()
        if self.trainer is not None and self.trainer.world_size > 1:
            feats = self.all_gather(feats).flatten(0, 1)
            index = self.all_gather(index).flatten(0, 1)
        # A distributed sampler pads by repeating items: keep one feature per video index.
        order = torch.argsort(index, stable=True)
        index, feats = index[order], feats[order]
        keep = torch.ones_like(index, dtype=torch.bool)
        keep[1:] = index[1:] != index[:-1]
        index, feats = index[keep], feats[keep]
        captions, cap_video = self.trainer.datamodule.eval_captions(stage)
        cap_video = torch.as_tensor(cap_video, device=feats.device)
        # Videos are numbered 0..V-1 in the eval set; map caption targets to rows of `feats`.
        row_of = torch.full((int(index.max().item()) + 1 if index.numel() else 1,), -1, dtype=torch.long, device=feats.device)
        row_of[index] = torch.arange(index.numel(), device=feats.device)
        targets = row_of[cap_video]
        if (targets < 0).any():
            raise RuntimeError(f"{int((targets < 0).sum())} captions point to videos that were not evaluated")
        with torch.no_grad():
            text = self.encode_texts(captions)
        sim = text @ feats.t()  # [captions, videos]
        metrics = retrieval_metrics(sim, targets, prefix=f"{stage}/")
        if self.cfg.task.dual_softmax:
            metrics.update(retrieval_metrics(dual_softmax(sim), targets, prefix=f"{stage}/dsl_"))
        return metrics

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        metrics = self._eval_epoch_end("val")
        headline = metrics.pop("val/t2v_R1")
        self.log_dict(metrics)
        self.log("val/t2v_R1", headline, prog_bar=True)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self._eval_epoch_end("test"))
