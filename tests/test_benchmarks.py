"""The benchmark runner end to end on one small scenario (hand-written JAX and fnn only):
checks the records, the ratios it derives and the files it writes, never the speed."""

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fnn
from benchmarks import run, worker
from benchmarks.frameworks import FRAMEWORKS, LABELS
from benchmarks.report import summarize, variant_label
from benchmarks.run import ROOT


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
        "fnn_fit10 time / jax_scan10": False,  # 7.0 / 5.0 = 1.4 > 1.10
        "fnn_step first call / jax_jit": True,  # 1.10 <= 1.2
        "fnn_fit10 first call / jax_scan10": False,  # 1.50 > 1.2
    }


def _git(repo, *cmd):
    args = ["git", "-C", str(repo), "-c", "user.name=bench", "-c", "user.email=bench@test", *cmd]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


def test_fnn_base_runs_another_checkout_beside_the_current_one(tmp_path):
    # The "base" checkout: a git copy of this fnn in which fnn.Sequential is gone, so its
    # fit variant must be unavailable while its step runs, and an edit after the commit
    # must show as +dirty.
    base = tmp_path / "base"
    shutil.copytree(
        Path(fnn.__file__).parent, base / "fnn", ignore=shutil.ignore_patterns("__pycache__")
    )
    _git(base, "init", "-q")
    _git(base, "add", "-A")
    _git(base, "commit", "-qm", "base")
    commit = _git(base, "rev-parse", "--short=7", "HEAD")
    with open(base / "fnn" / "__init__.py", "a") as f:
        f.write("\nSequential = None\n")
    out = tmp_path / "out"
    run.main(
        [
            "--quick",
            "--scenarios",
            "tiny_mlp",
            "--frameworks",
            "jax,fnn,fnn_base",
            "--variants",
            "fnn_step,fnn_fit,fnn_base_step,fnn_base_fit",
            "--fnn-base",
            str(base),
            "--repeats",
            "2",
            "--steps-scale",
            "0.1",
            "--block-seconds",
            "0",
            "--output",
            str(out),
        ]
    )
    on_disk = json.loads((out / "results-quick.json").read_text())
    records = {r["framework"]: r for r in on_disk["records"]}
    assert list(records) == ["jax", "fnn", "fnn_base"]
    here = Path(fnn.__file__).resolve().parent.parent
    assert records["fnn"]["fnn_source"]["path"] == str(here)
    assert records["fnn_base"]["fnn_source"] == {
        "path": str(base.resolve()),
        "commit": f"{commit}+dirty",
    }
    rows = on_disk["scenarios"]["tiny_mlp"]["rows"]
    assert list(rows) == ["jax_jit", "fnn_step", "fnn_fit", "fnn_base_step", "fnn_base_fit"]
    assert rows["fnn_fit"]["status"] == "ok"
    assert rows["fnn_base_fit"] == {
        "framework": "fnn_base",
        "peak_rss_mb": records["fnn_base"]["peak_rss_mb"],
        "fnn_source": records["fnn_base"]["fnn_source"],
        "status": "unavailable",
        "reason": "fnn.Sequential is not in this checkout",
    }
    for key in ("fnn_step", "fnn_base_step"):
        row = rows[key]
        assert row["status"] == "ok" and len(row["samples_us"]) == 2
        assert math.isclose(row["ratio"], row["median_us"] / rows["jax_jit"]["median_us"])
    markdown = (out / "RESULTS-quick.md").read_text()
    assert f"| fnn functional step (base {commit}+dirty) | " in markdown
    assert f"- fnn imported by `fnn_base` from {base.resolve()} at {commit}+dirty." in markdown
    assert f"| fnn Model.fit (base {commit}+dirty) | unavailable: fnn.Sequential" in markdown


def test_rounds_alternate_the_order_and_fnn_base_needs_a_checkout(tmp_path, monkeypatch):
    calls = []

    def fake_worker(python, framework, scenario, *args):
        calls.append((framework, scenario, args[-1]))
        return {"framework": framework, "scenario": scenario, "skipped": "fake"}

    monkeypatch.setattr(run, "run_worker", fake_worker)
    common = ["--quick", "--scenarios", "tiny_mlp,mlp", "--output", str(tmp_path)]
    run.main([*common, "--frameworks", "fnn,fnn_base", "--fnn-base", str(ROOT), "--rounds", "3"])
    abc = [("jax", None), ("fnn", None), ("fnn_base", ROOT)]
    order = abc + abc[::-1] + abc
    assert calls == [(fw, s, path) for s in ("tiny_mlp", "mlp") for fw, path in order]
    # By default every framework runs, fnn_base only when a checkout is given.
    calls.clear()
    run.main(common)
    assert [fw for fw, s, _ in calls if s == "mlp"] == [f for f in FRAMEWORKS if f != "fnn_base"]
    calls.clear()
    run.main([*common, "--fnn-base", str(ROOT)])
    assert [fw for fw, s, _ in calls if s == "mlp"] == list(FRAMEWORKS)
    with pytest.raises(SystemExit, match=r"--fnn-base .*: no fnn/__init__.py in that folder"):
        run.main([*common, "--fnn-base", str(tmp_path)])
    with pytest.raises(SystemExit, match="--rounds must be at least 1, got 0"):
        run.main([*common, "--rounds", "0"])


