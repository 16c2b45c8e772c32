"""STOP on a frozen HuggingFace CLIP: the video model the Lightning tasks train.

The CLIP vision tower runs stock; hooks change what flows through it:

- ``embeddings.patch_embedding`` (forward hook): spatial prompts, ``+ conv(alpha*p*(1+m))``.
- ``pre_layrnorm`` (forward hook): temporal prompts are generated from the patch tokens;
  K prompt slots are inserted per frame, ``[CLS, slots, patches]``; with global prompts the
  ``B*T`` frame sequences become one sequence per video ``[G, frame_1, ..., frame_T]``.
- every encoder layer (forward pre-hook): the slots get that layer's local prompts plus the
  temporal prompts (replaced, not accumulated), VoP-C's context-specific tokens in the last slots
  when those are on (``video_prompts.py``), the global slots get that layer's global
  tokens, and the video's block layout is passed to the attention (per-frame + global
  attention, ``global_prompts.video_block_attention``; a block mask when that is switched off).
  With VoP-F (``model.function_prompts``) the pre-hook of layer K^s + 1 joins each clip's frames
  into one sequence (slots dropped, frame position added, video-level prompts in front, padded
  frames masked out as keys), and the deep layers' pre-hooks put in their video-level prompts.
- the last encoder layer (forward hook): the global tokens (or VoP-F's video-level prompts) are put
  aside and the sequence goes back to ``[B*T, S, D]``, so CLIP's own pooling still reads each
  frame's CLS at position 0.

:meth:`STOPVideoModel.remove_hooks` detaches all of them and CLIP is the stock model again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stop_lightning.models.adapters import attach_adapters
from stop_lightning.models.aggregation import VideoAggregator
from stop_lightning.models.checkpointing import CheckpointedLayers
from stop_lightning.models.global_prompts import (
    GlobalPrompts,
    attention_mask,
    base_attention_implementation,
    block_attention_mask,
    restore_attention,
    use_video_block_attention,
    video_block_attention_active,
)
from stop_lightning.models.hooks import HookSet, freeze, trainable_parameter_count, vision_parts
from stop_lightning.models.layouts import LayoutCache, keep_factors
from stop_lightning.models.shared_latent import SharedPromptSpace
from stop_lightning.models.spatial import SpatialPrompter
from stop_lightning.models.temporal import TemporalPrompter
from stop_lightning.models.text_prompts import PromptedTextEncoder
from stop_lightning.models.video_prompts import ContextPrompts, FunctionPrompts
from stop_lightning.schema import ConfigError, ModelConfig


@dataclass
class VideoOutput:
    embeds: torch.Tensor  # [B, E] video features after the visual projection, not normalised
    frame_embeds: torch.Tensor  # [B, T, E] projected frame CLS features
    frame_weights: torch.Tensor | None = None  # [B, T] frame variation w (temporal prompts on)
    spatial_mask: torch.Tensor | None = None  # [B, T, g, g] top-k patch mask (spatial prompts on)


@dataclass
class _ForwardState:
    """What the hooks of one forward pass share; discarded after it."""

    batch: int
    frames: int
    local: tuple[torch.Tensor, ...] | None = None  # per layer [T or 1, K, D]
    global_tokens: tuple[torch.Tensor, ...] | None = None  # per layer [G, D]
    temporal: torch.Tensor | None = None  # [B, T, K, D], alpha and (1 + w) applied
    weights: torch.Tensor | None = None  # [B, T]
    frame_mask: torch.Tensor | None = None  # [B, T] True: a real frame (VoP-C and VoP-F skip padded ones)
    # [1, 1, G + T*S, G + T*S] (block-mask fallback) or [B, 1, 1, K + T*S] (VoP-F with padded frames)
    attention_mask: torch.Tensor | None = None
    video_blocks: tuple[int, int, int] | None = None  # (G, T, S) for video_block_attention
    global_out: torch.Tensor | None = None  # [B, G, D] last layer
    slot_out: torch.Tensor | None = None  # [B*T, K, D] last layer


class LocalPrompts(nn.Module):
    """Deep local visual prompts: K learnable tokens per layer. ``[L, frames, K, D]``: ``frames = 1``, the
    same for every frame; ``frames = T``, each frame position its own (VoP-P, ``local_prompts.per_frame``).
    ``specific`` (< K) of the K tokens position-specific, the first ``K - specific`` shared by every frame
    (VoP-P: 4 of 8)."""

    no_weight_decay = ("tokens", "frame_tokens")  # inputs of the frozen layers

    def __init__(
        self,
        layers: int,
        num_tokens: int,
        width: int,
        init_std: float,
        frames: int = 1,
        specific: int | None = None,
    ):
        super().__init__()
        specific = num_tokens if specific is None or frames == 1 else specific
        self.frame_tokens: nn.Parameter | None = None
        if specific == num_tokens:  # all shared (frames = 1) or all position-specific
            self.tokens = nn.Parameter(torch.randn(layers, frames, num_tokens, width) * init_std)
        else:
            self.tokens = nn.Parameter(torch.randn(layers, 1, num_tokens - specific, width) * init_std)
            self.frame_tokens = nn.Parameter(torch.randn(layers, frames, specific, width) * init_std)

    def forward(self) -> torch.Tensor:
        if self.frame_tokens is None:
            return self.tokens
        frames = self.frame_tokens.shape[1]
        # [L, 1, K - P, D] + [L, T, P, D] -> [L, T, K, D]
        return torch.cat([self.tokens.expand(-1, frames, -1, -1), self.frame_tokens], dim=2)


def _depth(value: int, layers: int, key: str) -> int:
    if value == -1:
        return layers
    if not 1 <= value <= layers:
        raise ConfigError(f"{key} = {value}: expected -1 (all) or 1..{layers} (the vision tower's layers)")
    return value


def _replace_layer_inputs(
    args: tuple, kwargs: dict, hidden: torch.Tensor, mask: torch.Tensor | None
) -> tuple[tuple, dict]:
    """New (args, kwargs) for ``layer(hidden_states, attention_mask, **kw)`` however it was called."""
    args, kwargs = list(args), dict(kwargs)
    if args:
        args[0] = hidden
    else:
        kwargs["hidden_states"] = hidden
    if mask is not None:
        if len(args) >= 2:
            args[1] = mask
        else:
            kwargs["attention_mask"] = mask
    return tuple(args), kwargs


class STOPVideoModel(nn.Module):
    """Frozen CLIP + STOP prompts: ``forward(video [B, T, 3, H, W]) -> VideoOutput``.

    Args:
        model_cfg: the ``model`` section of the config (``ModelConfig`` fields; DictConfig or dataclass).
        clip: a HuggingFace ``CLIPModel``; frozen here and kept in eval mode.
        num_frames: T of training clips (sizes the T-dependent parts: shared ``transformer`` prompts,
            MSA positions).
    """

    def __init__(self, model_cfg: ModelConfig, clip: nn.Module, num_frames: int):
        super().__init__()
        cfg = self.cfg = model_cfg
        self.clip = freeze(clip)
        self.parts = vision_parts(clip)
        vision = clip.config.vision_config
        text = clip.config.text_config
        self.width, self.layers = int(vision.hidden_size), int(vision.num_hidden_layers)
        self.grid = int(vision.image_size) // int(vision.patch_size)
        self.num_patches = self.grid * self.grid
        self.num_frames = int(num_frames)
        self._attn_config = self.parts.layers[0].self_attn.config  # the config CLIP's attention dispatches on
        self.attn_implementation = base_attention_implementation(self._attn_config)
        self.hooks = HookSet()
        self._state: _ForwardState | None = None
        self._layouts = LayoutCache()  # masks and layouts by shape, device, dtype

        local_on, temporal_on = bool(cfg.local_prompts.enabled), bool(cfg.temporal.enabled)
        if local_on and temporal_on and cfg.local_prompts.num_tokens != cfg.temporal.num_tokens:
            raise ConfigError(
                f"temporal prompts are added to the local prompts, so their counts must match: "
                f"model.local_prompts.num_tokens = {cfg.local_prompts.num_tokens}, "
                f"model.temporal.num_tokens = {cfg.temporal.num_tokens}"
            )
        self.num_slots = (
            int(cfg.local_prompts.num_tokens if local_on else cfg.temporal.num_tokens)
            if (local_on or temporal_on)
            else 0
        )
        # VoP-F: the first split_layer layers attend within each frame (all of them without VoP-F).
        split = self._check_vop(cfg)
        self.split_layer = split if cfg.function_prompts.enabled else self.layers
        self.local_depth = (
            _depth(int(cfg.local_prompts.depth), self.split_layer, "model.local_prompts.depth")
            if local_on
            else 0
        )
        self.temporal_depth = (
            _depth(int(cfg.temporal.depth), self.layers, "model.temporal.depth") if temporal_on else 0
        )
        self.slot_depth = max(self.local_depth, self.temporal_depth)

        # Local prompts come from the shared latent space when there is one, else are our own.
        self.shared_space: nn.Module | None = None
        self.local_prompts: LocalPrompts | None = None
        if cfg.shared_latent != "none" and (local_on or cfg.text_prompts.enabled):
            self.shared_space = SharedPromptSpace(
                cfg,
                self.width,
                self.layers,
                int(text.hidden_size),
                int(text.num_hidden_layers),
                self.num_frames,
            )
        elif local_on:
            frames = self.num_frames if cfg.local_prompts.per_frame else 1
            specific = int(cfg.local_prompts.per_frame_tokens)
            if specific != -1 and not cfg.local_prompts.per_frame:
                raise ConfigError(
                    "model.local_prompts.per_frame_tokens counts position-specific tokens: "
                    "set model.local_prompts.per_frame=true or per_frame_tokens=-1"
                )
            if specific == -1:
                specific = self.num_slots
            if not 1 <= specific <= self.num_slots:
                raise ConfigError(
                    f"model.local_prompts.per_frame_tokens = {specific}: expected -1 (all) or "
                    f"1..{self.num_slots} (the local prompt tokens per layer)"
                )
            context_tokens = int(cfg.context_prompts.num_tokens) if cfg.context_prompts.enabled else 0
            self.local_prompts = LocalPrompts(
                self.local_depth,
                self.num_slots - context_tokens,  # VoP-C: the last slots are context-specific
                self.width,
                float(cfg.local_prompts.init_std),
                frames,
                specific,
            )
        if cfg.local_prompts.per_frame and self.local_prompts is None:
            raise ConfigError(
                "model.local_prompts.per_frame needs the model's own local prompts: "
                "set model.local_prompts.enabled=true "
                "and model.shared_latent=none (the shared space makes its own)"
            )
        self.context_prompts = (
            ContextPrompts(cfg.context_prompts, self.width) if cfg.context_prompts.enabled else None
        )
        self.function_prompts = (
            FunctionPrompts(
                self.split_layer,
                self.layers,
                self.num_slots,
                self.width,
                self.num_frames,
                float(cfg.local_prompts.init_std),
            )
            if cfg.function_prompts.enabled
            else None
        )

        self.spatial = SpatialPrompter(cfg.spatial, self.parts) if cfg.spatial.enabled else None
        self.temporal = TemporalPrompter(cfg.temporal, self.width, self.num_patches) if temporal_on else None
        self.global_prompts = (
            GlobalPrompts(cfg.global_prompts, self.layers, self.width) if cfg.global_prompts.enabled else None
        )
        self.num_global = self.global_prompts.num_tokens if self.global_prompts is not None else 0
        if self.global_prompts is not None:
            block_attention_mask(
                1, 1, 1, self.attn_implementation
            )  # fail now on an attention backend without masks
            # Per-frame + global attention instead of one masked attention over the whole video (same math).
            use_video_block_attention(self._attn_config)

        self.vision_adapters: nn.ModuleList | None = None
        if cfg.adapter.enabled and cfg.adapter.vision:
            self.vision_adapters = attach_adapters(self.parts.layers, self.width, cfg.adapter, self.hooks)

        self.text_encoder: nn.Module | None = None
        if self.text_side_trains:
            self.text_encoder = PromptedTextEncoder(clip, cfg, self.hooks, trim_padding=True)

        self.aggregator = VideoAggregator(
            cfg.aggregation, int(clip.config.projection_dim), self.num_frames, self.global_prompts is not None
        )
        self._attach_hooks()
        self._checkpointed = CheckpointedLayers(
            self.parts.layers if cfg.clip.activation_checkpointing else ()
        )

    def _check_vop(self, cfg: ModelConfig) -> int:
        """VoP-C / VoP-F settings this model can build (one ConfigError naming the key otherwise); returns
        VoP-F's split layer K^s."""
        for key in ("context_prompts", "function_prompts"):
            if not getattr(cfg, key).enabled:
                continue
            if not cfg.local_prompts.enabled or cfg.shared_latent != "none":
                raise ConfigError(
                    f"model.{key} works with the model's own local prompt slots: "
                    f"set model.local_prompts.enabled=true and model.shared_latent=none"
                )
        if cfg.context_prompts.enabled:
            P, K = int(cfg.context_prompts.num_tokens), int(cfg.local_prompts.num_tokens)
            if not 1 <= P <= K:
                raise ConfigError(
                    f"model.context_prompts.num_tokens = {P}: expected 1..{K} "
                    f"(of model.local_prompts.num_tokens, the prompt tokens per layer)"
                )
            if cfg.local_prompts.per_frame:
                raise ConfigError(
                    "model.context_prompts and model.local_prompts.per_frame both make prompts per frame; "
                    "switch one off"
                )
        split = int(cfg.function_prompts.split_layer)
        if cfg.function_prompts.enabled:
            if not 1 <= split < self.layers:
                raise ConfigError(
                    f"model.function_prompts.split_layer = {split}: expected 1..{self.layers - 1} "
                    f"(the vision tower has {self.layers} layers; the layers after it attend across frames)"
                )
            for key in ("temporal", "global_prompts"):
                if getattr(cfg, key).enabled:
                    raise ConfigError(
                        f"model.function_prompts joins each clip's frames in the deep layers; "
                        f"model.{key} is not built for that: set model.{key}.enabled=false"
                    )
            depth = int(cfg.local_prompts.depth)
            if depth > split:
                raise ConfigError(
                    f"model.local_prompts.depth = {depth}: with model.function_prompts the local prompts "
                    f"serve layers 1..{split} (split_layer); use -1 or 1..{split}"
                )
        return split

    # -- properties ------------------------------------------------------------------------------

    @property
    def text_side_trains(self) -> bool:
        return bool(self.cfg.text_prompts.enabled) or bool(self.cfg.adapter.enabled and self.cfg.adapter.text)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.detach().exp()

    def trainable_parameter_count(self) -> tuple[int, int]:
        """(trainable, frozen) parameters."""
        return trainable_parameter_count(self)

    def train(self, mode: bool = True) -> STOPVideoModel:
        super().train(mode)
        self.clip.eval()  # frozen CLIP never runs dropout, whatever Lightning asks
        return self

    # -- hooks -----------------------------------------------------------------------------------

    def _attach_hooks(self) -> None:
        if self.spatial is not None:
            self.spatial.attach(
                self.parts, self.hooks, lambda: self._state.frames if self._state is not None else None
            )
        if not (self.num_slots or self.num_global):
            return
        self.hooks.forward(self.parts.pre_layernorm, self._insert_slots)
        for index, layer in enumerate(self.parts.layers):
            self.hooks.forward_pre(layer, self._enter_layer(index), with_kwargs=True)
        self.hooks.forward(self.parts.layers[-1], self._leave_encoder)

    def remove_hooks(self) -> None:
        """Detach every hook (prompts, adapters, text prompts): ``self.clip`` is stock CLIP again."""
        self.hooks.remove()
        self._checkpointed.restore()
        restore_attention(self._attn_config)

    def _insert_slots(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        st = self._state
        if st is None:  # CLIP called directly, not through this model
            return output
        B, T, D, K, G = st.batch, st.frames, self.width, self.num_slots, self.num_global
        if self.temporal is not None:
            patches = output[:, 1:].reshape(B, T, self.num_patches, D)  # [B*T, 1+N, D] -> [B, T, N, D]
            mask = self.spatial.last_mask.flatten(2) if self.spatial is not None else None  # [B, T, N]
            st.temporal, st.weights = self.temporal(patches, mask)
        if K:
            slots = output.new_zeros(B * T, K, D)  # filled by every prompted layer's pre-hook
            output = torch.cat([output[:, :1], slots, output[:, 1:]], dim=1)  # [B*T, 1+K+N, D]
        if G:
            S = output.shape[1]
            if video_block_attention_active(self._attn_config):
                st.video_blocks = (G, T, S)
            else:  # CLIP's attention was switched after this model was built: the mask still works
                implementation = base_attention_implementation(self._attn_config)
                st.attention_mask = self._layouts.get(
                    ("blocks", G, T, S, implementation),
                    output.device,
                    torch.bool,
                    lambda device, _: block_attention_mask(G, T, S, implementation, device),
                )
            output = F.pad(output.reshape(B, T * S, D), (0, 0, G, 0))  # zero globals: [B, G + T*S, D]
        return output

    def _write_prompts(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """The prompt slots and global tokens entering ``layer``, written in whole-tensor operations:
        ``hidden * keep + update`` with ``keep`` (cached per shape: 0 at the slots, and at the globals
        where the layer replaces them) and ``update`` (the slot tokens padded to frame length, the
        layer's global tokens in front). The same numbers as slicing the sequence apart and
        concatenating it back (``tests/models/test_kernel_paths.py``), in 3 kernels instead of ~6,
        and ~3 instead of ~8 in the backward.
        ``hidden [B, G + T*S, D]`` (with global prompts) or ``[B*T, S, D]`` -> the same shape."""
        st = self._state
        B, T, K, G = st.batch, st.frames, self.num_slots, self.num_global
        S = (hidden.shape[1] - G) // T if G else hidden.shape[1]
        D = hidden.shape[-1]
        written = K if layer < self.slot_depth else 0
        own = (
            self.global_prompts.at_layer(layer, None, B, st.global_tokens[layer]).to(hidden.dtype)
            if G
            else None
        )  # [B, G, D]
        if written:
            frames = hidden[:, G:].unflatten(1, (T, S)) if G else hidden.unflatten(0, (B, T))  # [B, T, S, D]
            slots = F.pad(self._slot_tokens(layer, frames), (0, 0, 1, S - 1 - K))  # -> [B, T, S, D]
            update = slots.view(hidden.shape[0], -1, D)  # [B, T*S, D] or [B*T, S, D]
            update = torch.cat([own, update], dim=1) if G else update
        else:  # only the global tokens in this layer
            update = F.pad(own, (0, 0, 0, T * S))  # [B, G, D] -> [B, G + T*S, D]
        # Layer 0 inserts the global tokens; later ones add to the carried ones ("add") or replace them.
        keep_globals = bool(G) and layer > 0 and self.global_prompts.per_layer == "add"
        keep = self._layouts.get(
            ("keep", G, T if G else 1, S, written, keep_globals),
            hidden.device,
            hidden.dtype,
            keep_factors(G, T if G else 1, S, written, keep_globals),
        )  # [G + T*S, 1] or [S, 1]
        return torch.addcmul(update, hidden, keep)

    def _slot_tokens(self, layer: int, frames: torch.Tensor) -> torch.Tensor:
        """Prompt slots entering ``layer``: local tokens + alpha * q * (1 + w) + VoP's context and function
        terms, from ``frames [B, T, S, D]`` (the frames entering the layer). ``-> [B, T, K, D]``."""
        st = self._state
        B, T, K, D = st.batch, st.frames, self.num_slots, self.width
        like = frames
        tokens = None  # the caller asks only for a layer with local or temporal prompts
        if layer < self.local_depth:
            tokens = st.local[layer].to(like.dtype)  # [T or 1, K, D]
            if self.context_prompts is not None:
                cls = frames[:, :, 0]  # [B, T, D]: the frames' CLS tokens entering this layer
                context = self.context_prompts(cls, st.frame_mask).to(like.dtype)  # [B, T, P, D]
                tokens = torch.cat([tokens.expand(B, T, -1, D), context], dim=2)  # [B, T, K - P + P, D]
        if layer < self.temporal_depth:
            temporal = st.temporal.to(like.dtype)  # [B, T, K, D]
            tokens = temporal if tokens is None else tokens + temporal
        return tokens.expand(B, T, K, D)  # [T or 1, K, D] or [B, T, K, D] -> [B, T, K, D]

    def _enter_layer(self, index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            st = self._state
            if st is None:
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            K, G = self.num_slots, self.num_global
            if index >= self.split_layer:  # VoP-F's deep layers: one sequence per video
                if index == self.split_layer:
                    hidden = self._join_frames(hidden)
                hidden = self.function_prompts.at_layer(index, hidden)
                return _replace_layer_inputs(args, kwargs, hidden, st.attention_mask)
            if G or (K and index < self.slot_depth):
                hidden = self._write_prompts(index, hidden)
            args, kwargs = _replace_layer_inputs(args, kwargs, hidden, st.attention_mask)
            if st.video_blocks is not None:
                kwargs["video_blocks"] = (
                    st.video_blocks
                )  # reaches the attention function through the layer's **kwargs
            return args, kwargs

        return hook

    def _join_frames(self, hidden: torch.Tensor) -> torch.Tensor:
        """VoP-F, entering layer K^s + 1: ``[B*T, 1 + K + N, D]`` -> ``[B, K + T*(1 + N), D]`` (the frames'
        prompt slots dropped); with padded frames, a key mask that keeps them out of the attention."""
        st, K = self._state, self.num_slots
        frames = torch.cat([hidden[:, :1], hidden[:, 1 + K :]], dim=1)  # [B*T, 1 + N, D]
        if st.frame_mask is not None:
            allowed = self.function_prompts.key_mask(st.frame_mask, frames.shape[1])  # [B, 1, 1, K + T*(1+N)]
            st.attention_mask = attention_mask(
                allowed,
                base_attention_implementation(self._attn_config),
                "function prompts with padded frames",
            )
        return self.function_prompts.join(frames, st.batch)

    def _leave_encoder(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        st = self._state
        if st is None:
            return output
        B, T, K, G = st.batch, st.frames, self.num_slots, self.num_global
        if self.function_prompts is not None:
            return self.function_prompts.split_frames(output, T)  # [B, K + T*S, D] -> [B*T, S, D]
        if G:
            st.global_out = output[:, :G]
            output = output[:, G:].reshape(B * T, -1, output.shape[-1])  # [B, G + T*S, D] -> [B*T, S, D]
        if K:
            st.slot_out = output[:, 1 : 1 + K]
        return output

    # -- forward ---------------------------------------------------------------------------------

    def _project(self, hidden: torch.Tensor) -> torch.Tensor:
        """CLIP's head on any token: post-LayerNorm then visual projection. ``[..., D] -> [..., E]``."""
        return self.parts.projection(self.parts.post_layernorm(hidden))

    def forward(
        self, video: torch.Tensor, frame_mask: torch.Tensor | None = None, padded_frames: bool | None = None
    ) -> VideoOutput:
        """``video [B, T, 3, H, W]`` (CLIP-normalised frames), optional ``frame_mask [B, T]`` ->
        :class:`VideoOutput`. ``padded_frames``: whether some frame of ``frame_mask`` is padding, as the
        host knew it before the mask moved to the device (the DataModule's batch key of that name);
        ``None`` reads it from the mask, which on a GPU makes the host wait for the device."""
        if video.dim() != 5:
            raise ValueError(f"expected a video batch [B, T, 3, H, W], got shape {tuple(video.shape)}")
        padded = None  # [B, T] bool for VoP-C / VoP-F when some frame is padding, else None
        if frame_mask is not None and (self.context_prompts is not None or self.function_prompts is not None):
            mask = frame_mask.to(video.device).bool()
            if padded_frames is None:
                padded_frames = not bool(mask.all())  # a host read: once here, not at every layer
            padded = mask if padded_frames else None
        return self._encode(video, frame_mask, padded)

    def _encode(
        self, video: torch.Tensor, frame_mask: torch.Tensor | None, padded: torch.Tensor | None
    ) -> VideoOutput:
        """:meth:`forward`'s tensor work, free of host synchronisation and data-dependent branches: the
        part ``trainer.compile`` compiles into one graph (:mod:`stop_lightning.models.compile`)."""
        B, T = video.shape[:2]
        st = self._state = _ForwardState(batch=B, frames=T, frame_mask=padded)
        try:
            local = None  # [L, T or 1, K, D]
            if self.shared_space is not None:
                visual, _ = self.shared_space()
                local = visual if self.local_depth else None
            elif self.local_prompts is not None:
                local = self.local_prompts()
            if local is not None:
                if local.shape[1] not in (1, T):
                    raise ValueError(f"local prompts are made for {local.shape[1]} frames, the clip has {T}")
                # Split once per forward: the layers' gradients come back as one stack, not a
                # zero-filled select_backward and an add per layer.
                st.local = local.unbind(0)
            if self.global_prompts is not None:
                st.global_tokens = self.global_prompts.tokens.unbind(0)  # per layer [G, D], as above
            image = self.clip.get_image_features(
                pixel_values=video.flatten(0, 1)
            )  # [B*T, 3, H, W] -> [B*T, E]
            frame_embeds = image.pooler_output.view(B, T, -1)  # [B, T, E]
            prompts = None
            if self.temporal is not None:
                prompts = self._project(st.slot_out).view(B, T, self.num_slots, -1)  # [B, T, K, E]
            globals_ = self._project(st.global_out) if self.num_global else None  # [B, G, E]
            mask = frame_mask.to(frame_embeds.device) if frame_mask is not None else None
            embeds = self.aggregator(frame_embeds, prompts, globals_, mask)
            return VideoOutput(
                embeds=embeds,
                frame_embeds=frame_embeds,
                frame_weights=st.weights,
                spatial_mask=self.spatial.last_mask if self.spatial is not None else None,
            )
        finally:
            self._state = None

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``input_ids [N, S]``, ``attention_mask [N, S]`` -> projected text features ``[N, E]``
        (not normalised)."""
        if self.text_encoder is None:
            return self.clip.get_text_features(
                input_ids=input_ids, attention_mask=attention_mask
            ).pooler_output
        text_prompts = None
        if self.shared_space is not None and self.cfg.text_prompts.enabled:
            _, text_prompts = self.shared_space()
        return self.text_encoder(input_ids, text_prompts)  # causal: no padding mask needed

    def extra_repr(self) -> str:
        trainable, frozen = self.trainable_parameter_count()
        return (
            f"frames={self.num_frames}, prompt_slots={self.num_slots}, global={self.num_global}, "
            f"trainable={trainable:,}, frozen={frozen:,}"
        )
