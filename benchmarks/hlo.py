"""Static comparison of the compiled train steps, immune to timing noise:

    python -m benchmarks.hlo tiny_mlp [jax fnn flax_linen ...]

For each jitted step variant (``Bench.lowerable``): the optimized HLO's instruction
count, XLA's flop and byte estimates, and the argument and output leaf counts (each
leaf costs dispatch time on every call). Differences from ``jax_jit`` point at the
work a framework adds to every step.
"""

from __future__ import annotations

import importlib
import re
import sys

import jax

from benchmarks.frameworks import FRAMEWORKS
from benchmarks.scenarios import SCENARIOS, make_pool


def stats(jitted, args) -> dict:
    lowered = jitted.lower(*args)
    compiled = lowered.compile()
    text = compiled.as_text()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return {
        "hlo_instructions": len(re.findall(r"^\s+\S+ = ", text, re.MULTILINE)),
        "flops": (cost or {}).get("flops"),
        "bytes": (cost or {}).get("bytes accessed"),
        "in_leaves": len(jax.tree.leaves(args)),
        "out_leaves": len(jax.tree.leaves(jax.eval_shape(jitted, *args))),
    }


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    scenario = SCENARIOS[argv[0]]
    frameworks = argv[1:] or ["jax", "fnn"]
    x, y = make_pool(scenario)
    print(f"{'variant':16s} {'HLO instr':>9s} {'GFLOP':>8s} {'MB':>8s} {'in':>4s} {'out':>4s}")
    for name in frameworks:
        module = importlib.import_module(f"benchmarks.{FRAMEWORKS[name].module}")
        for key, build in module.VARIANTS.items():
            try:
                bench = build(scenario, x, y)
            except Exception as err:
                print(f"{key:16s} unavailable: {err}")
                continue
            if bench.lowerable is None or not hasattr(bench.lowerable[0], "lower"):
                print(f"{key:16s} (not a single jitted step)")
                continue
            s = stats(*bench.lowerable)
            gflop = (s["flops"] or 0) / 1e9
            mb = (s["bytes"] or 0) / 1e6
            print(
                f"{key:16s} {s['hlo_instructions']:9d} {gflop:8.4f} {mb:8.2f} "
                f"{s['in_leaves']:4d} {s['out_leaves']:4d}"
            )


if __name__ == "__main__":
    main()
