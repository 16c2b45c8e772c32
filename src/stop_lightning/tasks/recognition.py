"""Action recognition: CLIP logit scale x cosine(video, class-prompt text), cross-entropy.

Class-name text features are computed once and cached while nothing on the text side trains;
with deep text prompts or text adapters they are recomputed every step (51 or 101 short
prompts are cheap), so gradients reach the text-side parameters.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from stop_lightning.fileio import atomic_write
from stop_lightning.tasks.base import VideoTaskModule, unique_by_index
from stop_lightning.tasks.scores_dump import write_class_scores

log = logging.getLogger(__name__)


def harmonic_mean(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def class_prompts(class_names: list[str], templates: list[str]) -> list[str]:
    """Template-major list: prompt ``t * C + c`` is template t filled with class c."""
    return [t.format(name=name) for t in templates for name in class_names]


class MeanClassAccuracy(Metric):
    """Mean over the classes present in the labels of each class's top-1 accuracy (recall).

    torchmetrics' ``average="macro"`` also averages in a class that is predicted but has no clip
    (as 0), which understates the figure on any subset of a test set.
    """

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.add_state("correct", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, labels: torch.Tensor, miss: torch.Tensor | None = None) -> None:
        """``scores [N, C]``, ``labels [N]``; ``miss [N]`` (bool): clips counted as wrong whatever their
        scores."""
        hit = scores.argmax(-1) == labels
        hit = (hit & ~miss if miss is not None else hit).long()
        self.total += torch.bincount(labels, minlength=self.num_classes)
        self.correct += torch.bincount(labels, weights=hit, minlength=self.num_classes).long()

    def compute(self) -> torch.Tensor:
        present = self.total > 0
        return (self.correct[present].float() / self.total[present].float()).mean()


def _metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Top-1 and top-5 accuracy over clips, mean-class accuracy over the classes present.

    The module feeds them clips already gathered from every rank, so they never sync themselves.
    ``compute_groups=False``: torchmetrics would otherwise compare the metrics' states after the
    first update and merge equal ones; a first batch of one class, all correct, makes top-5 and
    mean-class look equal, and top-5 then reports mean-class (tests/tasks/test_metric_checks.py).
    """
    return MetricCollection(
        {
            "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro", sync_on_compute=False),
            "top5": MulticlassAccuracy(
                num_classes, top_k=min(5, num_classes), average="micro", sync_on_compute=False
            ),
            "mean_class": MeanClassAccuracy(num_classes, sync_on_compute=False),
        },
        prefix=prefix,
        compute_groups=False,
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
        # Made on the host once and kept on the model's device, not rebuilt and copied every step:
        self._prompt_tokens: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # class prompts
        self._train_classes: tuple[torch.Tensor, torch.Tensor] | None = None  # (ids [C_b], remap [C])
        # Evaluation keeps every clip's scores and computes the metrics once, at epoch end, on the
        # de-duplicated gathered clips (see _collect_eval).
        self._eval_scores: list[torch.Tensor] = []
        self._eval_labels: list[torch.Tensor] = []
        self._eval_index: list[torch.Tensor] = []
        self._eval_unreadable: list[torch.Tensor] = []
        # The test's unreadable videos (data.bad_video=skip): {"count", "total", "paths"};
        # see unreadable_summary.
        self.unreadable: dict = {}
        # The last test's (index [N], scores [N, C], labels [N], unreadable [N]) with keep_test_scores.
        self.test_scores: tuple[torch.Tensor, ...] = ()

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
        if self._prompt_tokens is None or self._prompt_tokens[0][0].device != self.device:
            self._prompt_tokens = self.tokenize_batches(self.prompts)
        feats = self.encode_tokens(self._prompt_tokens)  # [n_templates * C, E]
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
        """``[B, V, T, 3, H, W]`` (or ``[B, T, 3, H, W]``) -> class probabilities ``[B, C]`` averaged
        over views."""
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
            ids, remap = self._train_class_remap(logits.device)
            logits, labels = logits[:, ids], remap[labels]
        loss = F.cross_entropy(logits, labels, label_smoothing=self.cfg.optim.label_smoothing)
        acc = (logits.argmax(-1) == labels).float().mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=labels.numel())
        self.log("train/acc", acc, prog_bar=True, batch_size=labels.numel())
        return loss

    def _train_class_remap(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The base classes a base-to-novel run trains on, ``ids [C_b]``, and ``remap [C]``: a label's
        index among them (-100, ignored by the loss, for a novel class). Built once per device."""
        if self._train_classes is None or self._train_classes[0].device != device:
            ids = torch.as_tensor(self.train_class_ids, device=device)
            remap = torch.full((self.num_classes,), -100, dtype=torch.long, device=device)
            remap[ids] = torch.arange(len(ids), device=device)
            self._train_classes = (ids, remap)
        return self._train_classes

    def _eval_step(self, batch) -> None:
        scores = self.multiview_scores(batch["video"])  # [B, C]
        self._eval_scores.append(scores.detach().float())
        self._eval_labels.append(batch["label"].detach())
        self._eval_index.append(torch.as_tensor(batch["index"], device=scores.device))
        unreadable = batch.get("unreadable")  # True for a video that could not be read (a blank stand-in)
        unreadable = (
            torch.zeros(len(scores), dtype=torch.bool) if unreadable is None else torch.as_tensor(unreadable)
        )
        self._eval_unreadable.append(unreadable.to(scores.device, torch.bool))

    def _collect_eval(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(index ``[N]``, scores ``[N, C]``, labels ``[N]``, unreadable ``[N]`` bool) of every clip this
        evaluation saw, once each, sorted by index, on every rank.

        Under DDP the sampler pads the last ranks with repeats of the first clips; those repeats
        are dropped by clip index, so a padded clip is counted once, as on one process.
        """
        empty = torch.zeros(0, dtype=torch.long, device=self.device)
        scores = (
            torch.cat(self._eval_scores)
            if self._eval_scores
            else torch.zeros(0, self.num_classes, device=self.device)
        )
        labels = torch.cat(self._eval_labels) if self._eval_labels else empty
        index = torch.cat(self._eval_index) if self._eval_index else empty
        unreadable = torch.cat(self._eval_unreadable) if self._eval_unreadable else empty.bool()
        for kept in (self._eval_scores, self._eval_labels, self._eval_index, self._eval_unreadable):
            kept.clear()
        if self._trainer is not None and self._trainer.world_size > 1:
            # EpochSampler gives every rank ceil(n / world) clips, so the shapes agree across ranks.
            scores = self.all_gather(scores).flatten(0, 1)  # [W, n, C] -> [W*n, C]
            labels = self.all_gather(labels).flatten(0, 1)
            index = self.all_gather(index).flatten(0, 1)
            unreadable = self.all_gather(unreadable.long()).flatten(0, 1).bool()  # gloo gathers no bool
        return unique_by_index(index, scores, labels, unreadable)

    def _eval_metrics(self, stage: str) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        """(the figures ``<stage>/...``, scores ``[N, C]``, labels ``[N]``) of the evaluation just run.

        An unreadable video (``data.bad_video=skip``) is a miss for every accuracy: the figures are
        computed on the readable clips and scaled by their share (top-1, top-5), or count the clip in
        its class's total and never among its hits (mean-class, base/novel); ``<stage>/unreadable`` is
        how many there were.
        """
        index, scores, labels, unreadable = self._collect_eval()
        self._note_unreadable(stage, index, unreadable)
        self._last_unreadable = unreadable  # [N], for the confusion matrix
        if stage == "test" and self.keep_test_scores:
            self.test_scores = tuple(t.cpu() for t in (index, scores, labels, unreadable))
        if not labels.numel():
            return {}, scores, labels
        read = ~unreadable
        values = {f"{stage}/top1": 0.0, f"{stage}/top5": 0.0}
        if bool(read.any()):
            metrics = _metrics(self.num_classes, f"{stage}/").to(scores.device)
            metrics.update(scores[read], labels[read])
            values = {k: float(v) for k, v in metrics.compute().items()}
            share = float(read.sum()) / labels.numel()
            values[f"{stage}/top1"] *= share
            values[f"{stage}/top5"] *= share
        mean_class = MeanClassAccuracy(self.num_classes, sync_on_compute=False).to(scores.device)
        mean_class.update(scores, labels, miss=unreadable)
        values[f"{stage}/mean_class"] = float(mean_class.compute())
        values[f"{stage}/unreadable"] = float(unreadable.sum())
        split = self.base_novel_split
        if stage == "test" and split is not None:
            base = subset_accuracy(scores.cpu(), labels.cpu(), split[0], unreadable.cpu())
            novel = subset_accuracy(scores.cpu(), labels.cpu(), split[1], unreadable.cpu())
            values.update(
                {"test/base_top1": base, "test/novel_top1": novel, "test/hm_top1": harmonic_mean(base, novel)}
            )
        return values, scores, labels

    def _note_unreadable(self, stage: str, index: torch.Tensor, unreadable: torch.Tensor) -> None:
        if stage != "test":
            return
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        dataset = getattr(dm, "datasets", {}).get("test") if dm is not None else None
        rows = index[unreadable].tolist()
        paths = [dataset.records[i].path for i in rows] if dataset is not None else [f"row {i}" for i in rows]
        self.unreadable = {"count": len(rows), "total": int(index.numel()), "paths": paths}

    def write_test_scores(self, folder: Path) -> Path:
        dataset = self.trainer.datamodule.datasets["test"]
        return write_class_scores(folder, dataset.records, self.class_names, *self.test_scores)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        values, _, _ = self._eval_metrics("val")
        # Every rank computed the same numbers from the gathered scores: every rank logs the same value.
        self.log_dict(values, prog_bar=True, sync_dist=True)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        values, scores, labels = self._eval_metrics("test")
        self.log_dict(values, sync_dist=True)
        if self._trainer is not None and self._trainer.is_global_zero:
            run_dir = Path(self.cfg.paths.run_dir)
            save_confusion(
                confusion_counts(scores, labels, self._last_unreadable),
                self.class_names,
                run_dir / CONFUSION_FILE,
            )


def subset_accuracy(
    scores: torch.Tensor, labels: torch.Tensor, class_ids: list[int], miss: torch.Tensor | None = None
) -> float:
    """Top-1 among ``class_ids`` only, over the clips whose label is one of them (base-to-novel protocol);
    a clip marked in ``miss`` ``[N]`` is wrong whatever its scores."""
    ids = torch.as_tensor(class_ids)
    keep = torch.isin(labels, ids)
    if not keep.any():
        return 0.0
    pred = ids[scores[keep][:, ids].argmax(-1)]
    hit = pred == labels[keep]
    if miss is not None:
        hit &= ~miss[keep]
    return hit.float().mean().item()


def confusion_counts(scores: torch.Tensor, labels: torch.Tensor, unreadable: torch.Tensor) -> torch.Tensor:
    """``[C, C + 1]``: row = true class, column = predicted class; the last column counts the clips
    whose video could not be read (no prediction)."""
    num_classes = scores.shape[1]
    out = torch.zeros(num_classes, num_classes + 1, dtype=torch.long)
    scores, labels, unreadable = scores.cpu(), labels.cpu(), unreadable.cpu()
    if labels.numel():
        read = ~unreadable
        confusion = MulticlassConfusionMatrix(num_classes, sync_on_compute=False)
        confusion.update(scores[read], labels[read])
        out[:, :num_classes] = confusion.compute()
        out[:, num_classes] = torch.bincount(labels[unreadable], minlength=num_classes)
    return out


CONFUSION_FILE = "confusion_matrix.csv"  # in the run folder, written by every recognition test
CONFUSION_CORNER = "true\\pred"  # the header's first cell


def save_confusion(confusion: torch.Tensor, class_names: list[str], path: Path) -> Path:
    """Rows: true class, columns: predicted class, then ``unreadable`` (videos that could not be read).
    A class name with a comma or a quote is quoted (CSV), so :func:`read_confusion` reads it back."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([CONFUSION_CORNER, *class_names, "unreadable"])
    for name, row in zip(class_names, confusion.tolist()):
        writer.writerow([name, *(int(v) for v in row)])
    return atomic_write(path, buffer.getvalue())


def read_confusion(path: Path) -> tuple[list[str], torch.Tensor]:
    """What :func:`save_confusion` wrote: the class names and the counts ``[C, C + 1]``."""
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))
    if header[:1] != [CONFUSION_CORNER] or any(len(r) != len(header) for r in rows):
        raise ValueError(f"{path} is not a confusion matrix written by save_confusion")
    return [r[0] for r in rows], torch.tensor([[int(v) for v in r[1:]] for r in rows], dtype=torch.long)
