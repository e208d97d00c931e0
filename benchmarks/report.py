"""Turn the workers' records into ratios, target checks and the Markdown report.

``python -m benchmarks.report benchmarks/results.json`` re-renders ``RESULTS.md`` beside it.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from benchmarks.frameworks import BASELINE, FRAMEWORKS, LABELS
from benchmarks.scenarios import SCENARIOS

# fnn's performance targets (issue 16): (variant, measured against, limit on the time
# ratio, the scenarios it applies to or None for all). Keras fit at least 3x slower than
# fnn fit is asked of the dispatch-bound tiny MLP only (elsewhere both are at the floor).
TIME_TARGETS = (
    ("fnn_step", "jax_jit", 1.03, None),
    ("fnn_fit", "jax_jit", 1.05, None),
    ("fnn_fit10", "jax_scan10", 1.10, None),
    ("fnn_fit", "keras_fit", 1 / 3, ("tiny_mlp",)),
)
# Compile (first call) targets: each against the hand-written variant that runs the same
# number of steps per call.
COMPILE_TARGETS = (
    ("fnn_step", "jax_jit", 1.2),
    ("fnn_fit", "jax_jit", 1.2),
    ("fnn_fit10", "jax_scan10", 1.2),
)
# The peers each fnn variant is compared with (the same kind of loop).
PEERS_OF = {
    "fnn_step": (
        "linen_jit",
        "nnx_jit",
        "nnx_split",
        "haiku_jit",
        "eqx_filter_jit",
        "eqx_partition",
    ),
    "fnn_fit": ("keras_tob", "keras_fit"),
    "fnn_fit10": ("keras_fit10",),
}
ORDER = [key for f in FRAMEWORKS.values() for key, _ in f.variants]


def summarize(records: list[dict], scenarios: list[str]) -> dict:
    """Per scenario: one row per variant with its ratios to hand-written JAX, the
    skipped frameworks, and the target checks. A variant measured by several workers
    (``--rounds``) gets one row of their pooled blocks."""
    out = {}
    for name in scenarios:
        parts, skipped = {}, {}
        for rec in (r for r in records if r["scenario"] == name):
            if "skipped" in rec or "error" in rec:
                skipped[rec["framework"]] = rec.get("skipped") or f"error: {rec['error']}"
                continue
            for key, res in rec["variants"].items():
                parts.setdefault(key, []).append(
                    {
                        "framework": rec["framework"],
                        "peak_rss_mb": rec.get("peak_rss_mb"),
                        **(
                            {"device_peak_mb": rec["device_peak_mb"]}
                            if rec.get("device_peak_mb") is not None
                            else {}
                        ),
                        **({"fnn_source": rec["fnn_source"]} if "fnn_source" in rec else {}),
                        **res,
                    }
                )
        rows = {key: pool_rounds(results) for key, results in parts.items()}
        base = rows.get(BASELINE, {}).get("median_us")
        for row in rows.values():
            if row["status"] != "ok":
                continue
            row["ratio"] = row["median_us"] / base if base else None
            cpu_base = rows[BASELINE].get("cpu_median_us") if base else None
            cpu = row.get("cpu_median_us")
            row["cpu_ratio"] = cpu / cpu_base if cpu and cpu_base else None
            ref = rows.get("jax_scan10" if row["steps_per_call"] > 1 else BASELINE, {})
            ref_first = ref.get("first_call_s")
            row["compile_ratio"] = row["first_call_s"] / ref_first if ref_first else None
            row["examples_per_s"] = SCENARIOS[name].batch * 1e6 / row["median_us"]
        out[name] = {
            "title": SCENARIOS[name].title,
            "rows": {k: rows[k] for k in ORDER if k in rows},
            "skipped": skipped,
            "targets": _targets(rows, name),
        }
    return out


def pool_rounds(results: list[dict]) -> dict:
    """One row from a variant's results in successive workers: all their timed blocks
    (median and min-max over the lot), the median first call and setup, the largest peak
    RSS and the shortest block. A failed round makes the row that failure."""
    if len(results) == 1:
        return results[0]
    for i, res in enumerate(results):
        if res["status"] != "ok":
            return {**res, "reason": f"round {i + 1} of {len(results)}: {res.get('reason', '')}"}
    samples = [v for res in results for v in res["samples_us"]]
    cpu = [v for res in results for v in res.get("cpu_samples_us", ())]
    setup = [res["setup_s"] for res in results if "setup_s" in res]
    return {
        **results[0],
        "samples_us": samples,
        "median_us": statistics.median(samples),
        "min_us": min(samples),
        "max_us": max(samples),
        **({"cpu_samples_us": cpu, "cpu_median_us": statistics.median(cpu)} if cpu else {}),
        "first_call_s": statistics.median(res["first_call_s"] for res in results),
        **({"setup_s": statistics.median(setup)} if setup else {}),
        "peak_rss_mb": max((r["peak_rss_mb"] for r in results if r["peak_rss_mb"]), default=None),
        **(
            {"device_peak_mb": max(r["device_peak_mb"] for r in results if r.get("device_peak_mb"))}
            if any(r.get("device_peak_mb") for r in results)
            else {}
        ),
        "steps_per_block": min(res["steps_per_block"] for res in results),
        "rounds": len(results),
    }


def variant_label(key: str, row: dict | None = None) -> str:
    """The table label of a variant; an ``fnn_base`` label names the commit its row ran."""
    commit = ((row or {}).get("fnn_source") or {}).get("commit", "unknown commit")
    return LABELS[key].format(commit=commit)


def _ok(rows, key):
    row = rows.get(key)
    return row if row and row["status"] == "ok" else None


def _check(what: str, value: float, limit: float, cpu_value: float | None = None) -> dict:
    check = {"what": what, "value": value, "limit": limit, "met": value <= limit}
    if cpu_value is not None:
        check.update(cpu_value=cpu_value, cpu_met=cpu_value <= limit)
    return check


def _time_check(what: str, a: dict, b: dict, limit: float) -> dict:
    cpu = a.get("cpu_median_us"), b.get("cpu_median_us")
    cpu_value = cpu[0] / cpu[1] if all(cpu) else None
    return _check(what, a["median_us"] / b["median_us"], limit, cpu_value)


def _targets(rows: dict, scenario: str) -> list[dict]:
    checks = []
    for key, ref, limit, scenarios in TIME_TARGETS:
        a, b = _ok(rows, key), _ok(rows, ref)
        if a and b and (scenarios is None or scenario in scenarios):
            checks.append(_time_check(f"{key} time / {ref}", a, b, limit))
    for key, ref, limit in COMPILE_TARGETS:
        a, b = _ok(rows, key), _ok(rows, ref)
        if a and b:
            value = a["first_call_s"] / b["first_call_s"]
            checks.append(_check(f"{key} first call / {ref}", value, limit))
    for key, peers in PEERS_OF.items():
        a = _ok(rows, key)
        for peer in peers:
            b = _ok(rows, peer)
            if a and b:
                checks.append(_time_check(f"{key} time / {peer}", a, b, 1.0))
    return checks


def _us(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def _s(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _rate(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def _mb(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def _yes(met: bool) -> str:
    return "yes" if met else "**no**"


def _x(v) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


# The benchmarks that other scripts write beside this report (each its own interleaved run).
OTHER_RESULTS = (
    "- Other results, each from its own interleaved run: the research transforms (an 8-member "
    "ensemble and an 8-value learning-rate sweep vs 8 fits, the DP-SGD step vs the ordinary "
    "step) in [RESULTS-research.md](RESULTS-research.md) (`benchmarks/bench_research.py`); "
    "batched `fnn tune` trials in [RESULTS-tune.md](RESULTS-tune.md) (`benchmarks/bench_tune.py`)."
)


def write_markdown(results: dict, path: Path) -> None:
    meta, scen = results["meta"], results["scenarios"]
    versions: dict[str, str] = {}
    devices = set()
    for rec in results["records"]:
        versions.update({k: v for k, v in rec.get("versions", {}).items() if v})
        if rec.get("device"):
            devices.add(rec["device"])
    m = meta["machine"]
    lines = [
        "# fnn benchmark results"
        + (" (quick smoke run, not for quoting)" if meta["quick"] else ""),
        "",
        *(
            []
            if meta.get("complete", True)
            else ["- **Incomplete run (interrupted or still running).**"]
        ),
        f"- Date: {meta['date_utc']}; command: `{meta['command']}`; total {meta['total_s']} s.",
        f"- Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['platform']}, Python {m['python']}; "
        f"JAX device: {', '.join(sorted(devices)) or 'n/a'}.",
        f"- Load average (1, 5, 15 min) at start {meta['load_average_start']}, at end {meta['load_average_end']}.",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + ".",
        f"- Each figure: median over {meta['repeats'] * meta.get('rounds', 1)} timed blocks of per-step time (the compiling first "
        "call and a warm-up call excluded, `block_until_ready` at the end of each block; a block of a slow "
        f"variant is shrunk to about {meta.get('block_seconds', 0)} s, never below one call; the steps per "
        "block are in results.json); spread is min-max over the blocks; "
        "ratios are to the hand-written JAX jit step in the same run; first call = the call that compiles "
        "(one step, or one 10-step execution) including its run; setup = building the model, its "
        "parameters, optimizer state and device batches; peak RSS is per worker process "
        "(one process per framework and scenario).",
    ]
    sources = {r["framework"]: r["fnn_source"] for r in results["records"] if "fnn_source" in r}
    lines += [
        f"- fnn imported by `{fw}` from {src['path']} at {src['commit']}."
        for fw, src in sorted(sources.items())
    ]
    if meta.get("rounds", 1) > 1:
        lines.append(
            f"- {meta['rounds']} rounds: each scenario's workers ran {meta['rounds']} times, in "
            "reversed order every other round; each figure pools the blocks of all rounds "
            f"({meta['repeats']} per worker)."
        )
    lines += [f"- Note: {n}" for n in meta.get("notes", [])]
    lines.append(OTHER_RESULTS)
    lines += [
        "",
        "## Headline: per-step time as a ratio to hand-written JAX (lower is better)",
        "",
        "Wall-clock ratio, then in parentheses the ratio of process CPU time per step (all threads), "
        "which other jobs on the machine disturb much less.",
        "",
    ]
    names = list(scen)
    lines.append("| implementation | " + " | ".join(names) + " |")
    lines.append("| --- |" + " ---: |" * len(names))
    for key in ORDER:
        cells, first = [], None
        for n in names:
            row = scen[n]["rows"].get(key)
            first = first or row
            if row is None:
                cells.append("skipped")
            elif row["status"] != "ok":
                cells.append(row["status"])
            else:
                cells.append(f"{_x(row['ratio'])} ({_x(row.get('cpu_ratio'))})")
        if any(c != "skipped" for c in cells):
            lines.append(f"| {variant_label(key, first)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## fnn targets",
        "",
        "| scenario | check | wall value | limit | met | CPU-time value | met (CPU) |",
        "| --- | --- | ---: | ---: | :---: | ---: | :---: |",
    ]
    for n in names:
        for t in scen[n]["targets"]:
            cpu = f"{t['cpu_value']:.2f} | {_yes(t['cpu_met'])}" if "cpu_value" in t else "| "
            lines.append(
                f"| {n} | {t['what']} | {t['value']:.2f} | {t['limit']:.2f} | {_yes(t['met'])} | {cpu} |"
            )
    lines += ["", "Why the misses happen and what would fix them: [README.md](README.md#findings)."]
    for n in names:
        s = scen[n]
        lines += ["", f"## {n}: {s['title']}", ""]
        lines.append(
            "| implementation | us/step (median) | spread (min-max) | x JAX | CPU us/step | x JAX (CPU) "
            "| setup (s) | first call (s) | x JAX first call | peak RSS (MB) | examples/s "
            "| device peak (MB) |"
        )
        lines.append("| --- |" + " ---: |" * 11)
        for key, row in s["rows"].items():
            if row["status"] != "ok":
                lines.append(
                    f"| {variant_label(key, row)} | {row['status']}: {row.get('reason', '')} "
                    "| | | | | | | | | | |"
                )
                continue
            label = variant_label(key, row) + (f" ({row['note']})" if row.get("note") else "")
            lines.append(
                f"| {label} | {_us(row['median_us'])} | {_us(row['min_us'])}-{_us(row['max_us'])} "
                f"| {_x(row['ratio'])} | {_us(row.get('cpu_median_us'))} | {_x(row.get('cpu_ratio'))} "
                f"| {_s(row.get('setup_s'))} | {row['first_call_s']:.2f} | {_x(row['compile_ratio'])} "
                f"| {row['peak_rss_mb']:.0f} | {_rate(row.get('examples_per_s'))} "
                f"| {_mb(row.get('device_peak_mb'))} |"
            )
        for fw, why in s["skipped"].items():
            lines.append(f"| {fw} | skipped: {why} | | | | | | | | | | |")
    lines += [
        "",
        "## Reproduce",
        "",
        "```bash",
        'pip install -e ".[bench]"   # flax, dm-haiku, equinox, keras; peers not installed are skipped',
        meta["command"],
        "```",
        "",
    ]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    import json
    import sys

    source = Path(sys.argv[1])
    data = json.loads(source.read_text())
    gpu = "-gpu" if data["meta"].get("device") == "gpu" else ""
    name = f"RESULTS{gpu}{'-quick' if data['meta'].get('quick') else ''}.md"
    write_markdown(data, source.parent / name)
