"""The frameworks benchmarked: each is one module of ``build(scenario, x, y) -> Bench``
variants and runs in its own process (``benchmarks.worker``)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Framework:
    name: str
    module: str  # benchmarks.<module> defines VARIANTS
    packages: tuple[str, ...]  # distributions whose versions the report names
    variants: tuple[tuple[str, str], ...]  # (variant key, label in the tables)
    env: tuple[tuple[str, str], ...] = ()
    # Imports fnn from the checkout given by ``--fnn-base`` (first on ``sys.path``); the
    # labels' ``{commit}`` is that checkout's commit. Without the option it is skipped.
    base_checkout: bool = False


FRAMEWORKS: dict[str, Framework] = {
    f.name: f
    for f in (
        Framework(
            "jax",
            "impl_jax",
            ("jax", "jaxlib", "optax"),
            (
                ("jax_jit", "hand-written JAX, jit step"),
                ("jax_scan10", "hand-written JAX, lax.scan 10 steps"),
            ),
        ),
        Framework(
            "fnn",
            "impl_fnn",
            ("fnn",),
            (
                ("fnn_step", "fnn functional step"),
                ("fnn_fit", "fnn Model.fit"),
                ("fnn_fit10", "fnn Model.fit, steps_per_execution=10"),
            ),
        ),
        Framework(
            "fnn_base",
            "impl_fnn",
            (),  # the installed fnn's version is not the checkout's: the label names its commit
            (
                ("fnn_base_step", "fnn functional step (base {commit})"),
                ("fnn_base_fit", "fnn Model.fit (base {commit})"),
                ("fnn_base_fit10", "fnn Model.fit, steps_per_execution=10 (base {commit})"),
            ),
            base_checkout=True,
        ),
        Framework(
            "flax_linen",
            "impl_flax_linen",
            ("flax",),
            (("linen_jit", "Flax Linen, jit step"),),
        ),
        Framework(
            "flax_nnx",
            "impl_flax_nnx",
            ("flax",),
            (
                ("nnx_jit", "Flax NNX, nnx.jit"),
                ("nnx_split", "Flax NNX, split/merge + jax.jit"),
            ),
        ),
        Framework("haiku", "impl_haiku", ("dm-haiku",), (("haiku_jit", "Haiku, jit step"),)),
        Framework(
            "equinox",
            "impl_equinox",
            ("equinox",),
            (
                ("eqx_filter_jit", "Equinox, filter_jit"),
                ("eqx_partition", "Equinox, partition + jax.jit"),
            ),
        ),
        Framework(
            "keras",
            "impl_keras",
            ("keras",),
            (
                ("keras_tob", "Keras 3 (JAX), train_on_batch"),
                ("keras_fit", "Keras 3 (JAX), fit"),
                ("keras_fit10", "Keras 3 (JAX), fit, steps_per_execution=10"),
            ),
            env=(("KERAS_BACKEND", "jax"),),
        ),
    )
}

LABELS = {key: label for f in FRAMEWORKS.values() for key, label in f.variants}
BASELINE = "jax_jit"
