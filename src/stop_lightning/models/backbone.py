"""Load a frozen CLIP from the hub, a local directory, an OpenAI ``.pt`` checkpoint or the tiny test model.

One factory (:func:`load_clip`) turns ``model.clip.source`` into a :class:`ClipBundle`: the frozen
``CLIPModel`` in eval mode, its tokenizer, the image normalisation it was trained with and the
sizes every other module reads. OpenAI checkpoints (TorchScript archives or plain state dicts)
are converted into the HuggingFace layout with sizes inferred from the tensor shapes.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPConfig, CLIPModel

from stop_lightning.choices import check_choice
from stop_lightning.errors import UserError
from stop_lightning.fileio import atomic_dir
from stop_lightning.models.hooks import freeze
from stop_lightning.models.layers import attention_heads
from stop_lightning.models.tiny_clip import CLIP_MEAN, CLIP_STD, make_tiny_clip
from stop_lightning.reading import check_file, first_line, problem
from stop_lightning.schema import ClipSource

# Config keys that change with the transformers release or the runtime, not with the weights.
_VOLATILE_CONFIG_KEYS = (
    "transformers_version",
    "_name_or_path",
    "_attn_implementation_autoset",
    "dtype",
    "torch_dtype",
)
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class ClipLoadError(UserError, RuntimeError):
    """The CLIP weights named by ``model.clip.source`` cannot be loaded; the message says why and what
    to do."""


@dataclass
class ClipBundle:
    model: CLIPModel  # frozen, eval mode
    tokenizer: Any | None
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    image_size: int
    patch_size: int
    source: str
    config_hash: str  # sha256 of the CLIP config, stored in checkpoints to catch a swapped backbone


def config_hash(config: CLIPConfig) -> str:
    def clean(d: dict) -> dict:
        return {
            k: clean(v) if isinstance(v, dict) else v
            for k, v in d.items()
            if k not in _VOLATILE_CONFIG_KEYS and not str(k).startswith("_attn")
        }

    text = json.dumps(clean(config.to_dict()), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load_clip(clip_cfg: ClipSource, cache_dir: str | Path) -> ClipBundle:
    """Turn ``clip_cfg.source`` (hub id | local dir | OpenAI ``.pt`` | ``tiny``) into a frozen
    :class:`ClipBundle`."""
    source = str(clip_cfg.source)
    attn = check_choice("model.clip.attn_implementation", str(clip_cfg.attn_implementation))
    path = Path(source).expanduser()

    if source == "tiny":
        model_dir = _tiny_clip_dir(clip_cfg, Path(cache_dir))
        try:
            model = _from_pretrained(str(model_dir), attn)
        except ClipLoadError as err:  # the cache was cut short (a full disk, a killed copy) or edited
            cause = first_line(err.__cause__) if err.__cause__ else str(err)
            raise ClipLoadError(
                problem(
                    model_dir,
                    f"the cached tiny CLIP is damaged ({cause})",
                    "delete the folder; the next run makes it again",
                )
            ) from err
        model_dir_for_extras: Path | None = model_dir
    elif path.is_dir():
        model = _from_pretrained(str(path), attn)
        model_dir_for_extras = path
    elif path.is_file():
        model = clip_from_openai_state_dict(read_openai_checkpoint(path), attn_implementation=attn)
        model_dir_for_extras = None
    elif (
        path.suffix in _CHECKPOINT_SUFFIXES or source.startswith((".", "/", "~")) or not _HUB_ID.match(source)
    ):
        raise ClipLoadError(
            f"model.clip.source = '{source}': no such file or directory ({path.resolve()}). "
            f"Expected a HuggingFace hub id "
            f"(e.g. openai/clip-vit-base-patch32), a directory written by save_pretrained, "
            f"an OpenAI .pt checkpoint or 'tiny'."
        )
    else:
        model = _from_pretrained(source, attn)
        model_dir_for_extras = None

    model = freeze(model)
    vision = model.config.vision_config
    mean, std = _image_normalisation(model_dir_for_extras or source)
    return ClipBundle(
        model=model,
        tokenizer=_tokenizer(model_dir_for_extras or source),
        image_mean=mean,
        image_std=std,
        image_size=int(vision.image_size),
        patch_size=int(vision.patch_size),
        source=source,
        config_hash=config_hash(model.config),
    )


def _from_pretrained(name_or_dir: str, attn: str) -> CLIPModel:
    try:
        return CLIPModel.from_pretrained(name_or_dir, attn_implementation=attn)
    except Exception as err:  # a damaged folder raises what its files' parsers raise, not only OSError
        if Path(name_or_dir).is_dir():
            raise ClipLoadError(
                problem(
                    name_or_dir,
                    f"not a loadable CLIP folder ({first_line(err)})",
                    "point model.clip.source at a folder written by CLIPModel.save_pretrained "
                    "(config.json and the weights)",
                )
            ) from err
        if not isinstance(err, OSError):
            raise
        raise ClipLoadError(
            f"cannot load CLIP '{name_or_dir}' from the HuggingFace hub "
            f"(no network or not in the local cache): {first_line(err)}; "
            f"Download it on a connected machine (huggingface-cli download {name_or_dir}) "
            f"and copy the cache over, "
            f"or point model.clip.source to a local directory (CLIPModel.save_pretrained) "
            f"or an OpenAI .pt file."
        ) from err


def _tiny_clip_dir(clip_cfg: ClipSource, cache_dir: Path) -> Path:
    sizes = dict(
        width=int(clip_cfg.tiny_width),
        layers=int(clip_cfg.tiny_layers),
        patch_size=int(clip_cfg.tiny_patch_size),
        image_size=int(clip_cfg.tiny_image_size),
    )
    out = cache_dir / "tiny-clip-w{width}-l{layers}-p{patch_size}-i{image_size}".format(**sizes)
    if not (out / "config.json").is_file():
        try:  # written beside its place and renamed: concurrent runs never see half a model
            with atomic_dir(out) as tmp:
                make_tiny_clip(tmp, seed=0, **sizes)
        except OSError:  # a full disk is one line; another process winning the race is no error
            if not (out / "config.json").is_file():
                raise
    return out


def _tokenizer(name_or_dir: str | Path) -> Any | None:
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(str(name_or_dir))
    except Exception:  # noqa: BLE001 - no tokenizer files: text encoding needs one supplied elsewhere
        return None


def _image_normalisation(name_or_dir: str | Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from transformers import CLIPImageProcessor

    try:
        proc = CLIPImageProcessor.from_pretrained(str(name_or_dir))
        return tuple(float(v) for v in proc.image_mean), tuple(float(v) for v in proc.image_std)
    except Exception:  # noqa: BLE001 - OpenAI checkpoints carry no processor: they were trained with these
        return CLIP_MEAN, CLIP_STD


# ----------------------------------------------------------------------------------------------
# OpenAI checkpoints
# ----------------------------------------------------------------------------------------------


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in zf.namelist())


OPENAI_TODO = (
    "point model.clip.source at an OpenAI CLIP checkpoint (TorchScript archive from the clip package, "
    "or a torch.save'd state dict with visual.* keys), a save_pretrained folder or a hub id"
)


def read_openai_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an OpenAI CLIP checkpoint: a TorchScript archive or a plain ``torch.save`` dict."""
    path = check_file(path, "CLIP checkpoint", ClipLoadError, OPENAI_TODO)
    try:
        if _is_torchscript(path):
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            with warnings.catch_warnings():  # torch's notes on a foreign pickle would add lines
                warnings.simplefilter("ignore")
                state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means the file is not what we can read
        reason = first_line(err).split(". ")[0]  # torch's first sentence; the rest is advice for torch users
        raise ClipLoadError(
            problem(path, f"cannot be read as an OpenAI CLIP checkpoint ({reason})", OPENAI_TODO)
        ) from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "visual.conv1.weight" not in state:
        keys = list(state)[:5] if isinstance(state, dict) else type(state).__name__
        what = f"found no 'visual.conv1.weight' (first keys: {keys}): not a ViT CLIP checkpoint"
        raise ClipLoadError(problem(path, what, OPENAI_TODO))
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _count_blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return 1 + max(int(m.group(1)) for k in state if (m := pattern.match(k)))


