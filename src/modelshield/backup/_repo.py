"""Reading a backup store: list, verify, restore and prune snapshots."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from modelshield import vault
from modelshield._files import fsync_dir
from modelshield.backup._config import RetentionPolicy
from modelshield.backup._manifest import Entry, Snapshot, decode_snapshot, safe_relative
from modelshield.backup._policy import select_snapshots
from modelshield.backup._store import (
    OBJECTS,
    SNAPSHOTS,
    BackupStore,
    object_name,
    snapshot_name,
)
from modelshield.errors import IntegrityError, InvalidInputError

__all__ = [
    "Listing",
    "Problem",
    "PruneReport",
    "RestoreReport",
    "VerifyReport",
    "list_snapshots",
    "load_snapshot",
    "prune",
    "restore_snapshot",
    "verify_store",
]

_log = logging.getLogger(__name__)

Trusted = vault.VerifyingKey | Sequence[vault.VerifyingKey]


def snapshot_ids(store: BackupStore) -> list[str]:
    """The ids of every snapshot file in ``store`` (unchecked), sorted."""
    ids = []
    for name in store.list(SNAPSHOTS):
        stem = name[len(SNAPSHOTS) :]
        if stem.endswith(".json") and "/" not in stem:
            ids.append(stem[: -len(".json")])
    return sorted(ids)


def resolve_id(store: BackupStore, prefix: str) -> str:
    """The one snapshot id that starts with ``prefix`` (at least 4 hex digits)."""
    prefix = prefix.strip().lower()
    if len(prefix) < 4:
        raise InvalidInputError("give at least the first 4 digits of the snapshot id")
    matches = [i for i in snapshot_ids(store) if i.startswith(prefix)]
    if not matches:
        raise InvalidInputError(f"no snapshot {prefix} in {store.url}")
    if len(matches) > 1:
        raise InvalidInputError(f"snapshot id {prefix} is ambiguous: give more digits")
    return matches[0]


def load_snapshot(store: BackupStore, snapshot_id: str, trusted: Trusted) -> Snapshot:
    """The verified snapshot ``snapshot_id`` (a full id or a unique prefix)."""
    full = resolve_id(store, snapshot_id)
    data = store.get(snapshot_name(full))
    if data is None:
        raise IntegrityError(f"snapshot {full[:16]}: missing")
    return decode_snapshot(full, data, trusted)


@dataclass(frozen=True)
class Listing:
    """One line of ``backup list`` (stable): ``status`` is ``ok``, ``unverified`` (no trusted
    key given) or the reason it failed; ``snapshot`` is ``None`` when it could not be read."""

    id: str
    status: str
    snapshot: Snapshot | None


def _unverified(snapshot_id: str, data: bytes) -> Snapshot | None:
    # listing without a trusted key: show what the file claims, marked as unverified
    from modelshield.backup._manifest import _parse_manifest

    try:
        body = base64.b64decode(orjson.loads(data)["manifest"], validate=True)
        return Snapshot(snapshot_id, _parse_manifest(body))
    except (ValueError, KeyError, TypeError):
        return None


def list_snapshots(store: BackupStore, trusted: Trusted | None) -> list[Listing]:
    """Every snapshot in ``store``, oldest first, each checked when ``trusted`` is given."""
    out: list[Listing] = []
    for snapshot_id in snapshot_ids(store):
        data = store.get(snapshot_name(snapshot_id)) or b""
        if trusted is None:
            out.append(Listing(snapshot_id, "unverified", _unverified(snapshot_id, data)))
            continue
        try:
            out.append(Listing(snapshot_id, "ok", decode_snapshot(snapshot_id, data, trusted)))
        except IntegrityError as exc:
            out.append(Listing(snapshot_id, str(exc), _unverified(snapshot_id, data)))
    return sorted(
        out, key=lambda item: (item.snapshot.manifest.created if item.snapshot else 0.0, item.id)
    )


# -- verify ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing ``verify`` found wrong (stable)."""

    snapshot: str
    object: str
    path: str
    reason: str

    def __str__(self) -> str:
        where = f" object {self.object}" if self.object else ""
        path = f" ({self.path})" if self.path else ""
        return f"snapshot {self.snapshot[:16]}:{where}{path}: {self.reason}"


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :func:`verify_store` (stable)."""

    snapshots: int
    objects: int
    bytes_read: int
    read_data: bool
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_failure(self) -> None:
        """Raise :class:`IntegrityError` naming the first problem (and how many there are)."""
        if self.problems:
            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            raise IntegrityError(f"backup damaged: {self.problems[0]}{more}")


def _read_digest(store: BackupStore, name: str) -> tuple[str, int] | None:
    digest = hashlib.sha256()
    size = 0
    try:
        for chunk in store.read(name):
            digest.update(chunk)
            size += len(chunk)
    except FileNotFoundError:
        return None
    return digest.hexdigest(), size


def _check_object(store: BackupStore, entry: Entry, read_data: bool) -> tuple[str | None, int]:
    """``(reason or None, bytes read)`` for one entry's object."""
    name = object_name(entry.digest)
    if not read_data:
        size = store.size(name)
        if size is None:
            return "missing", 0
        return (None if size == entry.size else f"size {size}, expected {entry.size}"), 0
    got = _read_digest(store, name)
    if got is None:
        return "missing", 0
    digest, size = got
    if digest != entry.digest or size != entry.size:
        return "content does not match its digest (changed or damaged)", size
    return None, size


