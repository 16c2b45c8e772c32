"""Action recognition: CLIP logit scale x cosine(video, class-prompt text), cross-entropy.

Class-name text features are computed once and cached while nothing on the text side trains;
with deep text prompts or text adapters they are recomputed every step (51 or 101 short
prompts are cheap), so gradients reach the text-side parameters.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from stop_lightning.fileio import atomic_write
from stop_lightning.tasks.base import VideoTaskModule

log = logging.getLogger(__name__)


def harmonic_mean(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def class_prompts(class_names: list[str], templates: list[str]) -> list[str]:
    """Template-major list: prompt ``t * C + c`` is template t filled with class c."""
    return [t.format(name=name) for t in templates for name in class_names]


def _metrics(num_classes: int, prefix: str) -> MetricCollection:
    return MetricCollection(
        {
            "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
            "top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
            "mean_class": MulticlassAccuracy(num_classes, top_k=1, average="macro"),
        },
        prefix=prefix,
    )


class RecognitionModule(VideoTaskModule):
    """Class prompts scored against videos. ``base_novel_split``: (base ids, novel ids) for the
    base-to-novel protocol (training sees only the base classes' logits; testing adds base, novel
    and harmonic-mean top-1), None otherwise."""

    def __init__(
        self,
        cfg: dict,
        class_names: list[str],
        base_novel_split: tuple[list[int], list[int]] | None = None,
        bundle=None,
    ) -> None:
        super().__init__(cfg, bundle=bundle)
        split = None if base_novel_split is None else tuple(list(map(int, ids)) for ids in base_novel_split)
        self.save_hyperparameters({"class_names": list(class_names), "base_novel_split": split})
        self.class_names = list(class_names)
        self.num_classes = len(class_names)
        self.base_novel_split = split
        self.train_class_ids = split[0] if split is not None else None
        self.prompts = class_prompts(self.class_names, list(self.cfg.task.templates))
        # Optional linear classifier (task.head=linear) for a video model without a usable text tower.
        self.classifier: torch.nn.Linear | None = None
        if self.cfg.task.head == "linear":
            self.classifier = torch.nn.Linear(int(self.model.clip.config.projection_dim), self.num_classes)
        self._cached_text: torch.Tensor | None = None
        self.val_metrics = _metrics(self.num_classes, "val/")
        self.test_metrics = _metrics(self.num_classes, "test/")
        self.test_confusion = MulticlassConfusionMatrix(self.num_classes)
        self._test_scores: list[torch.Tensor] = []
        self._test_labels: list[torch.Tensor] = []

    @classmethod
    def inputs(cls, cfg, datamodule) -> dict:
        split = None
        if cfg.data.protocol == "base_to_novel":
            split = (list(datamodule.base_class_ids), list(datamodule.novel_class_ids))
        return {"class_names": list(datamodule.class_names), "base_novel_split": split}

    @classmethod
    def saved_inputs(cls, hparams: dict) -> dict:
        if not hparams.get("class_names"):
            raise KeyError("class_names")
        split = hparams.get("base_novel_split")
        if split is None and hparams.get("train_class_ids") is not None:  # written before the split was saved
            base = list(hparams["train_class_ids"])
            split = (base, [i for i in range(len(hparams["class_names"])) if i not in base])
        return {"class_names": list(hparams["class_names"]), "base_novel_split": split}

    # ---------------------------------------------------------------- text side
    def class_text_features(self) -> torch.Tensor:
        """``[C, E]`` L2-normalised, averaged over templates."""
        if self.model.text_side_trains and self.training:
            return self._class_text_features()
        if self._cached_text is None or self._cached_text.device != self.device:
            with torch.no_grad():
                self._cached_text = self._class_text_features()
        return self._cached_text

    def _class_text_features(self) -> torch.Tensor:
        feats = self.encode_texts(self.prompts)  # [n_templates * C, E]
        feats = feats.view(-1, self.num_classes, feats.shape[-1]).mean(0)  # [C, E]
        return F.normalize(feats, dim=-1)

    def on_train_batch_end(self, *args) -> None:
        # Text-side parameters changed: the eval cache is stale.
        if self.model.text_side_trains:
            self._cached_text = None

    # ---------------------------------------------------------------- forward
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, T, 3, H, W]`` -> logits ``[B, C]``."""
        video_feats, _ = self.encode_videos(video)
        if self.classifier is not None:
            return self.classifier(video_feats)
        text_feats = self.class_text_features()
        return self.logit_scale * video_feats @ text_feats.t()

    def multiview_scores(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, V, T, 3, H, W]`` (or ``[B, T, 3, H, W]``) -> class probabilities ``[B, C]`` averaged over views."""
        if video.ndim == 5:
            return self(video).softmax(-1)
        b, v = video.shape[:2]
        logits = self(video.flatten(0, 1))  # [B*V, T, 3, H, W] -> [B*V, C]
        return logits.softmax(-1).view(b, v, -1).mean(1)

    # ---------------------------------------------------------------- steps
    def training_step(self, batch, batch_idx):
        logits = self(batch["video"])
        labels = batch["label"]
        if self.train_class_ids is not None:
            ids = torch.as_tensor(self.train_class_ids, device=logits.device)
            remap = torch.full((self.num_classes,), -100, dtype=torch.long, device=logits.device)
            remap[ids] = torch.arange(len(ids), device=logits.device)
            logits, labels = logits[:, ids], remap[labels]
        loss = F.cross_entropy(logits, labels, label_smoothing=self.cfg.optim.label_smoothing)
        acc = (logits.argmax(-1) == labels).float().mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=labels.numel())
        self.log("train/acc", acc, prog_bar=True, batch_size=labels.numel())
        return loss

    def validation_step(self, batch, batch_idx):
        scores = self.multiview_scores(batch["video"])
        self.val_metrics.update(scores, batch["label"])

    def on_validation_epoch_end(self) -> None:
        # torchmetrics already reduced across ranks: every rank logs the same value.
        self.log_dict(self.val_metrics.compute(), prog_bar=True, sync_dist=True)
        self.val_metrics.reset()

    def test_step(self, batch, batch_idx):
        scores = self.multiview_scores(batch["video"])
        self.test_metrics.update(scores, batch["label"])
        self.test_confusion.update(scores, batch["label"])
        self._test_scores.append(scores.detach().float().cpu())
        self._test_labels.append(batch["label"].detach().cpu())

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute(), sync_dist=True)
        self.test_metrics.reset()
        confusion = self.test_confusion.compute().cpu()
        self.test_confusion.reset()
        split = self.base_novel_split
        if split is not None and self._test_scores:
            scores, labels = torch.cat(self._test_scores), torch.cat(self._test_labels)
            if self.trainer is not None and self.trainer.world_size > 1:  # every rank sees every clip
                scores = self.all_gather(scores.to(self.device)).flatten(0, 1).cpu()
                labels = self.all_gather(labels.to(self.device)).flatten(0, 1).cpu()
            base = subset_accuracy(scores, labels, split[0])
            novel = subset_accuracy(scores, labels, split[1])
            self.log_dict({"test/base_top1": base, "test/novel_top1": novel, "test/hm_top1": harmonic_mean(base, novel)},
                          sync_dist=True)
        self._test_scores.clear()
        self._test_labels.clear()
        if self.trainer is not None and self.trainer.is_global_zero:
            run_dir = Path(self.cfg.paths.run_dir)
            save_confusion(confusion, self.class_names, run_dir / "confusion_matrix.csv")


def subset_accuracy(scores: torch.Tensor, labels: torch.Tensor, class_ids: list[int]) -> float:
    """Top-1 among ``class_ids`` only, over the clips whose label is one of them (base-to-novel protocol)."""
    ids = torch.as_tensor(class_ids)
    keep = torch.isin(labels, ids)
    if not keep.any():
        return 0.0
    pred = ids[scores[keep][:, ids].argmax(-1)]
    return (pred == labels[keep]).float().mean().item()


def save_confusion(confusion: torch.Tensor, class_names: list[str], path: Path) -> Path:
    """Rows: true class, columns: predicted class."""
    lines = ["true\\pred," + ",".join(class_names)]
    for name, row in zip(class_names, confusion.tolist()):
        lines.append(name + "," + ",".join(str(int(v)) for v in row))
    return atomic_write(path, "\n".join(lines) + "\n")
