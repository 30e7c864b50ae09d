"""The ``critprint`` command-line interface."""

from critprint.cli.app import app, main

# Registers `critprint scan` on the app; imported for that side effect.
from critprint.cli import scan as _scan  # noqa: E402,F401  isort: skip

__all__ = ["app", "main"]
