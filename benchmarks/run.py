"""Run the benchmark suite: every framework in its own process, one after another.

    python -m benchmarks.run                 # full suite -> benchmarks/RESULTS.md, results.json
    python -m benchmarks.run --quick         # smoke check on tiny_mlp (< 2 min) -> RESULTS-quick.md
    python -m benchmarks.run --scenarios mlp,cnn --frameworks jax,fnn,keras --repeats 7
    python -m benchmarks.run --fnn-base ../old --frameworks jax,fnn,fnn_base --rounds 2
    python -m benchmarks.run --device gpu    # accelerator-sized models -> RESULTS-gpu.md

A framework whose package is not installed is reported as skipped. Ratios are to the
hand-written JAX jit step measured in the same run. ``--fnn-base PATH`` adds the
``fnn_base`` rows: the fnn variants run against another checkout of fnn, next to the
current ones; ``--rounds`` interleaves the workers of a scenario to expose both to the
same machine noise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.frameworks import BASELINE, FRAMEWORKS, LABELS
from benchmarks.report import summarize, write_markdown
from benchmarks.scenarios import CPU_SCENARIOS, GPU_SCENARIOS, SCENARIOS
from benchmarks.worker import MARKER

ROOT = Path(__file__).resolve().parent.parent
QUICK_SCENARIOS = ("tiny_mlp",)


def _csv(value: str, known, what: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what} {unknown}; choose from {sorted(known)}")
    return names


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run_worker(
    python: str,
    framework: str,
    scenario: str,
    steps: int,
    repeats: int,
    timeout: float,
    variants: list[str] = (),
    block_seconds: float = 0.0,
    checkout: Path | None = None,
    cpus: tuple[int, ...] | None = None,
) -> dict:
    """One worker process; its JSON record, or an error record if it failed. ``cpus``:
    the CPUs the worker may run on (``os.sched_setaffinity``), all by default."""
    fw = FRAMEWORKS[framework]
    env = dict(os.environ)
    env.update(fw.env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # The test suite forces fake CPU devices; a benchmark process uses the real ones.
    flags = [
        f for f in env.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f
    ]
    env["XLA_FLAGS"] = " ".join(flags)
    # ... and compiles for real: a persistent compilation cache (the tests set one) would
    # turn the first-call figures into cache loads.
    for key in [k for k in env if k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))]:
        del env[key]
    cmd = [
        python,
        "-m",
        "benchmarks.worker",
        framework,
        scenario,
        "--steps",
        str(steps),
        "--repeats",
        str(repeats),
        *(["--variants", ",".join(variants)] if variants else []),
        *(["--block-seconds", str(block_seconds)] if block_seconds else []),
        *(["--checkout", str(checkout)] if checkout else []),
    ]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
    except subprocess.TimeoutExpired:
        return {
            "framework": framework,
            "scenario": scenario,
            "error": f"timed out after {timeout:.0f} s",
        }
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            record = json.loads(line[len(MARKER) :])
            record["wall_s"] = wall
            if proc.stderr.strip() and any(
                v.get("status") == "error" for v in record["variants"].values()
            ):
                record["stderr_tail"] = proc.stderr[-2000:]
            return record
    tail = (proc.stderr or proc.stdout)[-1500:]
    return {
        "framework": framework,
        "scenario": scenario,
        "error": f"exit code {proc.returncode}: {tail}",
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="few steps and repeats, tiny_mlp only (< 2 min)"
    )
    parser.add_argument("--scenarios", default="", help=f"comma list of {', '.join(SCENARIOS)}")
    parser.add_argument("--frameworks", default="", help=f"comma list of {', '.join(FRAMEWORKS)}")
    parser.add_argument(
        "--variants", default="", help="comma list of implementations (default: all); see LABELS"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed blocks per variant (default 5, quick 2)"
    )
    parser.add_argument(
        "--steps-scale", type=float, default=1.0, help="multiply the steps per timed block"
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="folder for the Markdown and JSON files"
    )
    parser.add_argument(
        "--block-seconds",
        type=float,
        default=None,
        help="shrink a timed block of a slow variant to about this long (default 1, quick 0.3; "
        "0 keeps the scenario's steps)",
    )
    parser.add_argument(
        "--fnn-base",
        type=Path,
        default=None,
        help="another fnn checkout (a folder holding fnn/): the fnn_base framework runs the fnn "
        "variants against it (without this option fnn_base is skipped)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run each scenario's workers this many times, in reversed order every other round "
        "(A B C, C B A, ...), and pool their blocks: each worker times --repeats blocks",
    )
    parser.add_argument(
        "--process-per-variant",
        action="store_true",
        help="run every implementation in its own worker process (with --rounds: A B C, C B A "
        "over the implementations, not the frameworks), so no variant shares a process's "
        "compile cache, allocator or threads with another",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default="cpu",
        help="gpu: the accelerator-sized scenarios (batch-512 MLP, ResNet-style CNN, Transformer), "
        "one process per variant, 3 rounds, throughput and device peak memory -> RESULTS-gpu.md; "
        "refused when JAX sees no GPU",
    )
    parser.add_argument(
        "--cpus",
        default="",
        help="comma list of CPU numbers the workers run on (e.g. 0): on one core the tiny "
        "MLP's hand-written step spreads 71-80 us instead of 48-149 us (a worker can still "
        "draw a slow mode); ratios then compare one-core speed, without XLA's intra-op threads",
    )
    parser.add_argument("--note", action="append", default=[], help="a line added to the report")
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter for the worker processes"
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds allowed per worker process"
    )
    args = parser.parse_args(argv)

    cpus = tuple(int(c) for c in args.cpus.split(",") if c.strip()) or None
    if cpus and not hasattr(os, "sched_setaffinity"):
        parser.error("--cpus needs os.sched_setaffinity (Linux)")
    gpu = args.device == "gpu"
    if gpu:
        _require_gpu(args.python)
        args.process_per_variant = True
        args.rounds = max(args.rounds, 3)
    default = GPU_SCENARIOS if gpu else (QUICK_SCENARIOS if args.quick else CPU_SCENARIOS)
    scenarios = _csv(args.scenarios, SCENARIOS, "scenarios") or list(default)
    fnn_base = args.fnn_base.resolve() if args.fnn_base else None
    if fnn_base is not None and not (fnn_base / "fnn" / "__init__.py").is_file():
        raise SystemExit(f"--fnn-base {args.fnn_base}: no fnn/__init__.py in that folder")
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be at least 1, got {args.rounds}")
    frameworks = _csv(args.frameworks, FRAMEWORKS, "frameworks") or [
        f for f in FRAMEWORKS if fnn_base or not FRAMEWORKS[f].base_checkout
    ]
    variants = _csv(args.variants, LABELS, "variants")
    if variants and BASELINE not in variants:
        variants.append(BASELINE)
    if "jax" not in frameworks:
        frameworks.insert(0, "jax")  # the baseline of every ratio
    repeats = args.repeats or (2 if args.quick else 5)
    block_seconds = args.block_seconds
    if block_seconds is None:
        block_seconds = 0.3 if args.quick else 1.0
    output = args.output or Path(__file__).resolve().parent
    suffix = ("-gpu" if gpu else "") + ("-quick" if args.quick else "")

    started = datetime.datetime.now(datetime.UTC)
    meta = {
        "date_utc": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks.run "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "quick": args.quick,
        "device": args.device,
        "repeats": repeats,
        "block_seconds": block_seconds,
        "machine": {
            "cpu": _cpu_model(),
            "logical_cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "load_average_start": _load(),
        "rounds": args.rounds,
        "notes": args.note
        + ([f"Workers pinned to CPU(s) {args.cpus} (--cpus)."] if args.cpus else []),
    }
    records = []
    t_start = time.perf_counter()
    for scenario_name in scenarios:
        scenario = SCENARIOS[scenario_name]
        base = scenario.quick_steps if args.quick else scenario.steps
        steps = max(10, round(base * args.steps_scale / 10) * 10)
        # Odd rounds run the frameworks in reverse, so a drift in the machine's load falls
        # on every framework alike.
        units = [(fw, None) for fw in frameworks]
        if args.process_per_variant:
            units = [
                (fw, [key])
                for fw in frameworks
                for key, _ in FRAMEWORKS[fw].variants
                if not variants or key in variants
            ]
        order = [(r, u) for r in range(args.rounds) for u in (units[::-1] if r % 2 else units)]
        for round_index, (framework, only) in order:
            wanted = only or [key for key, _ in FRAMEWORKS[framework].variants if key in variants]
            if variants and not wanted:
                continue
            print(
                f"[bench] {scenario_name:9s} {framework:11s}"
                + (f" {only[0]}" if only else "")
                + (f" round {round_index + 1}/{args.rounds}" if args.rounds > 1 else "")
                + " ...",
                end="",
                file=sys.stderr,
                flush=True,
            )
            record = run_worker(
                args.python,
                framework,
                scenario_name,
                steps,
                repeats,
                args.timeout,
                wanted,
                block_seconds,
                fnn_base if FRAMEWORKS[framework].base_checkout else None,
                **({"cpus": cpus} if cpus else {}),
            )
            records.append(record)
            status = (
                record.get("skipped")
                or record.get("error", "")[:200]
                or f"{record.get('wall_s', 0):.1f} s"
            )
            print(f" {status}", file=sys.stderr, flush=True)
            # Rewritten after every worker, so an interrupted run still leaves its tables.
            results = _write(meta, records, scenarios, output, suffix, t_start, done=False)
    results = _write(meta, records, scenarios, output, suffix, t_start, done=True)
    print(f"[bench] wrote {output / f'RESULTS{suffix}.md'} in {meta['total_s']} s", file=sys.stderr)
    return results


def _require_gpu(python: str) -> None:
    """Exits unless the workers' interpreter sees a GPU (a CPU figure must not pass as one)."""
    probe = "import jax; print(jax.default_backend())"
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    backend = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-300:]
    if backend != "gpu":
        raise SystemExit(f"--device gpu: JAX in {python} runs on {backend!r}, not a GPU")


def _write(meta, records, scenarios, output: Path, suffix: str, t_start: float, done: bool):
    meta["load_average_end"] = _load()
    meta["total_s"] = round(time.perf_counter() - t_start, 1)
    meta["complete"] = done
    done_scenarios = [s for s in scenarios if any(r["scenario"] == s for r in records)]
    results = {"meta": meta, "scenarios": summarize(records, done_scenarios), "records": records}
    output.mkdir(parents=True, exist_ok=True)
    (output / f"results{suffix}.json").write_text(json.dumps(results, indent=1) + "\n")
    write_markdown(results, output / f"RESULTS{suffix}.md")
    return results


if __name__ == "__main__":
    main()
