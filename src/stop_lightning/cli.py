"""``stop-lightning``: train | eval | predict | embed | search | export | manifest | sweep.

``train`` and ``eval`` take an experiment name (``experiments/<name>.yaml``) and OmegaConf dotlist
overrides, e.g. ``stop-lightning train hmdb51 trainer.max_epochs=3 model.spatial.alpha=0.1``.
``predict``, ``embed``, ``search`` and ``export`` work from a trained checkpoint (or an export
folder); ``make bench`` runs the benchmarks.
"""

from __future__ import annotations

import argparse
import logging
import sys

from stop_lightning.config import ConfigError, available_experiments, load_config


def _add_experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help=f"experiment name in experiments/ ({', '.join(available_experiments())}) or a YAML path")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. trainer.max_epochs=3)")


def _add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--ckpt", required=required, help="a checkpoint (.ckpt) from `train`, or a folder from `export`")
    p.add_argument("--clip", default=None, help="CLIP source (hub id, folder or OpenAI .pt) if not where the model's config says")


def configure_logging() -> None:
    """Our INFO lines once each; Lightning keeps its own handler, third-party noise stays quiet."""
    import os
    import warnings

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    ours = logging.getLogger("stop_lightning")
    if not ours.handlers:
        ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
    # The frozen CLIP is in eval mode on purpose; Lightning's notice about it is expected.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stop-lightning", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fit, validate and test an experiment")
    _add_experiment_args(p)
    p.add_argument("--resume", default=None, help="'last' or a checkpoint path: continue an interrupted run")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")

    p = sub.add_parser("eval", help="test a checkpoint (or zero-shot CLIP without one)")
    _add_experiment_args(p)
    p.add_argument(
        "--ckpt", default=None,
        help="checkpoint (.ckpt) or export folder; omit only for a preset that trains nothing (model.preset=zero_shot)",
    )

    p = sub.add_parser(
        "manifest", help="build data manifests from the official dataset files", add_help=False
    )
    # The dataset choices live in the registry: `stop-lightning manifest --help` lists them.
    p.add_argument("args", nargs=argparse.REMAINDER, help="DATASET --root R [--annotations A] --out O")

    p = sub.add_parser("predict", help="top classes of videos with a recognition checkpoint")
    _add_model_args(p)
    p.add_argument("videos", nargs="+", help="video files; each gets its classes or a one-line error")
    p.add_argument("--top", type=int, default=5, help="how many classes to list per video (default 5)")

    p = sub.add_parser("embed", help="write the video embeddings of a manifest (for `search` or your own use)")
    _add_model_args(p)
    p.add_argument("--manifest", required=True, help="JSONL manifest; each row needs only 'path'")
    p.add_argument("--out", required=True, help="embeddings file, .pt or .npz")
    p.add_argument("--video-root", default=None, help="folder the manifest paths are relative to (default: the checkpoint's data.video_root)")

    p = sub.add_parser("search", help="text-to-video search over `embed` output")
    p.add_argument("embeddings", help="the .pt or .npz that `stop-lightning embed` wrote")
    p.add_argument("queries", nargs="+", help="one or more text queries, e.g. \"a person riding a bike\"")
    p.add_argument("--top", type=int, default=10, help="how many videos to list per query (default 10)")
    _add_model_args(p, required=False)
    p.add_argument("--faiss", action="store_true", help="use faiss's exact inner-product index (needs `pip install faiss-cpu`)")
    p.description = ("--ckpt defaults to the checkpoint the embeddings file names; it must be the model that wrote "
                     "the embeddings (checked by fingerprint).")

    p = sub.add_parser("export", help="write a checkpoint's trained prompts as a shareable folder (safetensors, config, model card)")
    p.add_argument("ckpt", help="checkpoint (.ckpt) written by `train`")
    p.add_argument("out_dir", help="new (or empty) folder to write")
    p.add_argument("--clip", default=None, help="CLIP source if not where the checkpoint's config says")

    p = sub.add_parser("sweep", help="W&B sweep online, local grid/random search offline")
    p.add_argument("sweep", help="sweeps/<name>.yaml or a path")
    p.add_argument("overrides", nargs="*", help="config overrides for every trial, key=value")
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = build_parser()
    # Overrides may follow options (`train hmdb51 --resume last k=v`, as `make train RESUME= ARGS=`
    # writes it); argparse stops filling a positional list at the first option, so collect them here.
    args, extra = parser.parse_known_args(argv)
    if args.command == "manifest":  # the builders' own parser reads everything after `manifest`
        args.args, extra = extra + list(args.args), []
    if extra:
        if not hasattr(args, "overrides") or any(item.startswith("-") for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    try:
        if args.command == "manifest":
            from stop_lightning.data.builders import main as manifest_main

            return manifest_main(args.args)
        if args.command in ("train", "eval"):
            cfg = load_config(args.experiment, args.overrides)
            if args.command == "train" and args.print_config:
                from stop_lightning.config import to_yaml

                print(to_yaml(cfg))
                return 0
            from stop_lightning.train import evaluate, train

            if args.command == "train":
                train(cfg, resume=args.resume)
            else:
                evaluate(cfg, ckpt=args.ckpt)
            return 0
        if args.command == "predict":
            from stop_lightning.inference import predict_main

            return predict_main(args.ckpt, args.videos, top=args.top, clip_source=args.clip)
        if args.command == "embed":
            from stop_lightning.inference import embed_main

            return embed_main(args.ckpt, args.manifest, args.out, video_root=args.video_root, clip_source=args.clip)
        if args.command == "search":
            from stop_lightning.search import search_main

            return search_main(args.embeddings, args.queries, top=args.top, ckpt=args.ckpt, clip_source=args.clip, use_faiss=args.faiss)
        if args.command == "export":
            from stop_lightning.pretrained import export_main

            return export_main(args.ckpt, args.out_dir, clip_source=args.clip)
        if args.command == "sweep":
            from stop_lightning.sweep import sweep_main

            return sweep_main(args.sweep, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except user_errors() as err:
        # Problems with the user's files or settings: the message says what to do; no traceback.
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors about the user's files or settings (imported lazily: the CLI starts fast)."""
    from stop_lightning.checkpoint_io import CheckpointReadError
    from stop_lightning.data.decode import VideoDecodeError
    from stop_lightning.data.manifest import ManifestError
    from stop_lightning.models.backbone import ClipLoadError
    from stop_lightning.tasks.base import CheckpointMismatchError

    return (FileNotFoundError, ManifestError, ClipLoadError, CheckpointReadError, CheckpointMismatchError, VideoDecodeError)


if __name__ == "__main__":
    sys.exit(main())
