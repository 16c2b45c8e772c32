"""``stop-lightning``: train | eval | protocol | predict | embed | search | export | manifest | preprocess |
shard | sweep.

``train`` and ``eval`` take an experiment name (``experiments/<name>.yaml``) and OmegaConf dotlist
overrides, e.g. ``stop-lightning train hmdb51 trainer.max_epochs=3 model.spatial.alpha=0.1``.
``predict``, ``embed``, ``search`` and ``export`` work from a trained checkpoint (or an export
folder); ``make bench`` runs the benchmarks.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from stop_lightning.config import available_experiments, load_config
from stop_lightning.errors import EXIT_USER_ERROR, USER_ERRORS, UserError
from stop_lightning.fileio import WRITE_ONLY_ERRNOS, storage_error
from stop_lightning.schema import ConfigError

# `train --debug`: Lightning's fast_dev_run (one batch of train, val and test, no checkpoint kept),
# without W&B; overrides given after it still win.
DEBUG_OVERRIDES = ("trainer.fast_dev_run=true", "logger.wandb=false")


def _add_experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "experiment",
        help=f"experiment name in experiments/ ({', '.join(available_experiments())}) or a YAML path",
    )
    p.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. trainer.max_epochs=3)")


def _add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--ckpt", required=required, help="a checkpoint (.ckpt) from `train`, or a folder from `export`"
    )
    p.add_argument(
        "--clip",
        default=None,
        help="CLIP source (hub id, folder or OpenAI .pt) if not where the model's config says",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (the first GPU if there is one, else the CPU), cpu, cuda or cuda:N (default auto)",
    )


def _add_print_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--print-config",
        "--print_config",
        action="store_true",
        help="print the resolved config and exit (loads no model or data)",
    )


def _add_store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--short-side", type=int, default=None, help="pixels (default data.store_short_side, 224)")
    p.add_argument(
        "--fps",
        type=float,
        default=None,
        help="stored frame rate; 0 keeps every frame (default data.store_fps)",
    )
    p.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="parallel processes (default: one per core)"
    )


class CurrentStderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a line is logged (not when the handler was made), so
    a redirected or replaced stderr (tests, notebooks) gets the lines."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging() -> None:
    """Our INFO lines once each; Lightning keeps its own handler, third-party noise stays quiet."""
    import os
    import warnings

    handler = CurrentStderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    ours = logging.getLogger("stop_lightning")
    if not ours.handlers:
        ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers reads these when it is first imported (by the commands that load CLIP): set
    # here, they keep `--help` and config errors from importing it just to quiet it. Where it is
    # already imported (a notebook, the tests), it is told directly.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        hf_logging = sys.modules["transformers"].utils.logging
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    # The frozen CLIP is in eval mode on purpose; Lightning's notice about it is expected.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # Our sampler resumes mid-epoch itself (callbacks.SamplerPositionInCheckpoint).
    warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable.*")


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stop_lightning")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations: `--resum auto` must not quietly mean `--resume auto`, nor a typo another option.
    parser = argparse.ArgumentParser(
        prog="stop-lightning", description=" ".join(__doc__.split("\n\n")[0].split()), allow_abbrev=False
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fit, validate and test an experiment")
    _add_experiment_args(p)
    p.add_argument(
        "--resume",
        default=None,
        help="continue an interrupted run: 'last' (newest run of the experiment; "
        "exit 2 if none), 'auto' (the same, or a fresh run if none) or a checkpoint path (docs/cluster.md)",
    )
    p.add_argument(
        "--allow-change",
        action="append",
        default=[],
        metavar="KEY",
        help="with --resume: let this config key (or section, e.g. trainer) differ from the run's "
        "config.yaml; repeatable",
    )
    _add_print_config(p)
    p.add_argument(
        "--debug",
        action="store_true",
        help=f"a smoke run: one batch of each stage, no W&B ({' '.join(DEBUG_OVERRIDES)})",
    )

    p = sub.add_parser("eval", help="test a checkpoint (or zero-shot CLIP without one)")
    _add_experiment_args(p)
    p.add_argument(
        "--ckpt",
        default=None,
        help="checkpoint (.ckpt) or export folder; omit only for a preset that trains nothing "
        "(model.preset=zero_shot)",
    )
    p.add_argument(
        "--dump",
        action="store_true",
        help="also write the test's raw scores into the eval folder: per-clip class scores "
        "(test_scores.csv) or the caption-video similarity matrix with ids (test_similarity.npz)",
    )
    _add_print_config(p)

    p = sub.add_parser(
        "protocol", help="zero_shot: a K400 checkpoint on HMDB51, UCF101 and K600, one table", add_help=False
    )
    p.add_argument(
        "args", nargs=argparse.REMAINDER, help="zero_shot --ckpt CKPT [--only hmdb51,k600] [key=value ...]"
    )

    p = sub.add_parser(
        "manifest", help="build data manifests from the official dataset files", add_help=False
    )
    # The dataset choices live in the registry: `stop-lightning manifest --help` lists them.
    p.add_argument("args", nargs=argparse.REMAINDER, help="DATASET --root R [--annotations A] --out O")

    p = sub.add_parser(
        "preprocess", help="smaller, faster-to-decode copies of an experiment's videos + manifests"
    )
    _add_experiment_args(p)
    _add_store_args(p)
    p.add_argument("--codec", default=None, choices=("h264", "mpeg4"), help="default data.store_codec (h264)")
    p.add_argument(
        "--gop", type=int, default=None, help="key frame every N stored frames (default data.store_gop)"
    )

    p = sub.add_parser(
        "shard", help="JPEG frame shards (LitData) of an experiment's manifests, for data.format=shards"
    )
    _add_experiment_args(p)
    _add_store_args(p)
    p.add_argument(
        "--quality",
        dest="jpeg_quality",
        type=int,
        default=None,
        help="JPEG quality (default data.store_jpeg_quality)",
    )

    p = sub.add_parser("predict", help="top classes of videos with a recognition checkpoint")
    _add_model_args(p)
    p.add_argument(
        "videos",
        nargs="+",
        help="video files or folders (the videos under them); each gets its classes or a one-line error",
    )
    p.add_argument("--top", type=int, default=5, help="how many classes to list per video (default 5)")
    p.add_argument(
        "--json",
        action="store_true",
        help='one JSON document on stdout: per video {"video", "top": [{"class", "score"}]} or '
        '{"video", "error"}',
    )

    p = sub.add_parser(
        "embed",
        help="write the video embeddings of a manifest, files or folders (for `search` or your own use)",
    )
    _add_model_args(p)
    p.add_argument(
        "videos", nargs="*", help="video files or folders (the videos under them), instead of --manifest"
    )
    p.add_argument("--manifest", default=None, help="JSONL manifest; each row needs only 'path'")
    p.add_argument("--out", required=True, help="embeddings file, .pt or .npz")
    p.add_argument(
        "--video-root",
        default=None,
        help="folder the manifest paths are relative to (default: the checkpoint's data.video_root)",
    )

    p = sub.add_parser("search", help="text-to-video search over `embed` output")
    p.add_argument("embeddings", help="the .pt or .npz that `stop-lightning embed` wrote")
    p.add_argument("queries", nargs="+", help='one or more text queries, e.g. "a person riding a bike"')
    p.add_argument("--top", type=int, default=10, help="how many videos to list per query (default 10)")
    _add_model_args(p, required=False)
    p.add_argument(
        "--faiss",
        action="store_true",
        help="use faiss's exact inner-product index (needs `pip install faiss-cpu`)",
    )
    p.description = (
        "--ckpt defaults to the checkpoint the embeddings file names; it must be the model that wrote "
        "the embeddings (checked by fingerprint)."
    )

    p = sub.add_parser(
        "export",
        help="write a checkpoint's trained prompts as a shareable folder (safetensors, config, model card)",
    )
    p.add_argument(
        "paths",
        nargs="*",
        metavar="[CKPT] OUT_DIR",
        help="the checkpoint (or --ckpt), then a new or empty folder",
    )
    p.add_argument("--ckpt", default=None, help="checkpoint (.ckpt) written by `train`")
    p.add_argument("--clip", default=None, help="CLIP source if not where the checkpoint's config says")

    p = sub.add_parser("sweep", help="W&B sweep online, local grid/random search offline")
    p.add_argument("sweep", help="sweeps/<name>.yaml or a path")
    p.add_argument(
        "--id",
        dest="sweep_id",
        default=None,
        help="join this existing online W&B sweep (made by an earlier `sweep`, e.g. on another node) "
        "with one more agent instead of creating a new sweep; needs online W&B",
    )
    p.add_argument("overrides", nargs="*", help="config overrides for every trial, key=value")
    for command in sub.choices.values():
        command.allow_abbrev = False
    return parser


class UsageError(UserError, ValueError):
    """Arguments that do not fit together; the message gives the command's form."""


