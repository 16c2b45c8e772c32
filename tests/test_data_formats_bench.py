"""`make bench`'s shard loader table: each path's loader rate and the loader cores one GPU needs."""

from __future__ import annotations

from benchmarks.data_formats import LOADER_CLIPS, render_train_path


def _result(loaders: dict) -> dict:
    return {
        "gpu_clips_per_s": 1630.0,
        "jpeg_codec": "torchvision",
        "train_path": [{"encoding": "kinetics", "train_item_per_core_s": 90.0, "loader_1_worker": loaders}],
    }


def _cells(markdown: str) -> dict[str, str]:
    rows = [line.strip("|").split("|") for line in markdown.splitlines() if line.startswith("| ")]
    header, body = [c.strip() for c in rows[0]], [c.strip() for c in rows[2]]  # rows[1]: the alignment
    return dict(zip(header, body))


def test_the_table_sets_the_bytes_path_beside_the_decoding_ones():
    rates = {"float32": 50.0, "uint8": 85.0, "bytes": 1000.0}
    loaders = {c: {"clips_per_cpu_s": rates[c], "clips_per_s": 2 * rates[c], "startup_s": 1.5} for c in rates}
    cells = _cells(render_train_path(_result(loaders), {("kinetics", "shards", 12): 170.0}))
    assert LOADER_CLIPS == ("float32", "uint8", "bytes")
    assert [cells[f"loader, {n}"] for n in ("float32 clips", "uint8 clips", "JPEG bytes")] == [
        "50.0",
        "85.0",
        "1000.0",
    ]
    # 1630 / 50 = 32.6, 1630 / 85 = 19.2, 1630 / 1000 = 1.63
    assert cells["loader cores for one GPU (float32 / uint8 / bytes)"] == "33 / 19 / 2"
    assert cells["wall clips/s (bytes)"] == "2000.0" and cells["decode only"] == "170.0"


def test_a_result_without_the_bytes_path_still_renders():
    loaders = {
        c: {"clips_per_cpu_s": 60.0, "clips_per_s": 60.0, "startup_s": 1.0} for c in ("float32", "uint8")
    }
    cells = _cells(render_train_path(_result(loaders), {("kinetics", "shards", 12): 170.0}))
    assert cells["loader, JPEG bytes"] == "n/a" and cells[
        "loader cores for one GPU (float32 / uint8 / bytes)"
    ] == ("27 / 27 / n/a")