def test_process_per_variant_gives_each_variant_its_own_interleaved_worker(tmp_path, monkeypatch):
    calls = []

    def fake_worker(python, framework, scenario, steps, repeats, timeout, variants, *rest):
        calls.append((framework, tuple(variants)))
        return {"framework": framework, "scenario": scenario, "skipped": "fake"}

    monkeypatch.setattr(run, "run_worker", fake_worker)
    run.main(
        ["--quick", "--scenarios", "lstm", "--output", str(tmp_path), "--frameworks", "fnn",
         "--variants", "fnn_step,fnn_fit", "--rounds", "3", "--process-per-variant"]
    )  # fmt: skip
    # jax_jit (the baseline) is added to the variants; each variant is one worker per round.
    abc = [("jax", ("jax_jit",)), ("fnn", ("fnn_step",)), ("fnn", ("fnn_fit",))]
    assert calls == abc + abc[::-1] + abc


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux CPU affinity")
def test_cpus_pins_the_workers(tmp_path, monkeypatch, capsys):
    """--cpus runs each worker on those CPUs only (the worker reports its affinity) and says
    so in the report; without CPU affinity (not Linux) it is refused with a message."""
    record = run.run_worker(
        sys.executable, "jax", "tiny_mlp", 10, 1, 300.0, ["jax_jit"], 0.0, None, cpus=(0,)
    )
    assert record["cpus"] == [0] and record["variants"]["jax_jit"]["status"] == "ok", record
    seen = []

    def fake_worker(*args, **kwargs):
        seen.append(kwargs.get("cpus"))
        return {"framework": args[1], "scenario": args[2], "skipped": "fake"}

    monkeypatch.setattr(run, "run_worker", fake_worker)
    run.main(["--quick", "--frameworks", "jax", "--output", str(tmp_path), "--cpus", "0"])
    assert seen == [(0,)]
    assert (
        "- Note: Workers pinned to CPU(s) 0 (--cpus)."
        in (tmp_path / "RESULTS-quick.md").read_text()
    )
    capsys.readouterr()
    monkeypatch.delattr(os, "sched_setaffinity")
    with pytest.raises(SystemExit):
        run.main(["--quick", "--frameworks", "jax", "--output", str(tmp_path), "--cpus", "0"])
    assert "--cpus needs os.sched_setaffinity (Linux)" in capsys.readouterr().err


def test_fnn_base_worker_without_a_checkout_is_skipped():
    record = worker.main(["fnn_base", "tiny_mlp", "--steps", "10", "--repeats", "1"])
    assert record["skipped"] == "no --fnn-base checkout given"
    assert "fnn_source" not in record and record["variants"] == {}


def test_summarize_pools_the_rounds_of_a_variant():
    def rec(framework, variants, rss):
        return {"framework": framework, "scenario": "mlp", "peak_rss_mb": rss, "variants": variants}

    def ok(samples, cpu, first, steps):
        return {
            "status": "ok",
            "samples_us": samples,
            "median_us": statistics.median(samples),
            "min_us": min(samples),
            "max_us": max(samples),
            "cpu_samples_us": cpu,
            "cpu_median_us": statistics.median(cpu),
            "first_call_s": first,
            "setup_s": first / 2,
            "steps_per_block": steps,
            "steps_per_call": 1,
        }

    source = {"path": "/old", "commit": "abc1234"}
    records = [
        rec("jax", {"jax_jit": ok([4.0, 6.0], [4.0, 4.0], 1.0, 50)}, 100.0),
        {**rec("fnn_base", {"fnn_base_step": ok([9.0, 1.0], [2.0, 8.0], 3.0, 50)}, 90.0),
         "fnn_source": source},
        {**rec("fnn_base", {"fnn_base_step": ok([5.0, 7.0], [6.0, 6.0], 5.0, 40)}, 95.0),
         "fnn_source": source},
        rec("jax", {"jax_jit": ok([10.0, 8.0], [12.0, 4.0], 2.0, 50)}, 110.0),
        rec("fnn", {"fnn_fit": ok([1.0], [1.0], 1.0, 50)}, 80.0),
        rec("fnn", {"fnn_fit": {"status": "error", "reason": "boom"}}, 80.0),
    ]  # fmt: skip
    rows = summarize(records, ["mlp"])["mlp"]["rows"]
    base = rows["jax_jit"]
    assert base["samples_us"] == [4.0, 6.0, 10.0, 8.0]
    assert base["median_us"] == np.median([4.0, 6.0, 10.0, 8.0]) == 7.0
    assert (base["min_us"], base["max_us"]) == (4.0, 10.0)
    assert base["peak_rss_mb"] == 110.0 and base["rounds"] == 2
    row = rows["fnn_base_step"]
    assert row["median_us"] == np.median([9.0, 1.0, 5.0, 7.0]) == 6.0
    assert row["cpu_median_us"] == np.median([2.0, 8.0, 6.0, 6.0]) == 6.0
    assert (row["first_call_s"], row["setup_s"], row["steps_per_block"]) == (4.0, 2.0, 40)
    assert math.isclose(row["ratio"], 6.0 / 7.0)
    assert math.isclose(row["cpu_ratio"], 6.0 / np.median([4.0, 4.0, 12.0, 4.0]))
    assert math.isclose(row["compile_ratio"], 4.0 / 1.5)
    assert rows["fnn_fit"]["status"] == "error"
    assert rows["fnn_fit"]["reason"] == "round 2 of 2: boom"
    assert variant_label("fnn_base_step", row) == "fnn functional step (base abc1234)"
    assert variant_label("fnn_fit") == LABELS["fnn_fit"]


