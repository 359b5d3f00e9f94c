"""The public surface is exactly what __all__ says, and importing it has no side effects."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from ast import literal_eval
from types import ModuleType

import modelshield
import modelshield.errors
import modelshield.models

EXPECTED_TOP_LEVEL = {
    "AuthenticationError",
    "AuthorizationError",
    "Config",
    "ConfigError",
    "InputSpec",
    "IntegrityError",
    "InvalidInputError",
    "KeyMissingError",
    "Predictor",
    "RateLimitedError",
    "Secret",
    "ServiceUnavailableError",
    "Shield",
    "ShieldError",
    "UnsupportedModelError",
    "__version__",
    "load_config",
    "load_model",
    "open_model",
    "seal",
}


def test_all_is_exactly_the_public_names() -> None:
    assert set(modelshield.__all__) == EXPECTED_TOP_LEVEL
    # submodules appear as attributes once imported; every other public name must be in __all__
    public = {
        name
        for name, value in vars(modelshield).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert public | {"__version__"} == EXPECTED_TOP_LEVEL


def test_every_name_in_all_exists() -> None:
    for module in (modelshield, modelshield.errors, modelshield.models):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_import_has_no_side_effects() -> None:
    probe = textwrap.dedent(
        """
        import logging, sys
        events = []
        def hook(event, args):
            if event == "open" and args[1] is not None and any(c in str(args[1]) for c in "wax+"):
                events.append(("write", str(args[0])))
            elif event in ("socket.connect", "socket.bind", "socket.sendto"):
                events.append((event, str(args[1:])))
        sys.addaudithook(hook)
        import modelshield, modelshield.models, modelshield.config, modelshield.errors
        root = logging.getLogger()
        configured = [h for h in root.handlers]
        named = [n for n, lg in logging.Logger.manager.loggerDict.items()
                 if n.startswith("modelshield") and isinstance(lg, logging.Logger) and lg.handlers]
        print(repr((events, len(configured), named, root.level)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-B", "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    events, n_root_handlers, named, level = literal_eval(out)
    assert events == []
    assert n_root_handlers == 0
    assert named == []
    assert level == 30  # WARNING, the untouched default
