"""`make bench` smoke test: every section on a tiny CLIP in seconds; the JSON and markdown it writes.

Not a timing test: nothing here asserts a speed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402
from benchmarks.run import ALL_SECTIONS, plan_for, run  # noqa: E402


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    return run(
        plan_for("tiny", cpu),
        cpu,
        ALL_SECTIONS,
        cache_dir=tmp_path_factory.mktemp("bench_cache"),
        command="test",
        log=lambda _: None,
    )


def test_every_section_is_measured(results):
    subjects = {r["subject"] for r in results["train"]}
    assert subjects == {"clip4clip_meanp", "clip_fwd_bwd", "stop_fast"}
    for row in results["train"]:
        step = row["video_step"]
        assert step["median_s"] > 0 and len(step["times_s"]) >= 1
        assert row["video_vs_baseline"] > 0 and row["video_vs_floor"] > 0
        assert row["recognition_step_s"] >= step["median_s"]
    baseline = next(r for r in results["train"] if r["subject"] == report.BASELINE)
    assert baseline["video_vs_baseline"] == pytest.approx(1.0)
    assert [t["precision"] for t in results["text_step"]] == ["fp32"]
    assert {i["subject"] for i in results["inference"]} == {"clip4clip_meanp", "stop_fast"}
    assert [(s["frames"], s["batch"]) for s in results["scaling"]] == [(2, 1), (2, 1), (4, 1), (4, 1)]
    assert results["data"]["rows"][0]["clips_per_s"] > 0 and "headroom" in results["data"]["rows"][0]
    modules = {r["module"] for r in results["profile"]["rows"]}
    assert any(m.startswith("temporal generator") for m in modules) and "CLIP vision MLP" in modules
    assert sum(r["share"] for r in results["profile"]["rows"]) == pytest.approx(1.0)
    assert [t["met"] in (True, False) for t in results["targets"]] == [True]


def test_peak_memory_is_read_on_linux(results):
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("peak RSS reset needs Linux /proc")
    assert all(r["video_step"]["peak_mib"] is not None for r in results["train"])


def test_json_and_markdown_outputs(results, tmp_path):
    md, js = tmp_path / "benchmarks.md", tmp_path / "benchmarks.json"
    placeholder = f"{report._begin('cpu')}\nold tables\n{report._end('cpu')}\n"
    md.write_text(
        f"# Benchmarks\n\nHand-written intro.\n\n{placeholder}\n"
        "## What was optimised\n\nHand-written notes.\n"
    )
    report.write_markdown(results, md)
    report.write_markdown(results, md)  # replaced in place, not appended twice
    report.write_json(results, js)
    report.write_json({**results, "device_key": "cuda"}, js)  # another device keeps its own entry

    report.write_markdown({**results, "device_key": "cuda"}, md)

    text = md.read_text()
    assert text.count("<!-- BEGIN GENERATED: cpu") == 1 and text.count("<!-- END GENERATED: cpu -->") == 1
    assert "old tables" not in text
    assert text.index("END GENERATED: cpu") < text.index("BEGIN GENERATED: cuda")  # blocks side by side
    assert text.index("END GENERATED: cuda") < text.index("Hand-written notes.")
    assert "Hand-written intro." in text and "Hand-written notes." in text
    for heading in (
        "### Targets",
        "### Training step",
        "### Inference",
        "### Scaling",
        "### Data loading",
        "### Where the STOP step goes",
    ):
        assert heading in text
    assert results["generated"] in text and results["machine"]["description"] in text

    data = json.loads(js.read_text())
    assert set(data) == {"cpu", "cuda"}
    for key in (
        "machine",
        "settings",
        "train",
        "text_step",
        "inference",
        "scaling",
        "data",
        "profile",
        "targets",
        "wall_s",
    ):
        assert key in data["cpu"]


def test_search_benchmark_times_the_search():
    from benchmarks.search import main, time_search

    times = time_search(videos=1000, dim=8, queries=2, k=3, repeats=2, chunk_rows=300)
    assert len(times) == 2 and all(t > 0 for t in times)
    assert main(["--videos", "500", "--dim", "8", "--queries", "1,4", "--repeats", "1"]) == 0


def test_long_videos_block_is_written_once_and_replaced(tmp_path):
    from benchmarks import long_videos

    page = tmp_path / "bench.md"
    page.write_text("# Benchmarks\n\nhand-written notes\n")
    args = ["--size", "tiny", "--frames", "4", "--out", str(page)]
    assert long_videos.main(args) == 0 and long_videos.main(args) == 0
    text = page.read_text()
    assert text.count("<!-- BEGIN GENERATED: long-videos cpu tiny") == 1 and "hand-written notes" in text
    row = next(line for line in text.splitlines() if line.startswith("| `stop_fast`"))
    without, with_ = (float(v.replace(",", "")) for v in row.split("|")[2:4])
    assert without >= 0 and with_ >= 0  # peak RSS above the resident model, both cases measured


def test_launch_count_counts_operators_not_views_and_each_once():
    """The launch count of `benchmarks/launches.py` on steps whose operators are known: views are free,
    a copy a view makes is one, an operator's own sub-operators are not counted again."""
    from benchmarks.launches import count_launches

    x = torch.randn(4, 6)
    cpu = torch.device("cpu")
    assert count_launches(lambda: (x + 1).mul_(2).view(-1).t().sum(), cpu)["launches"] == 3
    assert count_launches(lambda: x.t().reshape(-1), cpu)["launches"] == 1  # non-contiguous: a copy
    assert count_launches(lambda: x.reshape(-1), cpu)["launches"] == 0  # contiguous: a view
    # linear runs addmm/matmul inside itself: one launch; layer_norm likewise
    lin = torch.nn.Linear(6, 3)
    assert count_launches(lambda: torch.nn.functional.layer_norm(lin(x), (3,)), cpu)["launches"] == 2


def test_launch_table_smoke(tmp_path):
    from benchmarks.launches import main

    out = tmp_path / "launches.md"
    assert main(["--tiny", "--no-compile", "--label", "smoke", "--out", str(out), "--sections", "train"]) == 0
    text = out.read_text()
    assert "| `clip_fwd_bwd` | eager |" in text and "| `stop_fast` | eager |" in text
    data = json.loads(out.with_suffix(".json").read_text())["cpu-launches-smoke"]
    floor = next(r for r in data["rows"] if r["subject"] == report.FLOOR)
    fast = next(r for r in data["rows"] if r["subject"] == "stop_fast")
    assert floor["launches_vs_floor"] == 1.0 and fast["launches"] > floor["launches"] > 0
    assert fast["launches_vs_floor"] == pytest.approx(fast["launches"] / floor["launches"])
    # the breakdown gives every launch of the eager step to exactly one module (forward or backward)
    for row in (floor, fast):
        parts = data["breakdown"][row["subject"]]
        assert sum(c["forward"] + c["backward"] for c in parts.values()) == row["launches"]
    assert "adapters" in data["breakdown"]["stop_fast"] and "adapters" not in data["breakdown"][report.FLOOR]
    assert fast["launches"] > data["breakdown"]["stop_fast"]["adapters"]["backward"] > 0
    assert "Where the eager launches go" in text
