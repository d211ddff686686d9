"""The ``tasp`` command line: ``tasp plan`` (and later subcommands)."""

from .main import main

__all__ = ["main"]
