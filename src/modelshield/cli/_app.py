"""The root command: global options, error handling and exit codes."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from modelshield._version import __version__
from modelshield.errors import EXIT_ERROR, ShieldError, exit_code

app = typer.Typer(
    name="modelshield",
    help="Protect machine-learning models against theft (OWASP ML05:2023).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        console.print(f"modelshield {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Log details (never secrets) to stderr.")
    ] = False,
) -> None:
    """Protect machine-learning models against theft (OWASP ML05:2023)."""
    _state["debug"] = debug
    if debug:
        logging.basicConfig(
            level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
        )


def counted(n: int, noun: str) -> str:
    """``1 segment``, ``2 segments``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def debug_enabled() -> bool:
    """Whether this command runs with ``--debug``."""
    return bool(_state.get("debug"))


def main() -> None:
    """Entry point of the ``modelshield`` command: one clear line and an exit code per error."""
    from modelshield.cli import _commands

    _commands.register_all(app)
    try:
        app()
    except ShieldError as exc:
        err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False)
        raise SystemExit(exit_code(exc)) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise SystemExit(130) from None
    except OSError as exc:  # a file or folder the command could not use: say which and why
        logging.getLogger("modelshield.cli").debug("file error", exc_info=True)
        where = f"{exc.filename}: " if exc.filename else ""
        reason = exc.strerror or str(exc) or type(exc).__name__
        err_console.print(f"[bold red]error:[/bold red] {escape(where + reason)}", highlight=False)
        raise SystemExit(EXIT_ERROR) from None
    except Exception as exc:  # last resort: never show a traceback to a user
        logging.getLogger("modelshield.cli").debug("internal error", exc_info=True)
        err_console.print(
            f"[bold red]internal error:[/bold red] {type(exc).__name__}"
            " (run with --debug for details)",
            highlight=False,
        )
        if _state["debug"]:
            raise
        raise SystemExit(EXIT_ERROR) from None
