"""The ``fnn`` command and its YAML configs (the top of the import order)."""

from fnn.cli.commands import main

__all__ = ["main"]