def test_fnn_base_worker_refuses_an_fnn_from_elsewhere(tmp_path, monkeypatch):
    # In this process fnn is already imported from this tree, so the checkout cannot win.
    (tmp_path / "fnn").mkdir()
    (tmp_path / "fnn" / "__init__.py").write_text("")
    monkeypatch.setattr(sys, "path", list(sys.path))  # the worker prepends the checkout
    argv = ["fnn_base", "tiny_mlp", "--steps", "10", "--repeats", "1", "--checkout", str(tmp_path)]
    record = worker.main(argv)
    here = Path(fnn.__file__).resolve().parent.parent
    assert record["error"] == f"fnn was imported from {here}, not {tmp_path.resolve()}"
    assert record["variants"] == {}


def _as_hand_written(kind: str, p: dict) -> dict:
    """fnn's params of the ``resnet``/``transformer`` scenario in impl_jax's layout."""
    from benchmarks.scenarios import RESNET_BLOCKS, RESNET_STAGES, TRANSFORMER_BLOCKS

    if kind == "resnet":
        out = {"stem": p["conv2d"], "head": p["dense"]}
        blocks = iter(p[k] for k in sorted(p, key=lambda k: (len(k), k)) if k.startswith("res"))
        for s in range(len(RESNET_STAGES)):
            if s:
                out[f"down_{s}"] = p[f"conv2d_{s}"]
            for b in range(RESNET_BLOCKS):
                block = next(blocks)
                out[f"block_{s}_{b}"] = {"a": block["conv2d"], "b": block["conv2d_1"]}
        return out
    out = {"embed": p["dense"], "head": p["dense_1"]}
    for b in range(TRANSFORMER_BLOCKS):
        q = p["transformer_encoder_block" + (f"_{b}" if b else "")]
        att = q["attention"]
        d = att["query"]["kernel"].shape[0]
        out[f"block_{b}"] = {
            "ln1": q["norm1"],
            "ln2": q["norm2"],
            "qkv": {
                "kernel": np.concatenate(
                    [att[k]["kernel"].reshape(d, -1) for k in ("query", "key", "value")], axis=1
                ),
                "bias": np.concatenate(
                    [att[k]["bias"].reshape(-1) for k in ("query", "key", "value")]
                ),
            },
            "out": {
                "kernel": att["attention_output"]["kernel"].reshape(-1, d),
                "bias": att["attention_output"]["bias"],
            },
            "ff1": q["ffn"]["dense"],
            "ff2": q["ffn"]["dense_1"],
        }
    return out


@pytest.mark.parametrize("name", ["resnet", "transformer"])
def test_gpu_scenarios_build_the_same_network_in_fnn_and_hand_written_jax(name):
    """The --device gpu models: fnn's layers and impl_jax's hand-written functions compute
    the same logits from the same weights (so their step times compare like for like)."""
    import jax
    import jax.numpy as jnp

    from benchmarks import impl_fnn, impl_jax
    from benchmarks.scenarios import SCENARIOS

    scenario = SCENARIOS[name]
    model = fnn.serial(*impl_fnn.make_layers(scenario))
    x = jnp.asarray(
        np.random.default_rng(0).standard_normal((2, *scenario.input_shape)), jnp.float32
    )
    params, state = model.init(jax.random.key(0), x)
    expected, _ = model.apply(params, state, x)
    got = impl_jax.apply(scenario, _as_hand_written(scenario.kind, params), x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=2e-4, atol=2e-5)
    mapped = jax.tree_util.tree_leaves(_as_hand_written(scenario.kind, params))
    assert sum(np.size(a) for a in mapped) == sum(np.size(a) for a in jax.tree.leaves(params))


def test_device_gpu_refuses_a_machine_without_a_gpu(capsys):
    import jax

    if jax.default_backend() == "gpu":
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit, match="not a GPU"):
        run.main(["--device", "gpu"])


def test_peers_without_a_gpu_scenario_model_are_skipped_not_misbuilt():
    record = worker.main(["haiku", "transformer", "--steps", "10", "--repeats", "1"])
    assert "variants" in record and not record["variants"]
    assert "no transformer model" in record.get("skipped", "") or "not installed" in record.get(
        "skipped", ""
    )
