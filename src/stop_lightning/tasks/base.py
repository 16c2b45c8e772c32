"""What recognition and retrieval share: the STOP video model on a frozen CLIP, tokenisation,
optimiser, and checkpoints that hold only what trains.

A checkpoint stores the resolved config (a plain dict) and the CLIP source with a hash of its
config; loading rebuilds the frozen CLIP from that source and fills in the trained weights, so a
ViT-B/32 run saves a few MB instead of 600 MB of frozen weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel

from stop_lightning.errors import UserError
from stop_lightning.models.backbone import ClipBundle, load_clip
from stop_lightning.models.video_encoder import STOPVideoModel
from stop_lightning.tasks.optim import build_optimizer

log = logging.getLogger(__name__)


class CheckpointMismatchError(UserError, RuntimeError):
    """A checkpoint that does not fit the model being built."""


def unique_by_index(index: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One row per distinct ``index`` ``[N]``, sorted by index: drops the repeats a sampler pads with.

    Returns ``(index, *tensors)``, each ``[N_unique, ...]``.
    """
    order = torch.argsort(index, stable=True)
    index = index[order]
    keep = torch.ones_like(index, dtype=torch.bool)
    keep[1:] = index[1:] != index[:-1]
    return (index[keep], *(t[order][keep] for t in tensors))


def frozen_prefixes(module: torch.nn.Module) -> list[str]:
    """The state-dict prefixes of the frozen CLIP (every HuggingFace model) inside ``module``."""
    return [name + "." for name, sub in module.named_modules() if isinstance(sub, PreTrainedModel)]


def as_plain_dict(cfg: DictConfig | dict) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


