"""``modelshield keygen | seal | unseal | inspect | rewrap | verify``: sealed model artifacts.

Passphrases come from the ``MODELSHIELD_PASSPHRASE`` environment variable when it is set, else
from a hidden prompt.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from modelshield.cli._app import console, err_console

if TYPE_CHECKING:
    from modelshield.vault import Identity, KeyProvider, Passphrase

PASSPHRASE_ENV = "MODELSHIELD_PASSPHRASE"  # noqa: S105 - the variable name, not a secret
_PROGRESS_FROM = 64 << 20  # show a progress bar for files of 64 MiB and more

InputFile = Annotated[
    Path,
    typer.Argument(
        help="The input file.", show_default=False, exists=True, dir_okay=False, readable=True
    ),
]
OutputFile = Annotated[
    Path, typer.Option("-o", "--output", help="The output file.", show_default=False)
]
IdentityFile = Annotated[
    Path | None,
    typer.Option("-i", "--identity", help="X25519 identity file (NAME.key).", show_default=False),
]
UsePassphrase = Annotated[
    bool, typer.Option("--passphrase", help=f"Use a passphrase (${PASSPHRASE_ENV} or a prompt).")
]


def _can_prompt() -> bool:
    """Whether a hidden prompt can reach a person: getpass reads the controlling terminal
    (``/dev/tty``) even when standard input is redirected."""
    if sys.stdin.isatty():
        return True
    try:
        os.close(os.open("/dev/tty", os.O_RDWR))
    except OSError:
        return False
    return True


def _passphrase(*, confirm: bool) -> Passphrase:
    from modelshield.vault import Passphrase

    value = os.environ.get(PASSPHRASE_ENV)
    if value is None and not _can_prompt():  # nobody to ask: say how to give it
        raise typer.BadParameter(
            f"no passphrase: set ${PASSPHRASE_ENV} or run in a terminal", param_hint="--passphrase"
        )
    if value is None:
        value = typer.prompt("passphrase", hide_input=True, confirmation_prompt=confirm, err=True)
    return Passphrase(value)


def _identities(
    identity: Path | None, passphrase: bool
) -> list[Identity | Passphrase | KeyProvider]:
    from modelshield.vault import load_identity

    if identity is None and not passphrase:
        raise typer.BadParameter("give -i NAME.key or --passphrase", param_hint="-i")
    found: list[Identity | Passphrase | KeyProvider] = []
    if identity is not None:
        found.append(load_identity(identity))
    if passphrase:
        found.append(_passphrase(confirm=False))
    return found


@contextlib.contextmanager
def _os_errors() -> Iterator[None]:
    """A file the system refuses (no such folder, no permission) is one line and exit 1."""
    try:
        yield
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        err_console.print(f"error: {where}{exc.strerror or exc}", highlight=False, markup=False)
        raise typer.Exit(1) from None


@contextlib.contextmanager
def _progress(path: Path, label: str) -> Iterator[Callable[[int], None] | None]:
    size = path.stat().st_size if path.is_file() else 0
    if size < _PROGRESS_FROM or not err_console.is_terminal:
        yield None
        return
    from rich.progress import Progress as Bar

    with Bar(console=err_console, transient=True) as bar:
        task = bar.add_task(label, total=size)
        yield lambda done: bar.update(task, completed=done)


def keygen(
    output: Annotated[
        str, typer.Option("-o", "--output", help="NAME: writes NAME.key and NAME.pub.")
    ],
    signing: Annotated[
        bool, typer.Option("--signing", help="An Ed25519 signing key: NAME.signing.key/.pub.")
    ] = False,
) -> None:
    """Create a key pair: X25519 to seal for, or Ed25519 (--signing) to sign with."""
    from modelshield.vault import keygen as make

    if not Path(output).name.strip() or output.endswith(("/", os.sep)):
        raise typer.BadParameter("give a NAME for the key files (-o NAME)", param_hint="-o")
    files = make(output, signing=signing)
    console.out(
        f"wrote {files.private} (private, mode 0600) and {files.public}; key id {files.key_id}",
        highlight=False,
    )


def seal(
    input: InputFile,
    output: OutputFile,
    recipient: Annotated[
        list[Path] | None,
        typer.Option("-r", "--recipient", help="Recipient public key (NAME.pub); repeatable."),
    ] = None,
    passphrase: UsePassphrase = False,
    sign: Annotated[
        Path | None, typer.Option("--sign", help="Sign with this key (NAME.signing.key).")
    ] = None,
) -> None:
    """Encrypt a file for recipients (and sign it): the sealed artifact replaces OUT atomically."""
    from modelshield import vault

    if not recipient and not passphrase:
        raise typer.BadParameter("give at least one -r NAME.pub or --passphrase", param_hint="-r")
    targets: list[vault.Recipient | vault.Passphrase | vault.KeyProvider] = [
        vault.load_recipient(p) for p in recipient or []
    ]
    signer = vault.load_signing_key(sign) if sign is not None else None
    if passphrase:
        targets.append(_passphrase(confirm=True))
    with _progress(input, "sealing") as progress:
        info = vault.seal(input, output, targets, signer=signer, progress=progress)
    signed = f", signed by {info.signer}" if info.signer else ""
    console.out(
        f"sealed {input} -> {output} for {len(info.recipients)} recipient(s){signed}",
        highlight=False,
    )


def unseal(
    input: InputFile,
    output: OutputFile,
    identity: IdentityFile = None,
    passphrase: UsePassphrase = False,
) -> None:
    """Decrypt a sealed artifact into OUT (which must not exist)."""
    from modelshield import vault

    found = _identities(identity, passphrase)
    with _progress(input, "unsealing") as progress:
        vault.unseal(input, output, found, progress=progress)
    console.out(f"unsealed {input} -> {output}", highlight=False)


def inspect(
    input: InputFile,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show a sealed artifact's header (no key needed; nothing shown is verified)."""
    from modelshield import vault

    info = vault.inspect(input)
    if as_json:
        import orjson

        console.out(orjson.dumps(info.to_dict()).decode(), highlight=False)
        return
    lines = [
        f"format      modelshield sealed v{info.format_version}",
        f"payload     {info.suite}, {info.segment_count} segment(s) of {info.segment_size} bytes",
        f"sizes       plaintext {info.plaintext_size}, header {info.header_size}, "
        f"file {info.file_size} bytes",
        f"digest      {info.payload_digest}",
        f"signer      {info.signer or '(unsigned)'}"
        + (" (not verified: use `modelshield verify`)" if info.signer else ""),
    ]
    for r in info.recipients:
        detail = f"  ({r.detail})" if r.detail else ""
        lines.append(f"recipient   {r.kind:<10} {r.key_id}{detail}")
    console.out("\n".join(lines), highlight=False)


