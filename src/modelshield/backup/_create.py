"""``backup create``: one signed, content-addressed snapshot of a deployment."""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

from modelshield import vault
from modelshield.backup._config import BackupConfig, load_backup_config
from modelshield.backup._keys import load_create_keys
from modelshield.backup._manifest import Entry, Manifest, Snapshot, encode_snapshot
from modelshield.backup._store import BackupStore, object_name, snapshot_name
from modelshield.config import Config, load_config, sqlite_path
from modelshield.errors import IntegrityError, ServiceUnavailableError

__all__ = ["CreateReport", "create_snapshot"]

_log = logging.getLogger(__name__)

SEALED_MAGIC = b"\x89MSEAL\r\n"  # the first bytes of every sealed artifact (docs/formats)
_CHUNK = 1 << 20
# the database itself (copied through SQLite's backup API), its journals, and the audit store's
# writers' lock file (empty; made again by the first writer)
_SQLITE_SIDE = ("", "-wal", "-shm", "-journal", ".lock")
_TEMP_PATTERNS = (".*.part", ".*.partial", "*.tmp", ".*.tmp")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class CreateReport:
    """What :func:`create_snapshot` stored (stable).

    ``uploaded_bytes`` counts bytes written to the store this time; ``reused`` objects were
    already there (deduplicated); ``keys_created`` lists key files made on first use; ``notes``
    are warnings for the operator (a missing database, a file outside the deployment folder).
    """

    snapshot: Snapshot
    files: int
    uploaded: int
    uploaded_bytes: int
    reused: int
    total_bytes: int
    keys_created: tuple[Path, ...]
    notes: tuple[str, ...]


class _HashingReader:
    """A file wrapper that hashes and counts what is read through it."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._handle.read(n)
        self.hash.update(data)
        self.size += len(data)
        return data


def file_digest(path: Path) -> tuple[str, int]:
    """SHA-256 hex digest and size of the file ``path``."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _is_sealed(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(len(SEALED_MAGIC)) == SEALED_MAGIC
    except OSError:
        return False


