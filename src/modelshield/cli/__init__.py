"""The ``modelshield`` command line (stable: command names, options and exit codes).

A thin layer: it parses, calls the library and prints. Exit codes: 0 success, 1 error, 2 usage,
3 integrity or authentication failure.
"""

from __future__ import annotations

from modelshield.cli._app import app, main

__all__ = ["app", "main"]
