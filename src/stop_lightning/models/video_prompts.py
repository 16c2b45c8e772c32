"""VoP's context- and function-specific video prompts (docs/fidelity.md, "VoP", rows V6-V8).

VoP (Huang et al., "VoP: Text-Video Co-operative Prompt Tuning for Cross-Modal Retrieval", CVPR
2023, arXiv 2211.12764) adds three kinds of video prompts to deep text and visual prompts. The
position-specific ones (VoP-P) are the framework's local prompts with a frame axis
(``model.local_prompts.per_frame``). The other two are built here, in the paper's form:

- :class:`ContextPrompts` (VoP-C, Sec. 3.3, Eqs. 6-8; ``model.context_prompts``): at a vision layer,
  the CLS tokens of a clip's frames entering it, ``C [B, T, D]``, pass a Context Modelling Module (a
  1-layer bidirectional LSTM, Sec. 4.1) and one fully connected layer that stretches each frame's
  modulated token into that frame's P prompt tokens. One module serves every layer; the modulated
  tokens are not passed on (only the prompts they make are). Padded frames are left out of the
  LSTM's sequence, so they change no real frame's prompts.
- :class:`FunctionPrompts` (VoP-F, Sec. 3.3, Eq. 9; ``model.function_prompts``): the layers after
  ``split_layer`` (K^s) attend across all frames of a clip. Before layer K^s + 1 a trainable frame
  position embedding ``[T, D]`` is added to every token of each frame and the clip's frames are
  joined into one sequence ``[K prompts, frame_1, ..., frame_T]`` (each frame ``[CLS, patches]``);
  each deep layer gets its own K video-level prompts (one set per video), outputs discarded; after the
  last layer the sequence is cut back into frames. Eq. 9 orders the tokens ``[all CLS, prompts, all
  patches]``; the layers hold no position information of their own, so the order does not change
  what they compute. No generator: only the prompts and the frame position embedding train.

The video model (``video_encoder.py``) calls these from its layer hooks.
"""

from __future__ import annotations

import torch
from torch import nn

from stop_lightning.schema import ContextPromptConfig


class ContextPrompts(nn.Module):
    """Context-specific prompts: frame CLS tokens ``[B, T, D]`` -> P tokens per frame ``[B, T, P, D]``."""

    # Kept from the name rule this replaced (the path held "prompt"): the whole BiLSTM and FC do not decay.
    no_weight_decay = ("context", "fc")

    def __init__(self, cfg: ContextPromptConfig, width: int):
        super().__init__()
        self.num_tokens, self.width = int(cfg.num_tokens), int(width)
        hidden = self.width if int(cfg.hidden) == -1 else int(cfg.hidden)
        self.context = nn.LSTM(self.width, hidden, num_layers=1, batch_first=True, bidirectional=True)  # CMM
        self.fc = nn.Linear(2 * hidden, self.num_tokens * self.width)

    def forward(self, cls: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``cls [B, T, D]``, optional ``frame_mask [B, T]`` (True: a real frame) -> ``[B, T, P, D]``.

        Real frames keep their order and form the LSTM's sequence; padded frames (anywhere in the clip)
        are left out and get the prompts of a zero LSTM output."""
        B, T, D = cls.shape
        if D != self.width:
            raise ValueError(f"context prompts built for width {self.width}, got frame tokens of width {D}")
        if frame_mask is None:
            modulated, _ = self.context(cls)  # [B, T, 2H]
        else:
            # The real frames in their order, first in the clip for the forward direction (which reads
            # from the start, so the padding after them cannot reach them) and last for the backward
            # direction (which reads from the end): stable sorts of "is padded" and of "is real". Same
            # numbers as a packed sequence, without its lengths on the host (trainer.compile traces it).
            H = self.context.hidden_size
            halves = []
            for key, half in ((~frame_mask, slice(None, H)), (frame_mask, slice(H, None))):
                order = torch.sort(key.to(torch.uint8), dim=1, stable=True).indices  # [B, T]
                both, _ = self.context(cls.gather(1, order.unsqueeze(-1).expand(B, T, D)))  # [B, T, 2H]
                out = both[..., half]  # [B, T, H]: this pass's direction
                halves.append(torch.empty_like(out).scatter_(1, order.unsqueeze(-1).expand_as(out), out))
            # [B, T, 2H]; a padded frame gets a zero output
            modulated = torch.cat(halves, dim=-1) * frame_mask.unsqueeze(-1).to(cls.dtype)
        return self.fc(modulated).view(B, T, self.num_tokens, D)  # [B, T, 2H] -> [B, T, P*D] -> [B, T, P, D]


class FunctionPrompts(nn.Module):
    """Video-level prompts of the deep layers, ``tokens [L - K^s, K, D]``, and the frame position
    embedding ``[T, D]`` added when the clip's frames are joined before layer K^s + 1."""

    no_weight_decay = ("tokens", "frame_position")  # inputs of the frozen layers

    def __init__(self, split: int, layers: int, num_tokens: int, width: int, frames: int, init_std: float):
        super().__init__()
        self.split, self.num_tokens = int(split), int(num_tokens)
        self.tokens = nn.Parameter(torch.randn(layers - self.split, self.num_tokens, width) * init_std)
        self.frame_position = nn.Parameter(torch.randn(frames, width) * init_std)

    def join(self, frames: torch.Tensor, batch: int) -> torch.Tensor:
        """Per-frame sequences ``[B*T, S, D]`` -> one per video ``[B, K + T*S, D]``: frame position added,
        K video-level prompt positions in front (filled by :meth:`at_layer`)."""
        _, S, D = frames.shape
        T = frames.shape[0] // batch
        if T != self.frame_position.shape[0]:
            raise ValueError(
                f"function prompts are made for clips of {self.frame_position.shape[0]} frames "
                f"(data.num_frames), this clip has {T}"
            )
        video = frames.view(batch, T, S, D) + self.frame_position.to(frames.dtype)[:, None]  # [B, T, S, D]
        return torch.cat([video.new_zeros(batch, self.num_tokens, D), video.reshape(batch, T * S, D)], dim=1)

    def at_layer(self, layer: int, video: torch.Tensor) -> torch.Tensor:
        """``video [B, K + T*S, D]``, its K prompt positions replaced by ``layer``'s video-level prompts."""
        prompts = self.tokens[layer - self.split].to(video.dtype).expand(video.shape[0], -1, -1)  # [B, K, D]
        return torch.cat([prompts, video[:, self.num_tokens :]], dim=1)

    def split_frames(self, video: torch.Tensor, frames: int) -> torch.Tensor:
        """``[B, K + T*S, D]`` -> per-frame ``[B*T, S, D]`` (the prompt outputs discarded)."""
        B, _, D = video.shape
        return video[:, self.num_tokens :].reshape(B * frames, -1, D)

    def key_mask(self, frame_mask: torch.Tensor, frame_len: int) -> torch.Tensor:
        """``frame_mask [B, T]`` -> keys each query may attend to in the joined sequence, ``[B, 1, 1,
        K + T*S]`` (True: allowed): the prompts and the real frames' tokens, never a padded frame's."""
        B = frame_mask.shape[0]
        prompts = frame_mask.new_ones(B, self.num_tokens)
        return torch.cat([prompts, frame_mask.repeat_interleave(frame_len, dim=1)], dim=1)[:, None, None]
