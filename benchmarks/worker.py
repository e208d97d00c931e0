"""Run one framework's variants on one scenario in this process and print a JSON record.

``python -m benchmarks.worker FRAMEWORK SCENARIO --steps N --repeats R [--variants a,b]
[--checkout PATH]``. The runner starts one worker per (framework, scenario), so peak RSS is
per process. ``--checkout`` (the ``fnn_base`` framework) imports fnn from that checkout.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

from benchmarks.common import UnavailableError
from benchmarks.frameworks import FRAMEWORKS
from benchmarks.scenarios import BASE_KINDS, SCENARIOS, make_pool

MARKER = "BENCH-RESULT "


def time_bench(bench, steps: int, repeats: int, block_seconds: float = 0.0) -> dict:
    """First call (compile + one execution), a second call (warm-up, and the time of
    one call), then ``repeats`` timed blocks of ``steps`` steps; per-step microseconds.
    ``fit``-style benches (one block = one epoch of ``steps`` batches, never shrunk) warm
    up with one untimed epoch of that length instead (a dataset of a new length may
    compile again; a user's later epochs would not).

    With ``block_seconds`` a block shrinks (to no less than one call) so that it lasts
    about that long: slow variants on a busy machine still finish in bounded time.
    """
    unit = bench.unit
    t0 = time.perf_counter()
    bench.run(unit)
    first_call_s = time.perf_counter() - t0
    if bench.warm_block:
        # A fit-style block is one epoch whose fixed cost is part of the figure: its length stays.
        bench.run(steps)
    else:
        t0 = time.perf_counter()
        bench.run(unit)
        call_s = time.perf_counter() - t0
        if block_seconds > 0:
            fits = int(block_seconds / max(call_s, 1e-9)) * unit
            steps = max(unit, min(steps, fits))
    per_step, cpu_per_step = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        bench.run(steps)
        per_step.append((time.perf_counter() - t0) / steps * 1e6)
        # CPU time of all this process's threads: far less sensitive to other jobs.
        cpu_per_step.append((time.process_time() - c0) / steps * 1e6)
    return {
        "median_us": statistics.median(per_step),
        "cpu_median_us": statistics.median(cpu_per_step),
        "cpu_samples_us": cpu_per_step,
        "min_us": min(per_step),
        "max_us": max(per_step),
        "samples_us": per_step,
        "first_call_s": first_call_s,
        "steps_per_block": steps,
        "steps_per_call": bench.unit,
        **({"note": bench.note} if bench.note else {}),
    }


def _warm_up_process() -> None:
    """Pay the process's one-time start-up costs (backend, tracing and lowering machinery,
    optax) on a throw-away training step, so they land in no variant's first call."""
    import jax
    import jax.numpy as jnp
    import optax

    optimizer = optax.adam(1e-3)
    params = {"w": jnp.ones((4, 4))}

    def step(params, opt_state, x):
        grads = jax.grad(lambda p: jnp.sum(jnp.tanh(x @ p["w"]) ** 2))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    jax.block_until_ready(jax.jit(step)(params, optimizer.init(params), jnp.ones((2, 4))))


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def fnn_source() -> dict | None:
    """Where the imported fnn comes from: its checkout folder and that folder's git commit
    (``+dirty`` if tracked files under ``fnn/`` differ from it), or None if fnn is not imported."""
    fnn = sys.modules.get("fnn")
    if fnn is None:
        return None
    root = Path(fnn.__file__).resolve().parent.parent

    def git(*cmd):
        proc = subprocess.run(["git", "-C", str(root), *cmd], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "--short=7", "HEAD")
    if commit and git("status", "--porcelain", "--untracked-files=no", "--", "fnn"):
        commit += "+dirty"
    return {"path": str(root), "commit": commit or "no git commit"}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("framework", choices=sorted(FRAMEWORKS))
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--repeats", type=int, required=True)
    parser.add_argument("--variants", default="")
    parser.add_argument("--block-seconds", type=float, default=0.0)
    parser.add_argument("--checkout", default="", help="fnn checkout imported first")
    args = parser.parse_args(argv)
    fw, scenario = FRAMEWORKS[args.framework], SCENARIOS[args.scenario]
    wanted = [v for v, _ in fw.variants]
    if args.variants:
        wanted = [v for v in wanted if v in args.variants.split(",")]
    record = {"framework": fw.name, "scenario": scenario.name, "variants": {}}
    checkout = Path(args.checkout).resolve() if args.checkout else None
    if fw.base_checkout:
        if checkout is None:
            record["skipped"] = "no --fnn-base checkout given"
            return record
        # Before anything imports fnn; ``benchmarks`` itself is already this tree's.
        sys.path.insert(0, str(checkout))
    try:
        module = importlib.import_module(f"benchmarks.{fw.module}")
    except ImportError as err:
        record["skipped"] = f"not installed ({err})"
        return record
    if scenario.kind not in getattr(module, "KINDS", BASE_KINDS):
        record["skipped"] = f"no {scenario.kind} model in benchmarks/{fw.module}.py"
        return record
    source = fnn_source()
    if source:
        record["fnn_source"] = source
    if fw.base_checkout and (source is None or Path(source["path"]) != checkout):
        record["error"] = f"fnn was imported from {source and source['path']}, not {checkout}"
        return record
    import jax

    record["versions"] = {d: _version(d) for d in ("jax", "jaxlib", *fw.packages)}
    record["device"] = str(jax.devices()[0].device_kind)
    record["python"] = platform.python_version()
    if hasattr(os, "sched_getaffinity"):
        record["cpus"] = sorted(os.sched_getaffinity(0))
    x, y = make_pool(scenario)
    _warm_up_process()
    for key in wanted:
        # Every variant compiles from scratch: no variant reuses another's compiled programs.
        jax.clear_caches()
        bench = None
        try:
            t0 = time.perf_counter()
            bench = module.VARIANTS[key](scenario, x, y)
            setup_s = time.perf_counter() - t0
            timings = time_bench(bench, args.steps, args.repeats, args.block_seconds)
            result = {"status": "ok", "setup_s": setup_s, **timings}
        except UnavailableError as err:
            result = {"status": "unavailable", "reason": str(err)}
        except Exception as err:
            traceback.print_exc(file=sys.stderr)
            result = {"status": "error", "reason": f"{type(err).__name__}: {err}"[:300]}
        record["variants"][key] = result
        del bench
    # ru_maxrss is in KiB on Linux.
    record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak = device_peak_bytes()
    if peak is not None:
        record["device_peak_mb"] = peak / 2**20
    return record


def device_peak_bytes() -> int | None:
    """The accelerator's peak allocated bytes in this process (``memory_stats``; None on
    backends that keep no statistics, such as XLA:CPU)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


if __name__ == "__main__":
    print(MARKER + json.dumps(main()), flush=True)