class _Cache:
    """Digests of sealed files keyed by (size, mtime, inode, ctime): restic's file cache."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.old: dict[str, list[object]] = {}
        self.new: dict[str, list[object]] = {}
        if path is not None and path.is_file():
            with contextlib.suppress(OSError, ValueError):
                loaded = orjson.loads(path.read_bytes())
                if isinstance(loaded, dict):
                    self.old = loaded

    @staticmethod
    def _key(path: Path) -> list[object]:
        st = path.stat()
        return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]

    def digest(self, path: Path) -> tuple[str, int]:
        key = self._key(path)
        hit = self.old.get(str(path))
        if isinstance(hit, list) and len(hit) == 5 and hit[:4] == key:
            digest, size = str(hit[4]), int(str(hit[0]))
        else:
            digest, size = file_digest(path)
        self.new[str(path)] = [*key, digest]
        return digest, size

    def sealed_hit(self, path: Path, context: str) -> tuple[str, int] | None:
        """The object a previous run sealed from this unchanged file for the same keys."""
        key = [*self._key(path), context]
        hit = self.old.get(f"sealed:{path}")
        if isinstance(hit, list) and len(hit) == 7 and hit[:5] == key:
            return str(hit[5]), int(str(hit[6]))
        return None

    def remember_sealed(self, path: Path, context: str, digest: str, size: int) -> None:
        self.new[f"sealed:{path}"] = [*self._key(path), context, digest, size]

    def save(self) -> None:
        if self.path is None or not self.path.parent.is_dir():
            return
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".part", dir=self.path.parent
        )
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(orjson.dumps(self.new))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


@dataclass
class _Run:
    store: BackupStore
    recipients: tuple[vault.Recipient, ...]
    signer: vault.SigningKey
    tmp: Path
    cache: _Cache
    progress: Progress | None
    uploaded: int = 0
    uploaded_bytes: int = 0
    reused: int = 0

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)

    def _upload(self, path: Path, digest: str) -> None:
        with path.open("rb") as handle:
            reader = _HashingReader(handle)
            self.store.put(object_name(digest), reader)  # type: ignore[arg-type]
        if reader.hash.hexdigest() != digest:
            # the file changed while it was read: never leave an object under a wrong name
            self.store.delete(object_name(digest))
            raise IntegrityError(f"{path} changed while it was backed up; run create again")
        self.uploaded += 1
        self.uploaded_bytes += reader.size

    def store_as_is(self, path: Path) -> tuple[str, int]:
        """An already sealed file, stored byte for byte once (content addressed)."""
        digest, size = self.cache.digest(path)
        if self.store.size(object_name(digest)) == size:
            self.reused += 1
        else:
            self._upload(path, digest)
        return digest, size

    def store_sealed(self, path: Path, *, cached: bool = True) -> tuple[str, int]:
        """A plaintext file, sealed to the backup recipients and signed, then stored.

        An unchanged file whose sealed object (same recipients and signer) is still in the
        store is not sealed again: restic-style caching keeps unchanged snapshots cheap.
        """
        context = ",".join(sorted(r.key_id for r in self.recipients))
        context += "/" + self.signer.verifying_key.key_id
        if cached:
            hit = self.cache.sealed_hit(path, context)
            if hit is not None and self.store.size(object_name(hit[0])) == hit[1]:
                self.reused += 1
                self.cache.remember_sealed(path, context, *hit)
                return hit
        sealed = self.tmp / "object.sealed"
        try:
            vault.seal(path, sealed, self.recipients, signer=self.signer)
            digest, size = file_digest(sealed)
            if self.store.size(object_name(digest)) == size:
                self.reused += 1
            else:
                self._upload(sealed, digest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                sealed.unlink()
        if cached:
            self.cache.remember_sealed(path, context, digest, size)
        return digest, size


TMP_PREFIX = ".backup-tmp-"


def _private_tmp(root: Path) -> Path:
    """A 0700 work folder beside the live databases (never /tmp: it briefly holds a database
    copy in clear); folders left by a killed run (their process is gone) are removed first."""
    parent = root / "state" if (root / "state").is_dir() else root
    for old in parent.glob(f"{TMP_PREFIX}*"):
        pid = old.name[len(TMP_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                shutil.rmtree(old, ignore_errors=True)
            except PermissionError:
                pass
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=parent))


def _inside(path: Path, root: Path) -> str | None:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return None


def _walk(root: Path, skip: set[Path], patterns: Sequence[str]) -> Iterator[tuple[Path, str]]:
    for dirpath, dirnames, filenames in os.walk(root):
        folder = Path(dirpath)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if (folder / d) not in skip
            and not (folder / d).is_symlink()
            and not d.startswith(TMP_PREFIX)
        )
        for name in sorted(filenames):
            path = folder / name
            rel = path.relative_to(root).as_posix()
            if path in skip or path.is_symlink() or not path.is_file():
                continue
            if any(fnmatch.fnmatch(name, p) for p in _TEMP_PATTERNS):
                continue
            if any(fnmatch.fnmatch(rel, p) for p in patterns):
                continue
            yield path, rel


def _role(rel: str, path: Path, config_rel: str, models: set[Path]) -> str:
    if rel == config_rel:
        return "config"
    if path in models:
        return "model"
    if rel.startswith("keys/"):
        return "key"
    return "file"


def _databases(config: Config) -> list[tuple[str, str]]:
    """``(role, url)`` of each distinct database the deployment uses."""
    seen: dict[str, str] = {}
    for role, url in (("registry", config.registry.url), ("audit", config.audit.url)):
        plain = url.split("?", 1)[0]
        if plain not in seen:
            seen[plain] = role
    return [(role, url) for url, role in seen.items()]


def _pg_dump(url: str, out: Path) -> None:
    """A consistent export: pg_dump reads the whole database in one snapshot transaction."""
    exe = shutil.which("pg_dump")
    if exe is None:
        raise ServiceUnavailableError("backing up PostgreSQL needs pg_dump on the PATH")
    # the password goes through the environment, not the command line (/proc/*/cmdline is public)
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    env = dict(os.environ)
    if parts.password is not None:
        env["PGPASSWORD"] = parts.password
        netloc = parts.hostname or ""
        if parts.username:
            netloc = f"{parts.username}@{netloc}"
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        url = urlunsplit(parts._replace(netloc=netloc))
    try:
        subprocess.run(  # noqa: S603 - fixed executable, URL passed as one argument
            [exe, "--format=custom", "--no-owner", "--no-privileges", "--file", str(out), url],
            check=True,
            capture_output=True,
            timeout=3600,
            env=env,
        )
    except subprocess.CalledProcessError as exc:
        first = exc.stderr.decode(errors="replace").strip().splitlines()[:1]
        raise ServiceUnavailableError(f"pg_dump failed: {' '.join(first)}") from None
    except subprocess.TimeoutExpired:
        raise ServiceUnavailableError("pg_dump did not finish within an hour") from None


def create_snapshot(
    config_path: str | os.PathLike[str],
    store: BackupStore,
    *,
    tags: Sequence[str] = (),
    backup: BackupConfig | None = None,
    clock: Callable[[], float] = time.time,
    progress: Progress | None = None,
) -> CreateReport:
    """Back up the deployment whose configuration is ``config_path`` into ``store``.

    Every file of the deployment folder is stored: files that are already sealed artifacts
    (models) byte for byte and once only (content addressed), everything else (configuration,
    keys, other files) sealed to the backup recipients first. The registry and audit databases
    are copied consistently while the gateway runs (SQLite's online backup API, ``pg_dump`` for
    PostgreSQL) and sealed too; their live files are never read directly. The signed snapshot
    manifest is written last, so an interrupted run leaves no snapshot, only unreferenced
    objects that the next run reuses and ``prune`` removes.
    """
    from modelshield.stores import sqlite_backup

    config_file = Path(config_path).resolve()
    config = load_config(config_file)
    settings = backup if backup is not None else load_backup_config(config_file)
    root = config_file.parent
    keys = load_create_keys(settings)
    notes: list[str] = []
    skip: set[Path] = set()
    databases = _databases(config)
    for _, url in databases:
        if url.startswith("sqlite:///"):
            db = sqlite_path(url.split("?", 1)[0])
            skip.update(db.with_name(db.name + side) for side in _SQLITE_SIDE)
    for extra in (settings.identity, settings.cache):
        if extra is not None:
            skip.add(extra)
    store_root = Path(store.url)
    if "://" not in store.url and _inside(store_root, root) is not None:
        skip.add(store_root.resolve())
    models = {m.path.resolve() for m in config.models.values()}
    config_rel = config_file.relative_to(root).as_posix()
    entries: list[Entry] = []
    tmp = _private_tmp(root)
    run = _Run(store, keys.recipients, keys.signer, tmp, _Cache(settings.cache), progress)
    try:
        files: list[tuple[Path, str]] = list(_walk(root, skip, settings.exclude))
        for model in sorted(models):
            if _inside(model, root) is None:
                notes.append(f"model {model} is outside {root}: restored as external/{model.name}")
                files.append((model, f"external/{model.name}"))
        for path, rel in files:
            run.say(rel)
            mode = path.stat().st_mode & 0o777
            role = _role(rel, path.resolve(), config_rel, models)
            if _is_sealed(path):
                digest, size = run.store_as_is(path)
                entries.append(Entry(rel, role, "none", digest, size, mode))
            else:
                digest, size = run.store_sealed(path)
                entries.append(Entry(rel, role, "backup", digest, size, mode))
        for role, url in databases:
            if url.startswith("sqlite:///"):
                db = sqlite_path(url.split("?", 1)[0])
                if not db.is_file():
                    notes.append(f"{role} database {db} does not exist yet: nothing to copy")
                    continue
                run.say(f"{role} database (online backup)")
                copy = tmp / f"{role}.db"
                sqlite_backup(db, copy)
                rel = _inside(db, root) or f"external/{db.name}"
                export = "sqlite"
            elif url.startswith(("postgresql://", "postgres://")):
                run.say(f"{role} database (pg_dump)")
                copy = tmp / f"{role}.pgdump"
                _pg_dump(url, copy)
                rel, export = f"state/{role}.pgdump", "pg_dump"
            else:
                notes.append(f"{role} store {url.split('://')[0]}:// holds nothing to back up")
                continue
            try:
                digest, size = run.store_sealed(copy, cached=False)
            finally:
                copy.unlink()
            db_role = "database" if len(databases) == 1 and role == "registry" else role
            entries.append(Entry(rel, db_role, "backup", digest, size, 0o600, export))
        manifest = Manifest(
            created=clock(),
            host=socket.gethostname(),
            tags=tuple(tags),
            config=config_rel,
            entries=tuple(sorted(entries, key=lambda e: e.path)),
            recipients=tuple(r.key_id for r in keys.recipients),
            signer=keys.signer.verifying_key.key_id,
        )
        snapshot_id, data = encode_snapshot(manifest, keys.signer)
        store.put(snapshot_name(snapshot_id), data)
        run.cache.save()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return CreateReport(
        snapshot=Snapshot(snapshot_id, manifest),
        files=len(entries),
        uploaded=run.uploaded,
        uploaded_bytes=run.uploaded_bytes,
        reused=run.reused,
        total_bytes=manifest.total_size,
        keys_created=keys.created,
        notes=tuple(notes),
    )
