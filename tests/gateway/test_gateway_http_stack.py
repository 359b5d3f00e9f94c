"""The gateway is served on uvicorn's fast stack (httptools, uvloop), and says so when it is not."""

from __future__ import annotations

import importlib.util
import logging
import sys

import pytest

from modelshield.gateway import _server


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop does not exist on Windows")
def test_the_install_brings_the_fast_stack(caplog: pytest.LogCaptureFixture) -> None:
    assert _server.http_stack() == ("httptools", "uvloop")
    with caplog.at_level(logging.WARNING, logger=_server.__name__):
        _server._warn_if_slow_stack()
    assert not caplog.records


@pytest.mark.parametrize("missing", [("httptools",), ("uvloop",), ("httptools", "uvloop")])
def test_a_missing_fast_stack_is_named_in_a_warning(
    missing: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name in missing else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    parser, loop = _server.http_stack()
    assert (parser == "h11") == ("httptools" in missing)
    assert (loop == "asyncio") == ("uvloop" in missing)
    with caplog.at_level(logging.WARNING, logger=_server.__name__):
        _server._warn_if_slow_stack()
    (record,) = caplog.records
    assert f"serves with {parser} and {loop}" in record.getMessage()