def verify_store(
    store: BackupStore,
    trusted: Trusted,
    *,
    snapshot: str | None = None,
    read_data: bool = False,
) -> VerifyReport:
    """Check snapshots (all, or one) and the objects they list.

    Each manifest's signature and id are checked with the ``trusted`` keys. Without
    ``read_data`` each object must exist with its size; with it every object is read back and
    hashed (each distinct object once). Nothing raises for damage: read ``problems`` or call
    :meth:`VerifyReport.raise_for_failure`.
    """
    ids = [resolve_id(store, snapshot)] if snapshot is not None else snapshot_ids(store)
    problems: list[Problem] = []
    checked: dict[str, tuple[str | None, int]] = {}
    bytes_read = 0
    for snapshot_id in ids:
        data = store.get(snapshot_name(snapshot_id))
        try:
            if data is None:
                raise IntegrityError(f"snapshot {snapshot_id[:16]}: missing")
            snap = decode_snapshot(snapshot_id, data, trusted)
        except IntegrityError as exc:
            reason = str(exc).split(": ", 1)[-1]
            problems.append(Problem(snapshot_id, "", "manifest", reason))
            continue
        for entry in snap.manifest.entries:
            if entry.digest not in checked:
                checked[entry.digest] = _check_object(store, entry, read_data)
                bytes_read += checked[entry.digest][1]
            found = checked[entry.digest][0]
            if found is not None:
                problems.append(Problem(snapshot_id, object_name(entry.digest), entry.path, found))
    return VerifyReport(len(ids), len(checked), bytes_read, read_data, tuple(problems))


# -- restore --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreReport:
    """What :func:`restore_snapshot` wrote (stable)."""

    snapshot: Snapshot
    into: Path
    config: Path
    files: int
    bytes: int
    notes: tuple[str, ...]


