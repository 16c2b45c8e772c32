"""The shared latent space that ties the local visual prompts and the deep text prompts.

Both variants produce, from one learnable source, the visual local prompts of every vision
layer and the prefix/postfix text prompts of every text layer (docs/method.md, "DGL base"), so a
gradient from either tower reaches the same parameters.

``linear``
    a source parameter ``[K, L_v * D_v]``, read as K tokens per vision layer, *is* the visual
    prompts (the same for every frame, ``T_or_1 = 1``). Two maps, ``prefix`` and ``postfix``,
    turn it into text prompts: each is a ``Linear(D_v -> D_t)`` over the feature axis, shared by
    all layers, plus a ``Linear(K -> n)`` over the token axis only when the text prompt count
    ``n`` differs from K. Mapping the whole ``L_v * D_v`` vector with one dense layer would cost
    ``(L_v D_v)(L_t D_t)`` parameters (57M for ViT-B/32); per layer it is ``D_v D_t``.

``transformer``
    an embedding of ``P + Q + K*T`` tokens of size ``L_v * D_v`` (P prefix, Q postfix text
    tokens, K local tokens for each of T frames). The ``L_v * D_v`` vector of a token is read as
    one D_v-wide token per layer, and the tokens of one layer form one sequence: a batch of L_v
    sequences of ``P + Q + K*T`` tokens passes one pre-LN transformer layer of width D_v (heads
    ``D_v / 64``, MLP ``4 D_v`` with QuickGELU as in CLIP), shared by the layers. So within a layer
    text and visual tokens attend to each other, with no parameters spent on reshaping
    ``L_v * D_v`` down to ``D_v``. The visual part is the per-frame local prompts
    ``[L_v, T, K, D_v]``; the text part goes through an MLP ``D_v -> 2 D_v -> QuickGELU -> D_t``.

When the towers have different depths (ViT-L/14: 24 vision, 12 text layers), text layer ``j``
takes the tokens of vision layer ``floor(j * L_v / L_t)``; with equal depths that is layer ``j``.

Initialisation keeps a fresh model close to stock CLIP: the source/embedding is normal with
``local_prompts.init_std`` (0.02), and the residual branches of the shared transformer (attention
output and second MLP layer) start at zero, so at step 0 the transformer passes its input through.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import QuickGELUActivation

from stop_lightning.models.layers import attention_heads
from stop_lightning.schema import ModelConfig


def _text_layer_index(vision_layers: int, text_layers: int) -> torch.Tensor:
    """Vision layer each text layer takes its prompts from: ``[L_t]``."""
    return torch.div(torch.arange(text_layers) * vision_layers, text_layers, rounding_mode="floor")


class _TextPromptMap(nn.Module):
    """One of the two linear maps of the ``linear`` variant: ``[L, K, D_v] -> [L, n, D_t]``."""

    # Kept from the name rule this replaced (the path held "token"): the token-axis map does not decay.
    no_weight_decay = ("tokens",)

    def __init__(self, num_source: int, num_out: int, vision_width: int, text_width: int) -> None:
        super().__init__()
        self.tokens = nn.Linear(num_source, num_out) if num_out != num_source else nn.Identity()
        self.features = nn.Linear(vision_width, text_width)

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        x = self.tokens(source.transpose(1, 2)).transpose(1, 2)  # [L, K, D_v] -> [L, n, D_v]
        return self.features(x)  # [L, n, D_t]


class SharedPromptSpace(nn.Module):
    """One source for the visual local prompts and the deep text prompts.

    ``forward()`` returns ``(visual, text)``:

    - ``visual``: ``[L_v, T_or_1, K, D_v]`` local prompts per vision layer (``T_or_1`` is 1 for
      ``linear``, the same for every frame; ``num_frames`` for ``transformer``).
    - ``text``: ``[L_t, prefix + postfix, D_t]``, prefix tokens first, for ``PromptedTextEncoder``.
    """

    # The transformer variant's learnable input; the linear variant's ``source`` decays, as it always has.
    no_weight_decay = ("embedding",)

    def __init__(
        self,
        model_cfg: ModelConfig,
        vision_width: int,
        vision_layers: int,
        text_width: int,
        text_layers: int,
        num_frames: int,
    ) -> None:
        super().__init__()
        self.variant = model_cfg.shared_latent
        if self.variant not in ("linear", "transformer"):
            raise ValueError(
                f"SharedPromptSpace needs model.shared_latent = linear | transformer, got {self.variant!r}; "
                "with 'none' the towers keep their own prompts and no shared space is built"
            )
        self.num_tokens = model_cfg.local_prompts.num_tokens  # K
        self.num_prefix = model_cfg.text_prompts.prefix
        self.num_postfix = model_cfg.text_prompts.postfix
        self.vision_width, self.vision_layers = vision_width, vision_layers
        self.text_width, self.text_layers = text_width, text_layers
        self.num_frames = num_frames
        std = model_cfg.local_prompts.init_std
        self.register_buffer(
            "text_layer_index", _text_layer_index(vision_layers, text_layers), persistent=False
        )

        if self.variant == "linear":
            self.source = nn.Parameter(torch.randn(self.num_tokens, vision_layers * vision_width) * std)
            self.prefix_map = _TextPromptMap(self.num_tokens, self.num_prefix, vision_width, text_width)
            self.postfix_map = _TextPromptMap(self.num_tokens, self.num_postfix, vision_width, text_width)
        else:
            heads = attention_heads(vision_width)
            num_text = self.num_prefix + self.num_postfix
            self.embedding = nn.Parameter(
                torch.randn(num_text + self.num_tokens * num_frames, vision_layers * vision_width) * std
            )
            self.transformer = nn.TransformerEncoderLayer(
                d_model=vision_width,
                nhead=heads,
                dim_feedforward=4 * vision_width,
                dropout=0.0,
                activation=QuickGELUActivation(),
                batch_first=True,
                norm_first=True,
            )
            nn.init.zeros_(self.transformer.self_attn.out_proj.weight)
            nn.init.zeros_(self.transformer.self_attn.out_proj.bias)
            nn.init.zeros_(self.transformer.linear2.weight)
            nn.init.zeros_(self.transformer.linear2.bias)
            self.text_mlp = nn.Sequential(
                nn.Linear(vision_width, 2 * vision_width),
                QuickGELUActivation(),
                nn.Linear(2 * vision_width, text_width),
            )

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        L, D, K = self.vision_layers, self.vision_width, self.num_tokens
        if self.variant == "linear":
            source = self.source.view(K, L, D).transpose(0, 1)  # [K, L*D] -> [L, K, D]
            visual = source.unsqueeze(1)  # [L, 1, K, D]
            text = torch.cat([self.prefix_map(source), self.postfix_map(source)], dim=1)  # [L, P+Q, D_t]
        else:
            tokens = self.embedding.view(-1, L, D).transpose(0, 1)  # [P+Q+K*T, L*D] -> [L, P+Q+K*T, D]
            tokens = self.transformer(tokens)  # one sequence per layer
            num_text = self.num_prefix + self.num_postfix
            visual = tokens[:, num_text:].reshape(L, self.num_frames, K, D)  # [L, T, K, D]
            text = self.text_mlp(tokens[:, :num_text])  # [L, P+Q, D_t]
        return visual, text.index_select(0, self.text_layer_index)  # text: [L_t, P+Q, D_t]
