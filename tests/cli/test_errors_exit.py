"""Errors raised inside a command become one line and the documented exit code."""

from __future__ import annotations

import pytest
import typer

from modelshield.cli import _app
from modelshield.errors import ConfigError, IntegrityError


def _run_with(
    command: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    app = typer.Typer(pretty_exceptions_enable=False)
    app.command("boom")(command)  # type: ignore[arg-type]
    app.command("other")(lambda: None)
    monkeypatch.setattr(_app, "app", app)
    monkeypatch.setattr("sys.argv", ["modelshield", "boom"])
    with pytest.raises(SystemExit) as info:
        _app.main()
    return int(info.value.code or 0), capsys.readouterr().err


def test_integrity_error_exits_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom() -> None:
        raise IntegrityError()

    code, err = _run_with(boom, monkeypatch, capsys)
    assert code == 3
    assert err.strip() == "error: cannot open: wrong key or damaged file"


def test_other_shield_error_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom() -> None:
        raise ConfigError("shield.toml: server.port: [bad]")

    code, err = _run_with(boom, monkeypatch, capsys)
    assert code == 1
    assert "server.port: [bad]" in err  # rich markup in messages is escaped, not interpreted
    assert len(err.strip().splitlines()) == 1


def test_unexpected_error_has_no_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom() -> None:
        raise RuntimeError("secret detail")

    code, err = _run_with(boom, monkeypatch, capsys)
    assert code == 1
    assert "Traceback" not in err
    assert "secret detail" not in err


def test_a_file_error_names_the_file_and_the_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An output in a missing folder, a directory where a file was meant...: one line that
    says which file and why (it was 'internal error: FileNotFoundError')."""

    def boom() -> None:
        open("/nonexistent-folder-ms/out.json", "wb")  # noqa: SIM115

    code, err = _run_with(boom, monkeypatch, capsys)
    assert code == 1
    assert err.strip() == "error: /nonexistent-folder-ms/out.json: No such file or directory"