def rewrap(
    input: InputFile,
    identity: IdentityFile = None,
    passphrase: UsePassphrase = False,
    recipient: Annotated[
        list[Path] | None,
        typer.Option("-r", "--recipient", help="Add this recipient (NAME.pub); repeatable."),
    ] = None,
    remove: Annotated[
        list[str] | None,
        typer.Option("--remove", help="Remove the recipient with this key id; repeatable."),
    ] = None,
) -> None:
    """Add or remove recipients, rewriting only the header (the payload is unchanged)."""
    from modelshield import vault

    if not recipient and not remove:
        raise typer.BadParameter("give -r NAME.pub or --remove KEYID", param_hint="-r")
    found = _identities(identity, passphrase)
    add = [vault.load_recipient(p) for p in recipient or []]
    info = vault.rewrap(input, found, add=add, remove=remove or [])
    ids = ", ".join(r.key_id for r in info.recipients)
    console.out(f"rewrapped {input}: recipients {ids}", highlight=False)


def verify(
    input: InputFile,
    trust: Annotated[
        list[Path],
        typer.Option("--trust", help="Trusted signer (NAME.signing.pub); repeatable."),
    ],
    identity: IdentityFile = None,
    passphrase: UsePassphrase = False,
) -> None:
    """Check the signature and payload digest; with -i, decrypt every segment too."""
    from modelshield import vault

    trusted = [vault.load_verifying_key(p) for p in trust]
    found = _identities(identity, passphrase) if identity is not None or passphrase else None
    result = vault.verify(input, trusted, found)
    scope = "every segment decrypted" if result.segments_checked else "payload digest matches"
    console.out(
        f"verified: signed by {result.signer}; {scope} "
        f"(sealed payload {result.payload_digest}, a digest of the ciphertext, not of the model)",
        highlight=False,
    )


def _guarded(command: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(command)
    def run(*args: object, **kwargs: object) -> None:
        with _os_errors():
            command(*args, **kwargs)

    return run


def register(app: typer.Typer) -> None:
    for command in (keygen, seal, unseal, inspect, rewrap, verify):
        app.command(command.__name__)(_guarded(command))
