"""Results of `make bench` as JSON and as the generated part of ``docs/benchmarks.md``.

The markdown file keeps whatever is written outside the generated blocks (the hand-written notes):
each device's tables live between ``<!-- BEGIN GENERATED: <device> -->`` and
``<!-- END GENERATED: <device> -->`` and only that block is replaced.
The JSON file keeps one entry per device the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stop_lightning.fileio import atomic_write

BASELINE = "clip4clip_meanp"
FLOOR = "clip_fwd_bwd"


def _begin(device: str, writer: str = "benchmarks/run.py") -> str:
    return f"<!-- BEGIN GENERATED: {device} ({writer} writes this block; edit outside it) -->"


def _end(device: str) -> str:
    return f"<!-- END GENERATED: {device} -->"


def write_json(results: dict[str, Any], path: Path) -> None:
    """Replace this device's entry of the JSON file, keep the others."""
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            data = {}
    data[results["device_key"]] = results
    atomic_write(path, json.dumps(data, indent=1, sort_keys=False, default=float) + "\n")


def write_markdown(results: dict[str, Any], path: Path, title: str = "# Benchmarks\n") -> None:
    """Replace this device's generated block in ``path`` (appended when missing; file created when absent)."""
    write_block(path, results["device_key"], render_markdown(results), title)


def write_block(
    path: Path, key: str, body: str, title: str = "# Benchmarks\n", writer: str = "benchmarks/run.py"
) -> None:
    """Replace the generated block ``key`` in ``path`` with ``body``.

    The block is placed after the other blocks when missing.
    """
    block = f"{_begin(key, writer)}\n{body}{_end(key)}\n"
    text = path.read_text() if path.is_file() else title + "\n"
    begin, end = _begin(key, writer), _end(key)
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    elif "<!-- END GENERATED: " in text:  # next to the other devices' blocks, before the hand-written notes
        cut = text.index("\n", text.rindex("<!-- END GENERATED: ")) + 1
        text = text[:cut] + "\n" + block + text[cut:]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    atomic_write(path, text)


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------