def openai_clip_config(
    state: dict[str, torch.Tensor], vision_heads: int | None = None, text_heads: int | None = None
) -> CLIPConfig:
    """A ``CLIPConfig`` whose sizes are read off the OpenAI tensors (heads: :func:`attention_heads`)."""
    width, _, patch, _ = state["visual.conv1.weight"].shape
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = state["ln_final.weight"].shape[0]
    vocab, _ = state["token_embedding.weight"].shape
    config = CLIPConfig(
        vision_config=dict(
            hidden_size=width,
            intermediate_size=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            num_hidden_layers=_count_blocks(state, "visual.transformer.resblocks."),
            num_attention_heads=vision_heads or attention_heads(width),
            image_size=grid * patch,
            patch_size=patch,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
        ),
        text_config=dict(
            hidden_size=text_width,
            intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            num_hidden_layers=_count_blocks(state, "transformer.resblocks."),
            num_attention_heads=text_heads or attention_heads(text_width),
            vocab_size=vocab,
            max_position_embeddings=state["positional_embedding"].shape[0],
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            # OpenAI pools at the highest token id, the end-of-text token, last in the vocabulary.
            eos_token_id=vocab - 1,
            bos_token_id=vocab - 2,
            pad_token_id=0,
        ),
        projection_dim=state["visual.proj"].shape[1],
        logit_scale_init_value=float(state["logit_scale"]),
    )
    return config


