"""Benchmarks: fnn against hand-written JAX and the peer frameworks (see README.md here)."""
