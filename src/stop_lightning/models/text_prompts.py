"""Deep text prompts on the HF CLIP text tower (docs/method.md, "DGL base"), applied through hooks.

Every text layer sees the caption with ``P`` prefix and ``Q`` postfix prompt tokens::

    [SOT, prefix_1..P, word_1..w, postfix_1..Q, EOT, pad...]      # length S + P + Q

- Prefix right after SOT, postfix right before EOT. The text tower is causal and pools at EOT,
  so tokens placed after EOT could never reach the caption's feature; before it they can.
- The prompt slots are *replaced* by the layer's own tokens before every layer (not
  accumulated): layer ``l`` sees ``prompts[l]``. Prompts carry no position embedding; caption
  tokens keep the positions ``0..S-1`` they had, so only ``S <= max_text_tokens`` positions are used.
- The stock tower still runs end to end: a forward hook on the embeddings widens the sequence,
  a pre-hook on each layer writes the prompt slots, the tower builds its causal mask from the
  widened embeddings (no padding mask: padding comes after EOT, which causal attention keeps from
  EOT's feature), and the feature is pooled here at the shifted EOT index ``EOT + P + Q``. The
  tower's own ``pooler_output`` reads the unshifted index from ``input_ids`` and is ignored.
- Nothing in :meth:`PromptedTextEncoder.forward` reads tensor values on the host (on a GPU that
  would make the host wait for the device every step): checking the captions and trimming their
  padding happen where they are tokenized, in :meth:`PromptedTextEncoder.prepare`.
- Hooks only act during :meth:`PromptedTextEncoder.forward`; any other call of the text tower
  (e.g. ``clip.get_text_features``) sees stock CLIP plus the adapters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stop_lightning.models.adapters import attach_adapters
from stop_lightning.models.hooks import HookSet, text_parts
from stop_lightning.schema import ModelConfig

NO_EOT = (
    "a caption has no end-of-text token, or has it at position 0; tokenize with the CLIP tokenizer, "
    "which starts each caption with start-of-text and ends it with end-of-text"
)


def _first_eot(input_ids: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """The pooling rule: ``[N, S]`` -> ``[N]``, 0 for a caption without end-of-text."""
    if eos_token_id is None:
        raise ValueError(
            "the CLIP text config has no eos_token_id, so the end-of-text position cannot be found; "
            "set text_config.eos_token_id to the tokenizer's eos_token_id"
        )
    if eos_token_id == 2:
        return input_ids.argmax(dim=-1)
    return (input_ids == eos_token_id).int().argmax(dim=-1)


def eot_positions(input_ids: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """Index of each caption's end-of-text token, by the rule the HF text tower pools with, computed
    on the ids' device without reading them on the host.

    ``input_ids``: ``[N, S]`` -> ``[N]``. Legacy configs (``eos_token_id == 2``) take the highest
    id, which is EOT in OpenAI's vocabulary; otherwise the first ``eos_token_id`` (the pad token
    may equal it). A caption without EOT, or with it at position 0, fails ``torch._assert_async``:
    at once on the CPU (``RuntimeError``), as a device-side assert on a GPU (the host does not wait
    for the check; the assert stops the process). :func:`checked_eot_positions` is the host's check,
    with the bad captions named.
    """
    eot = _first_eot(input_ids, eos_token_id)
    torch._assert_async((eot >= 1).all(), NO_EOT)
    return eot


def checked_eot_positions(input_ids: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """:func:`eot_positions` for CPU tensors, where captions are tokenized: a bad caption is a
    ``ValueError`` naming it. It reads the ids on the host (on a GPU that would wait for the device).
    ``[N, S]`` -> ``[N]``."""
    eot = _first_eot(input_ids, eos_token_id)
    if eos_token_id != 2:
        missing = (~(input_ids == eos_token_id).any(dim=-1)).nonzero().flatten()
        if missing.numel():
            raise ValueError(
                f"captions {missing.tolist()} have no end-of-text token (id {eos_token_id}); "
                "tokenize with the CLIP tokenizer, which appends it"
            )
    if (eot < 1).any():
        raise ValueError(
            "a caption has its end-of-text token at position 0; captions must start with start-of-text"
        )
    return eot


@dataclass
class PromptLayout:
    """Where caption tokens and prompt slots sit in the widened sequence (length ``S' = S + P + Q``)."""

    token_index: torch.Tensor  # [N, S'] caption position each slot copies (0 for prompt slots)
    is_prompt: torch.Tensor  # [N, S'] bool
    prompt_index: torch.Tensor  # [N, S'] row of the layer's [P+Q, D] prompts (0 for caption slots)
    pool_index: torch.Tensor  # [N] position of EOT in the widened sequence

    @classmethod
    def build(cls, eot: torch.Tensor, seq_len: int, num_prefix: int, num_postfix: int) -> PromptLayout:
        P, Q = num_prefix, num_postfix
        j = torch.arange(seq_len + P + Q, device=eot.device).unsqueeze(0)  # [1, S']
        e = eot.unsqueeze(1)  # [N, 1]
        is_prefix = (j >= 1) & (j <= P)
        is_postfix = (j >= P + e) & (j < P + Q + e)
        is_prompt = is_prefix | is_postfix
        token_index = torch.where(j == 0, 0, torch.where(j < P + e, j - P, j - P - Q))
        token_index = token_index.masked_fill(is_prompt, 0)
        prompt_index = torch.where(is_prefix, j - 1, j - e).masked_fill(
            ~is_prompt, 0
        )  # postfix: P + (j - P - e)
        return cls(token_index, is_prompt, prompt_index, eot + P + Q)

    def fill(self, hidden: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """Write one layer's ``prompts [P+Q, D]`` into the prompt slots of ``hidden [N, S', D]``."""
        slot_values = prompts.to(hidden.dtype)[self.prompt_index]  # [N, S', D]
        return torch.where(self.is_prompt.unsqueeze(-1), slot_values, hidden)


class PromptedTextEncoder(nn.Module):
    """CLIP text features with deep prefix/postfix prompts and adapters.

    ``forward(input_ids [N, S], text_prompts) -> [N, E]``: the projected EOT feature after the final
    LayerNorm and ``text_projection``, not normalised. It takes no padding mask: the tower runs
    causal, which gives EOT's feature the padding mask would (see :meth:`_encode`).

    ``text_prompts`` is ``[L_t, prefix + postfix, D_t]`` (prefix rows first), one set per text
    layer, e.g. the text half of :class:`SharedPromptSpace`. With ``None`` the encoder uses its
    own learnable prompts (``model.text_prompts.enabled`` and ``model.shared_latent == none``)
    or, with text prompts disabled, runs stock CLIP (plus adapters when enabled).

    ``trim_padding``: :meth:`prepare` drops the columns after the last EOT of the batch, on the host
    before the ids move to the model's device. Those are padding in every row and the tower is causal
    and pools at EOT, so the features are the same (fp32 rounding, ``tests/models/test_host_sync.py``);
    class prompts (~10 tokens padded to 32, re-encoded every training step) cost about half.
    :class:`~stop_lightning.models.video_encoder.STOPVideoModel` turns it on; off, every sequence
    keeps the padded length ``S + P + Q``. :meth:`forward` itself never reads the ids on the host:
    its sequence length is the ids' shape, its EOT positions an argmax on their device.

    The encoder does not own ``clip`` (it is not registered as a submodule): the caller holds,
    freezes and moves CLIP; this module holds only the prompts and the text adapters.
    """

    no_weight_decay = ("prompts",)  # inputs of the frozen layers; the adapters decay

    def __init__(
        self, clip: nn.Module, model_cfg: ModelConfig, hooks: HookSet, trim_padding: bool = False
    ) -> None:
        super().__init__()
        self.trim_padding = trim_padding
        parts = text_parts(clip)
        if parts.tower is None or parts.projection is None:
            raise ValueError("PromptedTextEncoder needs a CLIPModel (text tower and text_projection)")
        self._parts = parts  # a plain dataclass: CLIP's weights stay out of this module's state_dict
        config = parts.tower.config
        prompt_cfg = model_cfg.text_prompts
        self.width = config.hidden_size
        self.num_layers = len(parts.layers)
        self.eos_token_id = config.eos_token_id
        self.prompts_enabled = bool(prompt_cfg.enabled)
        self.num_prefix, self.num_postfix = prompt_cfg.prefix, prompt_cfg.postfix
        self.max_text_tokens = prompt_cfg.max_text_tokens
        if self.max_text_tokens > config.max_position_embeddings:
            raise ValueError(
                f"model.text_prompts.max_text_tokens = {self.max_text_tokens} exceeds the text tower's "
                f"max_position_embeddings = {config.max_position_embeddings}"
            )
        if self.num_prefix < 0 or self.num_postfix < 0:
            raise ValueError(
                f"text prompt counts must be >= 0, got prefix={self.num_prefix}, postfix={self.num_postfix}"
            )

        own = self.prompts_enabled and model_cfg.shared_latent == "none"
        if own:
            shape = (self.num_layers, self.num_prefix + self.num_postfix, self.width)
            self.prompts = nn.Parameter(torch.randn(shape) * prompt_cfg.init_std)  # [L_t, P+Q, D_t]
        else:
            self.register_parameter("prompts", None)

        adapter_cfg = model_cfg.adapter
        self.adapters = (
            attach_adapters(parts.layers, self.width, adapter_cfg, hooks)
            if adapter_cfg.enabled and adapter_cfg.text
            else None
        )

        self._active: tuple[PromptLayout, torch.Tensor] | None = None  # set only inside forward
        if self.prompts_enabled:
            hooks.forward(parts.embeddings, self._widen_hook)
            for index, layer in enumerate(parts.layers):
                hooks.forward_pre(layer, self._fill_hook(index), with_kwargs=True)

    # -- hooks ---------------------------------------------------------------------------------

    def _widen_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if self._active is None:
            return None
        layout, _ = self._active
        index = layout.token_index.unsqueeze(-1).expand(-1, -1, output.shape[-1])
        return output.gather(1, index)  # [N, S, D] -> [N, S', D]; prompt slots filled per layer

    def _fill_hook(self, layer_index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            if self._active is None:
                return None
            layout, prompts = self._active
            if args:
                return (layout.fill(args[0], prompts[layer_index]), *args[1:]), kwargs
            kwargs = dict(kwargs, hidden_states=layout.fill(kwargs["hidden_states"], prompts[layer_index]))
            return args, kwargs

        return hook

    # -- forward -------------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, text_prompts: torch.Tensor | None = None) -> torch.Tensor:
        N, S = input_ids.shape
        if S > self.max_text_tokens:
            raise ValueError(
                f"cannot encode captions of {S} tokens, the text encoder's cap is {self.max_text_tokens} "
                f"(model.text_prompts.max_text_tokens); tokenize with max_length={self.max_text_tokens}, "
                "truncation=True (data.max_text_tokens)"
            )
        tower, projection = self._parts.tower, self._parts.projection

        prompts = text_prompts if text_prompts is not None else self.prompts
        if text_prompts is not None and not self.prompts_enabled:
            raise ValueError(
                "text prompts were passed but model.text_prompts.enabled is false, "
                "so no prompt hooks are attached"
            )
        if prompts is None:
            if self.prompts_enabled:
                raise ValueError(
                    "model.text_prompts.enabled with a shared latent space: pass the text prompts "
                    "[L_t, prefix+postfix, D_t] from SharedPromptSpace"
                )
            # Stock tower (text adapters alone): causal, no padding mask, for the reason in _encode
            pooled = tower(input_ids=input_ids).pooler_output
            return projection(pooled)

        expected = (self.num_layers, self.num_prefix + self.num_postfix, self.width)
        if tuple(prompts.shape) != expected:
            raise ValueError(
                f"text prompts have shape {tuple(prompts.shape)}, "
                f"expected [L_t, prefix+postfix, D_t] = {list(expected)}"
            )

        eot = eot_positions(input_ids, self.eos_token_id)  # [N], on the ids' device
        layout = PromptLayout.build(eot, S, self.num_prefix, self.num_postfix)
        return self._encode(input_ids, layout, prompts)

    def prepare(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The host's part of :meth:`forward`, on the CPU tensors the tokenizer returns, before they
        move to the model's device (``VideoTaskModule.tokenize``): with prompts, the captions checked
        (:func:`checked_eot_positions`) and, with ``trim_padding``, the columns after the batch's last
        EOT dropped. ``input_ids``, ``attention_mask`` ``[N, S]`` -> ``[N, S']``, ``S' <= S``."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if not self.prompts_enabled:  # stock CLIP (plus adapters) pools by its own rule, untrimmed
            return input_ids, attention_mask
        eot = checked_eot_positions(input_ids, self.eos_token_id)  # [N]
        if not self.trim_padding:
            return input_ids, attention_mask
        S = int(eot.max()) + 1
        return input_ids[:, :S], attention_mask[:, :S]  # [N, S] -> [N, S']

    def _encode(self, input_ids: torch.Tensor, layout: PromptLayout, prompts: torch.Tensor) -> torch.Tensor:
        """:meth:`forward`'s tensor work once the captions are laid out, free of host synchronisation:
        the part ``trainer.compile`` compiles (:mod:`stop_lightning.models.compile`).
        ``input_ids [N, S]`` -> ``[N, E]``.

        The tower runs with its causal mask alone, no padding mask: a CLIP tokenizer pads only after
        EOT, which the causal tower never lets reach EOT's feature (OpenAI's CLIP has no padding mask
        either), and the stock tower would read a padding mask on the host to pick its attention
        kernel. Measured against the padding mask: bit-identical features on the CPU
        (``tests/models/test_host_sync.py``)."""
        tower, projection = self._parts.tower, self._parts.projection
        self._active = (layout, prompts)
        try:
            hidden = tower(input_ids=input_ids).last_hidden_state  # [N, S', D], final LN applied
        finally:
            self._active = None
        pooled = hidden[torch.arange(len(hidden), device=hidden.device), layout.pool_index]  # [N, D]
        return projection(pooled)