def _map_blocks(state: dict[str, torch.Tensor], src: str, dst: str, layers: int) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(layers):
        s, d = f"{src}{i}.", f"{dst}{i}."
        q, k, v = state[s + "attn.in_proj_weight"].chunk(3, dim=0)
        qb, kb, vb = state[s + "attn.in_proj_bias"].chunk(3, dim=0)
        out.update(
            {
                d + "self_attn.q_proj.weight": q,
                d + "self_attn.q_proj.bias": qb,
                d + "self_attn.k_proj.weight": k,
                d + "self_attn.k_proj.bias": kb,
                d + "self_attn.v_proj.weight": v,
                d + "self_attn.v_proj.bias": vb,
                d + "self_attn.out_proj.weight": state[s + "attn.out_proj.weight"],
                d + "self_attn.out_proj.bias": state[s + "attn.out_proj.bias"],
                d + "layer_norm1.weight": state[s + "ln_1.weight"],
                d + "layer_norm1.bias": state[s + "ln_1.bias"],
                d + "mlp.fc1.weight": state[s + "mlp.c_fc.weight"],
                d + "mlp.fc1.bias": state[s + "mlp.c_fc.bias"],
                d + "mlp.fc2.weight": state[s + "mlp.c_proj.weight"],
                d + "mlp.fc2.bias": state[s + "mlp.c_proj.bias"],
                d + "layer_norm2.weight": state[s + "ln_2.weight"],
                d + "layer_norm2.bias": state[s + "ln_2.bias"],
            }
        )
    return out


def openai_to_hf_state_dict(state: dict[str, torch.Tensor], config: CLIPConfig) -> dict[str, torch.Tensor]:
    """Rename OpenAI keys to ``CLIPModel`` keys; projections are stored transposed (``x @ proj``) by
    OpenAI."""
    v, t = "vision_model.", "text_model."
    out = {
        v + "embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        v + "embeddings.class_embedding": state["visual.class_embedding"],
        v + "embeddings.position_embedding.weight": state["visual.positional_embedding"],
        v + "pre_layrnorm.weight": state["visual.ln_pre.weight"],
        v + "pre_layrnorm.bias": state["visual.ln_pre.bias"],
        v + "post_layernorm.weight": state["visual.ln_post.weight"],
        v + "post_layernorm.bias": state["visual.ln_post.bias"],
        "visual_projection.weight": state["visual.proj"].t(),
        t + "embeddings.token_embedding.weight": state["token_embedding.weight"],
        t + "embeddings.position_embedding.weight": state["positional_embedding"],
        t + "final_layer_norm.weight": state["ln_final.weight"],
        t + "final_layer_norm.bias": state["ln_final.bias"],
        "text_projection.weight": state["text_projection"].t(),
        "logit_scale": state["logit_scale"].reshape(()),
    }
    out.update(
        _map_blocks(
            state,
            "visual.transformer.resblocks.",
            v + "encoder.layers.",
            config.vision_config.num_hidden_layers,
        )
    )
    out.update(
        _map_blocks(
            state, "transformer.resblocks.", t + "encoder.layers.", config.text_config.num_hidden_layers
        )
    )
    return {k: t_.float().contiguous() for k, t_ in out.items()}


def clip_from_openai_state_dict(
    state: dict[str, torch.Tensor],
    attn_implementation: str = "sdpa",
    vision_heads: int | None = None,
    text_heads: int | None = None,
) -> CLIPModel:
    """Build a HuggingFace ``CLIPModel`` from an OpenAI-layout state dict (fp32, eval mode)."""
    config = openai_clip_config(state, vision_heads, text_heads)
    model = CLIPModel(config)
    missing, unexpected = model.load_state_dict(openai_to_hf_state_dict(state, config), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ClipLoadError(
            f"OpenAI checkpoint conversion left weights unmapped: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    model.set_attn_implementation(attn_implementation)
    return model.eval()
