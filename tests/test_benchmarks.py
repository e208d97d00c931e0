"""The benchmark runner end to end on one small scenario (hand-written JAX and fnn only):
checks the records, the ratios it derives and the files it writes, never the speed."""

import json
import math

from benchmarks import run
from benchmarks.frameworks import LABELS
from benchmarks.report import summarize


def test_quick_run_writes_consistent_results(tmp_path):
    results = run.main(
        [
            "--quick",
            "--scenarios",
            "tiny_mlp",
            "--frameworks",
            "jax,fnn",
            "--variants",
            "jax_scan10,fnn_step",
            "--repeats",
            "2",
            "--steps-scale",
            "0.1",
            "--block-seconds",
            "0",  # blocks keep their 10 steps however loaded the machine is
            "--output",
            str(tmp_path),
            "--note",
            "test run",
        ]
    )
    on_disk = json.loads((tmp_path / "results-quick.json").read_text())
    assert on_disk["scenarios"] == json.loads(json.dumps(results["scenarios"]))
    assert [(r["framework"], r["scenario"]) for r in on_disk["records"]] == [
        ("jax", "tiny_mlp"),
        ("fnn", "tiny_mlp"),
    ]
    rows = on_disk["scenarios"]["tiny_mlp"]["rows"]
    for key in ("jax_jit", "jax_scan10", "fnn_step"):
        row = rows[key]
        assert row["status"] == "ok", row
        assert len(row["samples_us"]) == 2
        assert row["min_us"] <= row["median_us"] <= row["max_us"]
        assert row["median_us"] > 0 and row["first_call_s"] > 0 and row["peak_rss_mb"] > 0
        assert row["steps_per_block"] == 10
        assert row["steps_per_call"] == (10 if key == "jax_scan10" else 1)
        assert math.isclose(row["ratio"], row["median_us"] / rows["jax_jit"]["median_us"])
        assert len(row["cpu_samples_us"]) == 2 and row["cpu_median_us"] > 0
        cpu_ratio = row["cpu_median_us"] / rows["jax_jit"]["cpu_median_us"]
        assert math.isclose(row["cpu_ratio"], cpu_ratio)
    assert rows["jax_jit"]["ratio"] == 1.0
    # Compile ratios compare calls that run the same number of steps.
    assert rows["jax_scan10"]["compile_ratio"] == 1.0
    assert math.isclose(
        rows["fnn_step"]["compile_ratio"],
        rows["fnn_step"]["first_call_s"] / rows["jax_jit"]["first_call_s"],
    )
    targets = {t["what"]: t for t in on_disk["scenarios"]["tiny_mlp"]["targets"]}
    step_target = targets["fnn_step time / jax_jit"]
    assert step_target["limit"] == 1.03
    assert step_target["met"] == (step_target["value"] <= 1.03)
    assert step_target["cpu_met"] == (step_target["cpu_value"] <= 1.03)
    markdown = (tmp_path / "RESULTS-quick.md").read_text()
    assert "Date: " in markdown and "Versions: " in markdown and "jax 0.10.2" in markdown
    assert "Note: test run" in markdown
    assert f"| {LABELS['jax_jit']} | 1.00x (1.00x) |" in markdown
    assert "## tiny_mlp: tiny MLP 64-64-64-10, batch 32" in markdown


def test_summarize_reports_skipped_and_failed_workers():
    records = [
        {
            "framework": "jax",
            "scenario": "mlp",
            "peak_rss_mb": 100.0,
            "variants": {
                "jax_jit": {
                    "status": "ok",
                    "median_us": 10.0,
                    "first_call_s": 2.0,
                    "steps_per_call": 1,
                },
                "jax_scan10": {
                    "status": "ok",
                    "median_us": 5.0,
                    "first_call_s": 4.0,
                    "steps_per_call": 10,
                },
            },
        },
        {
            "framework": "fnn",
            "scenario": "mlp",
            "peak_rss_mb": 120.0,
            "variants": {
                "fnn_step": {
                    "status": "ok",
                    "median_us": 11.0,
                    "first_call_s": 2.2,
                    "steps_per_call": 1,
                },
                "fnn_fit10": {
                    "status": "ok",
                    "median_us": 7.0,
                    "first_call_s": 6.0,
                    "steps_per_call": 10,
                },
                "fnn_fit": {"status": "unavailable", "reason": "no Sequential"},
            },
        },
        {"framework": "haiku", "scenario": "mlp", "skipped": "not installed"},
        {"framework": "keras", "scenario": "mlp", "error": "exit code 1"},
    ]
    s = summarize(records, ["mlp"])["mlp"]
    assert s["skipped"] == {"haiku": "not installed", "keras": "error: exit code 1"}
    assert list(s["rows"]) == ["jax_jit", "jax_scan10", "fnn_step", "fnn_fit", "fnn_fit10"]
    assert math.isclose(s["rows"]["fnn_step"]["ratio"], 1.1)
    assert math.isclose(s["rows"]["fnn_fit10"]["compile_ratio"], 1.5)  # against jax_scan10
    assert "ratio" not in s["rows"]["fnn_fit"]
    met = {t["what"]: t["met"] for t in s["targets"]}
    assert met == {
        "fnn_step time / jax_jit": False,  # 1.10 > 1.03
        "fnn_fit10 time / jax_jit": True,  # 0.70 <= 0.75
        "fnn_step first call / jax_jit": True,  # 1.10 <= 1.2
        "fnn_fit10 first call / jax_scan10": False,  # 1.50 > 1.2
    }
