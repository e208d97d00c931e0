"""Benchmark (not a test): ``fnn tune`` with vmapped trials vs one trial at a time.

A 16-trial learning-rate search on digits (``configs/digits_mlp_search.yaml`` with only
``optimizer.learning_rate`` searched, random sampler, seed 0, no pruner so that both modes
train every epoch of every trial): ``search.batch_trials=8`` (two programs of 8 members;
the second reuses the first's compiled programs) against ``batch_trials=1`` (16 ``Run`` +
``Model.fit``, each compiling its own programs). Each search runs as its own ``fnn tune``
process (wall time from start to exit, Python and JAX start-up included), the two modes
alternating ``--repeats`` times; the ratio is of the medians (goal <= 0.4). Both modes
draw the same 16 learning rates, so the best trial must agree: printed as a check.

Run: PYTHONPATH=. python benchmarks/bench_tune.py [--epochs 3] [--repeats 1] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS-tune.md"


def _config(tmp: Path, epochs: int, trials: int) -> Path:
    raw = yaml.safe_load((ROOT / "configs" / "digits_mlp_search.yaml").read_text())
    raw["epochs"] = epochs
    raw["search"] = {
        "objective": {"metric": "val_accuracy", "mode": "max"},
        "n_trials": trials,
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "space": {
            "optimizer.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True}
        },
    }
    path = tmp / "search.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _tune(config: Path, run_dir: Path, batch: int) -> tuple[float, float, dict]:
    cmd = [sys.executable, "-m", "fnn", "tune", str(config), "--overwrite"]
    cmd += ["--set", f"run_dir={run_dir}", "--set", f"search.batch_trials={batch}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), KERAS_BACKEND="jax")
    start, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if done.returncode:
        raise SystemExit(f"fnn tune failed:\n{done.stderr}")
    return wall, cpu, json.loads((run_dir / "best.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--write", action="store_true", help=f"write {RESULTS.name}")
    args = parser.parse_args()
    times: dict[int, list[float]] = {args.batch: [], 1: []}
    cpus: dict[int, list[float]] = {args.batch: [], 1: []}
    best: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = _config(Path(tmp), args.epochs, args.trials)
        for r in range(args.repeats):
            for batch in (args.batch, 1):  # interleaved: load drifts hit both modes
                wall, cpu, best[batch] = _tune(config, Path(tmp) / f"run_{batch}_{r}", batch)
                times[batch].append(wall)
                cpus[batch].append(cpu)
                print(f"repeat {r}: batch_trials={batch}: {wall:.2f}s wall, {cpu:.2f}s CPU",
                      flush=True)  # fmt: skip

    def median(v):
        return sorted(v)[len(v) // 2]

    vmapped, single = median(times[args.batch]), median(times[1])
    ratio = vmapped / single
    cpu_v, cpu_s = median(cpus[args.batch]), median(cpus[1])
    same = best[args.batch]["number"] == best[1]["number"]
    delta = abs(best[args.batch]["value"] - best[1]["value"])
    print(f"vmapped {vmapped:.2f}s  one at a time {single:.2f}s  ratio {ratio:.3f} (goal <= 0.4)")
    print(f"CPU: vmapped {cpu_v:.2f}s  one at a time {cpu_s:.2f}s  ratio {cpu_v / cpu_s:.3f}")
    print(f"best trial: {best[args.batch]['number']} vs {best[1]['number']}, |delta| {delta:.2g}")
    if args.write:
        load = os.getloadavg()[0]
        command = "PYTHONPATH=. python benchmarks/bench_tune.py " + " ".join(sys.argv[1:])
        RESULTS.write_text(
            f"""# `fnn tune` with vmapped trials (`benchmarks/bench_tune.py`)

`{command.strip()}` on {os.cpu_count()} CPU cores (XLA:CPU), {time.strftime("%Y-%m-%d")}, load
average {load:.1f} at the end (other jobs share the machine: absolute seconds are inflated,
the CPU seconds less so). Each search is its own `fnn tune` process, start-up included:
{args.trials} trials of a learning-rate search on digits (the digits MLP of
`configs/digits_mlp_search.yaml`, {args.epochs} epochs, random sampler, no pruner).

| mode | wall s (median of {args.repeats}) | CPU s (user + system) |
| --- | --- | --- |
| `search.batch_trials: {args.batch}` ({-(-args.trials // args.batch)} programs of {args.batch} members) | {vmapped:.2f} | {cpu_v:.2f} |
| `search.batch_trials: 1` (one trial at a time) | {single:.2f} | {cpu_s:.2f} |
| **ratio** | **{ratio:.3f}** (goal <= 0.4) | {cpu_v / cpu_s:.3f} |

Both modes drew the same learning rates; best trial {best[args.batch]["number"]} vs
{best[1]["number"]} ({"same" if same else "DIFFERENT"}), objective difference {delta:.2g}.
"""
        )
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