def _fetch(store: BackupStore, snap: Snapshot, entry: Entry, dst: Path) -> None:
    """Copy one object to ``dst`` (0600), checking its digest and size on the way."""
    name = object_name(entry.digest)
    digest = hashlib.sha256()
    size = 0
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        try:
            for chunk in store.read(name):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        except FileNotFoundError:
            raise IntegrityError(
                f"snapshot {snap.id[:16]}: object {name} ({entry.path}): missing"
            ) from None
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != entry.digest or size != entry.size:
        raise IntegrityError(
            f"snapshot {snap.id[:16]}: object {name} ({entry.path}): content does not match"
            " its digest (changed or damaged)"
        )


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def restore_snapshot(
    store: BackupStore,
    snapshot_id: str,
    into: str | os.PathLike[str],
    *,
    identity: vault.Identity | Sequence[vault.Identity],
    trusted: Trusted,
    force: bool = False,
) -> RestoreReport:
    """Restore the snapshot into the folder ``into``, atomically.

    Everything is written to a private staging folder next to ``into`` and checked (every
    object's digest; every backup-sealed file decrypted with ``identity`` and its signature
    checked against ``trusted``) before the staging folder is renamed to ``into``. An existing,
    non-empty ``into`` is refused unless ``force``; with ``force`` it is moved aside, replaced
    and then removed. On any failure ``into`` is left exactly as it was.
    """
    target = Path(into).expanduser().absolute()
    snap = load_snapshot(store, snapshot_id, trusted)
    exists = os.path.lexists(target)
    if exists and (target.is_symlink() or not target.is_dir()):  # --force replaces folders only
        raise InvalidInputError(f"{target} exists and is not a folder; restore into a folder")
    if exists and not _is_empty_dir(target) and not force:
        raise InvalidInputError(f"{target} exists and is not empty; pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.restore-", dir=target.parent))
    notes: list[str] = []
    total = 0
    try:
        # beside the staging folder, so that no restored path can collide with it
        fetched = staging.with_name(staging.name + ".fetch")
        for entry in snap.manifest.entries:
            if not safe_relative(entry.path):  # decode_snapshot refuses these already
                raise IntegrityError(f"snapshot {snap.id[:16]}: unsafe path {entry.path!r}")
            dst = staging.joinpath(*entry.path.split("/"))
            dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _fetch(store, snap, entry, fetched)
            if entry.sealing == "backup":
                try:
                    vault.unseal(fetched, dst, identity, require_signer=trusted)
                except IntegrityError:
                    raise IntegrityError(
                        f"snapshot {snap.id[:16]}: object {object_name(entry.digest)}"
                        f" ({entry.path}): cannot open with the backup key"
                    ) from None
                fetched.unlink()
            else:
                os.replace(fetched, dst)
            os.chmod(dst, entry.mode)
            total += dst.stat().st_size
            if entry.export == "pg_dump":
                notes.append(
                    f"{entry.path} is a pg_dump export: load it with"
                    f" pg_restore --clean --if-exists -d URL {entry.path}"
                )
            if entry.path.startswith("external/"):
                notes.append(f"{entry.path} lived outside the deployment folder: move it back")
        keys = staging / "keys"
        if keys.is_dir():
            os.chmod(keys, 0o700)
        os.chmod(staging, 0o700)
        if exists:
            aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, aside / "old")
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(aside / "old", target)
                raise
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(staging, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        staging.with_name(staging.name + ".fetch").unlink(missing_ok=True)
        raise
    return RestoreReport(
        snapshot=snap,
        into=target,
        config=target / snap.manifest.config,
        files=len(snap.manifest.entries),
        bytes=total,
        notes=tuple(notes),
    )


# -- prune ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune` kept and removed (stable)."""

    kept: tuple[Snapshot, ...]
    forgotten: tuple[Snapshot, ...]
    objects_deleted: int
    bytes_freed: int
    dry_run: bool


def prune(
    store: BackupStore, trusted: Trusted, policy: RetentionPolicy, *, dry_run: bool = False
) -> PruneReport:
    """Forget snapshots the policy does not keep, then delete objects no snapshot references.

    Refuses an empty policy (it would delete everything) and raises
    :class:`~modelshield.errors.IntegrityError` before deleting anything while any snapshot fails
    :func:`verify_store` without ``read_data`` (a bad signature, a missing or resized object).
    Do not run it while a ``create`` writes to the same store: objects uploaded by that run are
    not referenced yet.
    """
    if policy.empty:
        raise InvalidInputError("prune needs at least one --keep-* count above 0")
    # the same check as `backup verify` without --read-data: every manifest signed by a trusted
    # key, every object it lists present with its size; a damaged store is left as it is
    verify_store(store, trusted).raise_for_failure()
    snapshots = []
    for snapshot_id in snapshot_ids(store):
        data = store.get(snapshot_name(snapshot_id))
        if data is None:
            raise IntegrityError(f"snapshot {snapshot_id[:16]}: missing")
        snapshots.append(decode_snapshot(snapshot_id, data, trusted))
    keep, forget = select_snapshots(snapshots, policy)
    referenced = {object_name(e.digest) for s in keep for e in s.manifest.entries}
    deleted = 0
    freed = 0
    if not dry_run:
        for snap in forget:
            store.delete(snapshot_name(snap.id))
    for name in list(store.list(OBJECTS)):
        if name not in referenced:
            deleted += 1
            freed += store.size(name) or 0
            if not dry_run:
                store.delete(name)
    return PruneReport(tuple(keep), tuple(forget), deleted, freed, dry_run)
