"""The ``critprint`` command-line interface."""

from critprint.cli.app import app, main

__all__ = ["app", "main"]