def export_paths(ckpt: str | None, paths: list[str]) -> tuple[str, str]:
    """``export --ckpt CKPT OUT_DIR`` (as the other commands name a checkpoint) or ``export CKPT OUT_DIR``."""
    form = "stop-lightning export --ckpt CKPT OUT_DIR (or export CKPT OUT_DIR)"
    if ckpt is not None and len(paths) == 1:
        return ckpt, paths[0]
    if ckpt is None and len(paths) == 2:
        return paths[0], paths[1]
    if ckpt is not None and len(paths) == 2:
        raise UsageError(f"export got two checkpoints (--ckpt {ckpt} and {paths[0]}); give one: {form}")
    if ckpt is None and len(paths) == 1:
        raise UsageError(f"export needs a checkpoint and a folder, got only {paths[0]}: {form}")
    raise UsageError(f"export takes a checkpoint and one output folder, got {len(paths)} paths: {form}")


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = build_parser()
    # Overrides may follow options (`train hmdb51 --resume last k=v`, as `make train RESUME= ARGS=`
    # writes it); argparse stops filling a positional list at the first option, so collect them here.
    args, extra = parser.parse_known_args(argv)
    if args.command in ("manifest", "protocol"):  # their own parsers read everything after the command
        args.args, extra = extra + list(args.args), []
    if extra:
        if not hasattr(args, "overrides") or any(item.startswith("-") for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    try:
        if args.command == "manifest":
            from stop_lightning.data.build import main as manifest_main

            return manifest_main(args.args)
        if args.command == "protocol":
            from stop_lightning.protocols import protocol_main

            return protocol_main(args.args)
        if args.command in ("train", "eval"):
            debug = list(DEBUG_OVERRIDES) if getattr(args, "debug", False) else []
            cfg = load_config(args.experiment, debug + list(args.overrides))
            if args.print_config:
                from stop_lightning.schema import to_yaml

                print(to_yaml(cfg))
                return 0
            from stop_lightning.train import evaluate, train

            if args.command == "train":
                from stop_lightning.preemption import Preempted

                try:
                    train(cfg, resume=args.resume, allow_change=tuple(args.allow_change))
                except Preempted as stop:
                    print(f"preempted: {stop.message}", file=sys.stderr)
                    return stop.code
            else:
                evaluate(cfg, ckpt=args.ckpt, dump=args.dump)
            return 0
        if args.command in ("preprocess", "shard"):
            from stop_lightning.data.store_cli import store_main

            return store_main(args.command, load_config(args.experiment, args.overrides), args)
        if args.command == "predict":
            from stop_lightning.inference import predict_main

            return predict_main(
                args.ckpt,
                args.videos,
                top=args.top,
                clip_source=args.clip,
                as_json=args.json,
                device=args.device,
            )
        if args.command == "embed":
            from stop_lightning.inference import embed_main

            return embed_main(
                args.ckpt,
                args.manifest,
                args.out,
                video_root=args.video_root,
                clip_source=args.clip,
                videos=args.videos,
                device=args.device,
            )
        if args.command == "search":
            from stop_lightning.search import search_main

            return search_main(
                args.embeddings,
                args.queries,
                top=args.top,
                ckpt=args.ckpt,
                clip_source=args.clip,
                use_faiss=args.faiss,
                device=args.device,
            )
        if args.command == "export":
            ckpt, out_dir = export_paths(args.ckpt, args.paths)
            from stop_lightning.pretrained import export_main

            return export_main(ckpt, out_dir, clip_source=args.clip)
        if args.command == "sweep":
            from stop_lightning.sweep.runner import sweep_main

            return sweep_main(args.sweep, args.overrides, sweep_id=args.sweep_id)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except USER_ERRORS as err:
        # Problems with the user's files or settings: the message says what to do; no traceback.
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as err:
        # A full or read-only disk met by a writer that is not ours (Lightning's CSV logger, W&B,
        # TensorBoard): the same one line as ours. A refused read keeps its traceback here.
        if err.errno not in WRITE_ONLY_ERRNOS:
            raise
        print(f"error: {storage_error(err, err.filename)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 1


if __name__ == "__main__":
    sys.exit(main())