class VideoTaskModule(L.LightningModule):
    """Base LightningModule. Subclasses implement the steps; this class owns the model.

    Everything a task needs beyond the config arrives through its constructor: ``inputs(cfg,
    datamodule)`` reads it from a set-up DataModule for training, ``saved_inputs(hparams)`` from a
    checkpoint's ``hyper_parameters`` (a subclass saves each input with ``save_hyperparameters``).
    """

    @classmethod
    def inputs(cls, cfg: DictConfig, datamodule: Any) -> dict[str, Any]:
        """Constructor arguments (besides ``cfg`` and ``bundle``) read from a set-up DataModule."""
        return {}

    @classmethod
    def saved_inputs(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        """The same arguments read back from a checkpoint; ``KeyError(name)`` when one is missing."""
        return {}

    def __init__(self, cfg: dict, bundle: ClipBundle | None = None) -> None:
        super().__init__()
        cfg = as_plain_dict(cfg)
        self.save_hyperparameters({"cfg": cfg}, ignore=["bundle"])
        self.cfg = OmegaConf.create(cfg)
        if bundle is None:
            bundle = load_clip(self.cfg.model.clip, self.cfg.paths.cache_dir)
        self.tokenizer = bundle.tokenizer
        self.clip_source = {"source": bundle.source, "config_hash": bundle.config_hash}
        self.model = STOPVideoModel(self.cfg.model, bundle.model, self.cfg.data.num_frames)
        trainable, frozen = self.model.trainable_parameter_count()
        self.num_trainable, self.num_frozen = trainable, frozen
        # `eval --dump`: when set, the test keeps its raw scores for write_test_scores.
        self.keep_test_scores = False
        log.info(
            "parameters: %s trainable, %s frozen (%.3f%%)",
            f"{trainable:,}",
            f"{frozen:,}",
            100 * trainable / max(1, trainable + frozen),
        )

    # ---------------------------------------------------------------- text
    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions or class prompts -> (input_ids, attention_mask) ``[N, S]``, S <= max_text_tokens,
        on the model's device. The prompted text encoder's host work (checking the captions, dropping
        the padding after the batch's last end-of-text) is done here, on the CPU, so that its forward
        never waits for the device (``PromptedTextEncoder.prepare``)."""
        if self.tokenizer is None:
            raise RuntimeError(
                f"the CLIP at '{self.clip_source['source']}' has no tokenizer files; text features need one "
                "(save a CLIPTokenizer next to the weights)"
            )
        enc = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.cfg.data.max_text_tokens,
            return_tensors="pt",
        )
        ids, mask = enc["input_ids"], enc["attention_mask"]  # [N, max_text_tokens]
        if self.model.text_encoder is not None:
            ids, mask = self.model.text_encoder.prepare(ids, mask)  # [N, S]
        return ids.to(self.device), mask.to(self.device)

    def tokenize_batches(
        self, texts: list[str], batch_size: int = 256
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`tokenize` in chunks: ``[(input_ids, attention_mask)]``, each ``[n, S]``."""
        starts = range(0, len(texts), batch_size)
        return [self.tokenize(texts[start : start + batch_size]) for start in starts]

    def encode_tokens(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """L2-normalised text features ``[N, E]`` of :meth:`tokenize_batches`' chunks."""
        feats = [self.model.encode_text(ids, mask) for ids, mask in batches]
        return torch.nn.functional.normalize(torch.cat(feats).float(), dim=-1)

    def encode_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised text features ``[N, E]``."""
        return self.encode_tokens(self.tokenize_batches(texts, batch_size))

    def encode_videos(
        self, video: torch.Tensor, frame_mask: torch.Tensor | None = None, padded_frames: bool | None = None
    ):
        """``[B, T, 3, H, W]`` (and ``frame_mask [B, T]``, with the batch's ``padded_frames``) ->
        (L2-normalised ``[B, E]``, the model's full output)."""
        out = self.model(video, frame_mask, padded_frames)
        return torch.nn.functional.normalize(out.embeds.float(), dim=-1), out

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    # ---------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        trainer = self.trainer
        total = int(trainer.estimated_stepping_batches) if trainer is not None else 1
        opt = build_optimizer(self, self.cfg.optim, total)  # the model and any head
        if opt is None:
            raise RuntimeError(
                f"preset '{self.cfg.model.preset}' has nothing to train; run `stop-lightning eval` instead "
                "(or choose a preset with prompts, e.g. model.preset=stop)"
            )
        return opt

    def on_train_start(self) -> None:
        self.log_dict(
            {"params/trainable": float(self.num_trainable), "params/frozen": float(self.num_frozen)},
            sync_dist=True,  # the same on every rank
        )

    def write_test_scores(self, folder: Path) -> Path:
        """Write the last test's raw scores into ``folder`` (``eval --dump``; the task's format is in
        :mod:`stop_lightning.tasks.scores_dump`); needs ``keep_test_scores`` set before the test."""
        raise UserError(f"task {self.cfg.task.name} cannot write its test scores (eval --dump)")

    # ---------------------------------------------------------------- checkpoints
    def _frozen_prefixes(self) -> list[str]:
        return frozen_prefixes(self)

    def _is_frozen_key(self, key: str, prefixes: list[str]) -> bool:
        return any(key.startswith(p) for p in prefixes)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        prefixes = self._frozen_prefixes()
        state = checkpoint["state_dict"]
        checkpoint["state_dict"] = {k: v for k, v in state.items() if not self._is_frozen_key(k, prefixes)}
        checkpoint.setdefault("stop_lightning", {}).update(
            clip=dict(self.clip_source),
            task=self.cfg.task.name,
            dropped_frozen_tensors=len(state) - len(checkpoint["state_dict"]),
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("stop_lightning", {}).get("clip")
        if meta and meta.get("config_hash") != self.clip_source["config_hash"]:
            raise CheckpointMismatchError(
                f"this checkpoint was trained on the CLIP '{meta.get('source')}' (config hash "
                f"{str(meta.get('config_hash'))[:12]}) "
                f"but the model being built uses '{self.clip_source['source']}' "
                f"(hash {self.clip_source['config_hash'][:12]}); "
                "set model.clip.source to the checkpoint's CLIP"
            )

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Accept checkpoints without the frozen CLIP tensors; anything else missing is an error."""
        prefixes = self._frozen_prefixes()
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict and not self._is_frozen_key(k, prefixes)]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise CheckpointMismatchError(
                "checkpoint does not match the model built from its config: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
        for key, value in state_dict.items():
            if key in own and own[key].shape != value.shape:
                raise CheckpointMismatchError(
                    f"checkpoint tensor '{key}' has shape {tuple(value.shape)} but the model expects "
                    f"{tuple(own[key].shape)}: it was made for another CLIP size or prompt configuration"
                )
        return super().load_state_dict(state_dict, strict=False, assign=assign)
