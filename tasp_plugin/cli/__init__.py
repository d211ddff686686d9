"""The ``tasp`` command line: ``tasp plan`` and ``tasp bench``."""

from .main import main

__all__ = ["main"]
