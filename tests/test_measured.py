"""The demo's summary line: the range this project measured for a run's exact setting, or nothing."""

from __future__ import annotations

import json

from stop_lightning.config import load_config
from stop_lightning.measured import measured_line, setting_fingerprint, write_measured


def write_table(path, preset="stop_fast", lo=0.6364, hi=1.0, mean=0.87):
    stats = {preset: {"mean": mean, "min": lo, "max": hi, "n": 10, "seeds": [0, 1, 2, 3, 4]}}
    stats[preset]["threads"] = {"1": {"mean": 0.9}, "2": {"mean": 0.85}}
    runs = [{"key": preset, "seed": 0, "threads": 1, "seconds": 1.0, "metrics": {"test/top1": hi}}]
    fingerprint = setting_fingerprint(load_config("demo", [f"model.preset={preset}"]))
    write_measured(path, "demo", "test/top1", stats, {preset: fingerprint}, "make demo-table", runs)


def test_a_run_of_the_measured_setting_is_told_the_range(tmp_path):
    write_table(tmp_path / "demo.json")
    # Seed, paths and the progress bar are not part of the setting.
    cfg = load_config("demo", ["seed=7", f"paths.output_dir={tmp_path}", "trainer.enable_progress_bar=false"])
    line = measured_line(cfg, {"test/top1": 0.9318}, tmp_path)
    assert line is not None and line.startswith("model.preset=stop_fast: test/top1 0.932, within the range")
    assert "5 seeds x 1/2 threads: 0.636-1.000, mean 0.870" in line and "make demo-table" in line
    below = measured_line(cfg, {"test/top1": 0.5}, tmp_path)
    assert below is not None and "0.500, outside the range" in below


def test_any_other_setting_is_told_nothing(tmp_path):
    write_table(tmp_path / "demo.json")
    for overrides in (["trainer.max_epochs=17"], ["model.preset=dgl"], ["model.temporal.alpha=0.5"]):
        assert measured_line(load_config("demo", overrides), {"test/top1": 1.0}, tmp_path) is None
    assert measured_line(load_config("demo"), {"test/top5": 1.0}, tmp_path) is None  # another metric


def test_a_missing_or_damaged_table_is_told_nothing(tmp_path):
    cfg = load_config("demo")
    assert measured_line(cfg, {"test/top1": 1.0}, tmp_path) is None
    for text in ("", "{", json.dumps({"presets": {}}), json.dumps([1, 2])):
        (tmp_path / "demo.json").write_text(text)
        assert measured_line(cfg, {"test/top1": 1.0}, tmp_path) is None


def test_the_committed_table_matches_the_demo_as_it_is_now():
    """experiments/measured/demo.json was made from the demo's current settings: when the demo or a
    preset changes, `make demo-table` must be run again (this fails until it is)."""
    from stop_lightning.measured import MEASURED_DIR, read_measured

    table = read_measured(MEASURED_DIR / "demo.json")
    for preset, entry in table["presets"].items():
        cfg = load_config("demo", [f"model.preset={preset}"])
        assert entry["fingerprint"] == setting_fingerprint(cfg), preset
        assert entry["n"] >= 10 and len(entry["seeds"]) >= 5 and set(entry["threads"]) >= {"1", "2"}
        values = [r["test/top1"] for r in table["runs"] if r["key"] == preset]
        assert len(values) == entry["n"]
        assert (min(values), max(values)) == (entry["min"], entry["max"])
        assert abs(sum(values) / len(values) - entry["mean"]) < 1e-12