def _s(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _x(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}x"


def _mib(v: float | None) -> str:
    return "—" if v is None else f"{v:,.0f}"


def _table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render_markdown(r: dict[str, Any]) -> str:
    m, s = r["machine"], r["settings"]
    out = [f"## Results: {m['device_name']} ({r['mode']} run)\n"]
    out.append(
        f"Generated {r['generated']} by `{r['command']}` in {r['wall_s'] / 60:.1f} min.\n\n"
        f"- Machine: {m['description']}\n"
        f"- Software: Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}\n"
        f"- Load average (1 min) at start / end: {m['load_start']} / {m['load_end']} "
        f"(other jobs share the cores: timings are medians of interleaved repeats, minima in the JSON)\n"
        f"- Model: random CLIP {s['clip_size']} ({s['clip_dims']}); class prompts: {s['num_classes']} "
        f"(HMDB51), 9-12 tokens each; repeats: {s['repeats_note']}\n"
    )
    out.append(_targets(r))
    if r.get("train"):
        out.append(_train_table(r))
    if r.get("text_step"):
        out.append(_text_table(r))
    if r.get("inference"):
        out.append(_inference_table(r))
    if r.get("scaling"):
        out.append(_scaling_table(r))
    if r.get("data"):
        out.append(_data_table(r))
    if r.get("profile"):
        out.append(_profile_table(r))
    return "\n".join(out)


def _targets(r: dict[str, Any]) -> str:
    lines = ["### Targets (issue 9)\n"]
    for t in r.get("targets", []):
        verdict = {True: "**met**", False: "**not met**", None: "not measured"}[t["met"]]
        lines.append(f"- {t['name']}: {verdict}. {t['detail']}")
    return "\n".join(lines) + "\n"


def _train_table(r: dict[str, Any]) -> str:
    rows = []
    for row in r["train"]:
        v = row["video_step"]
        rows.append(
            [
                row["precision"],
                str(row["frames"]),
                str(row["batch"]),
                f"`{row['subject']}`",
                f"{_s(v['median_s'])} [{_s(v['min_s'])}]",
                _x(row.get("video_vs_baseline")),
                _x(row.get("video_vs_floor")),
                _s(row.get("recognition_step_s")),
                _x(row.get("recognition_vs_baseline")),
                _mib(v.get("peak_mib")),
            ]
        )
    return (
        "### Training step: STOP against the frozen-CLIP meanP baseline, same batch\n\n"
        "Video step = forward, loss against class text features, backward, AdamW step "
        "(median [min] seconds). "
        f"`{FLOOR}` is the baseline plus the backward through the frozen CLIP to the pixels, which every "
        "prompt method inside the tower pays: the floor. Recognition step = video step + the text side "
        "(class prompts re-encoded with gradient every step by the presets whose text side trains, "
        "table below); "
        f"for `{BASELINE}` and `{FLOOR}` the text features are cached. Peak = memory the step adds above the "
        "resident model (CPU: peak RSS; GPU: max allocated).\n\n"
        + _table(
            [
                "precision",
                "T",
                "B",
                "model",
                "video step s",
                "x meanP",
                "x floor",
                "recognition step s",
                "x meanP",
                "peak MiB",
            ],
            rows,
            "lrrlrrrrrr",
        )
    )


def _text_table(r: dict[str, Any]) -> str:
    rows = [
        [
            t["precision"],
            str(t["num_classes"]),
            f"{_s(t['step']['median_s'])} [{_s(t['step']['min_s'])}]",
            _mib(t["step"].get("peak_mib")),
        ]
        for t in r["text_step"]
    ]
    return (
        "### Text side of a recognition step (presets with text prompts / text adapters)\n\n"
        "Forward + backward of the class prompts through the prompted text tower; "
        "independent of frames and batch.\n\n"
        + _table(["precision", "classes", "fwd+bwd s", "peak MiB"], rows)
    )


def _inference_table(r: dict[str, Any]) -> str:
    rows = [
        [
            i["precision"],
            str(i["frames"]),
            str(i["batch"]),
            f"`{i['subject']}`",
            _s(i["clips_per_s"]),
            _x(i.get("vs_baseline")),
            _mib(i["forward"].get("peak_mib")),
        ]
        for i in r["inference"]
    ]
    return (
        "### Inference (video forward, no gradient)\n\n"
        "x meanP = time per clip relative to the baseline (higher is slower).\n\n"
        + _table(["precision", "T", "B", "model", "clips/s", "x meanP", "peak MiB"], rows, "lrrlrrr")
    )


def _scaling_table(r: dict[str, Any]) -> str:
    rows = [
        [
            f"`{x['subject']}`",
            x["precision"],
            str(x["frames"]),
            str(x["batch"]),
            _s(x["step"]["median_s"]),
            _s(x["step"]["median_s"] / x["batch"]),
            _mib(x["step"].get("peak_mib")),
            _x(x.get("vs_baseline")),
        ]
        for x in r["scaling"]
    ]
    return (
        f"### Scaling with frames and batch size ({r['settings']['scaling_note']})\n\n"
        "Video training step (as above, text side excluded).\n\n"
        + _table(
            ["model", "precision", "T", "B", "step s", "s per clip", "peak MiB", "x meanP"], rows, "llrrrrrr"
        )
    )


def _data_table(r: dict[str, Any]) -> str:
    d = r["data"]
    if d.get("error"):
        return f"### Data loading\n\nNot measured: {d['error']}\n"
    rows = [
        [
            str(x["frames"]),
            str(x["workers"]),
            _s(x["clips_per_s"], 1),
            _s(x.get("consumed_clips_per_s"), 2),
            _x(x.get("headroom")),
        ]
        for x in d["rows"]
    ]
    return f"### Data loading against what training consumes\n\n{d['about']}\n\n" + _table(
        ["T", "workers", "loader clips/s", "training consumes clips/s", "loader / training"], rows, "rrrrr"
    )


def _profile_table(r: dict[str, Any]) -> str:
    p = r["profile"]
    rows = [
        [x["module"], f"{x['forward_ms']:.0f}", f"{x['backward_ms']:.0f}", f"{100 * x['share']:.1f}%"]
        for x in p["rows"]
        if x["share"] >= 0.001
    ]
    ops = [[f"`{o['op']}`", f"{o['self_ms']:.0f}", str(o["calls"])] for o in p["top_ops"]]
    return (
        f"### Where the STOP step goes (torch.profiler, by module): {p['about']}\n\n"
        f"Self {p.get('clock', 'CPU')} time of every op, attributed to the innermost labelled module "
        "it ran in; backward ops are "
        "matched to the forward op that created them (autograd sequence numbers). "
        "The profiler adds overhead: "
        f"{p['profiled_wall_s']:.2f} s profiled against {p['unprofiled_s']:.2f} s unprofiled.\n\n"
        + _table(["module", "forward ms", "backward ms", "share"], rows, "lrrr")
        + "\nTop ops (self time, forward and backward):\n\n"
        + _table(["op", "self ms", "calls"], ops, "lrr")
    )
