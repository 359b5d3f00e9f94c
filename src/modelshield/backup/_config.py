"""``[backup]``: where, how often and how long snapshots are kept, and with which keys.

Read from the raw TOML by :func:`load_backup_config` until ``modelshield.config.Config`` carries
the section itself: ``[backup]`` in ``shield.toml`` or, while the main configuration refuses
unknown sections, the same keys in ``backup.toml`` beside it (top level or under ``[backup]``).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelshield.config import parse_duration
from modelshield.errors import ConfigError

__all__ = ["BackupConfig", "RetentionPolicy", "load_backup_config", "parse_backup_config"]


@dataclass(frozen=True)
class RetentionPolicy:
    """How many snapshots ``prune`` keeps (restic's ``forget`` semantics, stable).

    ``keep_last`` keeps the newest N; ``keep_daily`` (``weekly``, ``monthly``) keeps the newest
    snapshot of each of the last N days (ISO weeks, months) that have one. A snapshot kept by any
    rule is kept. A policy that keeps nothing is refused (deny by default).
    """

    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0

    def __post_init__(self) -> None:
        counts = (self.keep_last, self.keep_daily, self.keep_weekly, self.keep_monthly)
        if any(c < 0 for c in counts):
            raise ConfigError("retention counts must be 0 or more")

    @property
    def empty(self) -> bool:
        return not (self.keep_last or self.keep_daily or self.keep_weekly or self.keep_monthly)


@dataclass(frozen=True)
class BackupConfig:
    """The ``[backup]`` section, paths resolved against the configuration file's folder (stable).

    ``to``: default destination (a folder or ``s3://bucket/prefix``); ``every``: seconds between
    scheduled snapshots; ``retention``: what scheduled runs keep; ``recipients``: X25519 public
    keys the unsealed parts (registry, audit log, configuration, keys) are sealed to;
    ``identity``: the matching private key (needed only to restore: keep a copy off this host);
    ``signing_key``: the Ed25519 key that signs every snapshot manifest; ``trust``: the public keys
    ``verify`` and ``restore`` accept; ``endpoint``/``region``: an S3-compatible server;
    ``exclude``: glob patterns (relative to the deployment folder) left out; ``cache``: the local
    file that remembers digests of unchanged sealed files; ``in_gateway``: run the schedule inside
    ``modelshield serve``.
    """

    base: Path
    to: str | None = None
    every: float = 86400.0
    retention: RetentionPolicy = RetentionPolicy(7, 7, 4, 12)
    recipients: tuple[Path, ...] = ()
    identity: Path | None = None
    signing_key: Path | None = None
    trust: tuple[Path, ...] = ()
    endpoint: str | None = None
    region: str | None = None
    exclude: tuple[str, ...] = ()
    cache: Path | None = None
    in_gateway: bool = False

    @classmethod
    def defaults(cls, base: Path) -> BackupConfig:
        """The configuration of a deployment folder without a ``[backup]`` section."""
        return parse_backup_config({}, base)


_KEYS = {
    "to",
    "every",
    "keep_last",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "recipients",
    "identity",
    "signing_key",
    "trust",
    "endpoint",
    "region",
    "exclude",
    "cache",
    "in_gateway",
}


def _str(raw: dict[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key}: must be a non-empty string")
    return value


def _count(raw: dict[str, Any], key: str, default: int, where: str) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{where}.{key}: must be a whole number, 0 or more")
    return value


def _paths(
    raw: dict[str, Any], key: str, default: tuple[str, ...], base: Path, where: str
) -> tuple[Path, ...]:
    value = raw.get(key, list(default))
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}.{key}: must be a list of paths")
    return tuple(base / v for v in value)


def parse_backup_config(raw: dict[str, Any], base: Path, *, where: str = "backup") -> BackupConfig:
    """Validate a raw ``[backup]`` table; relative paths are resolved against ``base``."""
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: not a backup setting")
    every_text = raw.get("every", "24h")
    try:
        every = parse_duration(every_text) if isinstance(every_text, str) else None
    except ValueError as exc:
        raise ConfigError(f"{where}.every: {exc}") from None
    if every is None:
        raise ConfigError(f'{where}.every: must be a duration such as "24h"')
    in_gateway = raw.get("in_gateway", False)
    if not isinstance(in_gateway, bool):
        raise ConfigError(f"{where}.in_gateway: must be true or false")
    to = _str(raw, "to", where)
    if to is not None and "://" not in to:
        to = str(base / Path(to).expanduser())
    exclude = raw.get("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(v, str) for v in exclude):
        raise ConfigError(f"{where}.exclude: must be a list of glob patterns")
    signing = _paths(raw, "signing_key", ("keys/backup.signing.key",), base, where)
    identity = _paths(raw, "identity", ("keys/backup.key",), base, where)
    if len(signing) != 1 or len(identity) != 1:
        raise ConfigError(f"{where}: signing_key and identity name one file each")
    default_trust = signing[0].with_name(signing[0].name.removesuffix(".key") + ".pub")
    trust = _paths(raw, "trust", (), base, where) if "trust" in raw else (default_trust,)
    cache = _str(raw, "cache", where) or "state/backup-cache.json"
    return BackupConfig(
        base=base,
        to=to,
        every=every,
        retention=RetentionPolicy(
            keep_last=_count(raw, "keep_last", 7, where),
            keep_daily=_count(raw, "keep_daily", 7, where),
            keep_weekly=_count(raw, "keep_weekly", 4, where),
            keep_monthly=_count(raw, "keep_monthly", 12, where),
        ),
        recipients=_paths(raw, "recipients", ("keys/backup.pub",), base, where),
        identity=identity[0],
        signing_key=signing[0],
        trust=trust,
        endpoint=_str(raw, "endpoint", where),
        region=_str(raw, "region", where),
        exclude=tuple(exclude),
        cache=base / cache,
        in_gateway=in_gateway,
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def load_backup_config(config_path: str | os.PathLike[str]) -> BackupConfig:
    """``[backup]`` of ``shield.toml`` (or ``backup.toml`` beside it); defaults when absent."""
    path = Path(config_path)
    base = path.resolve().parent
    raw = _read_toml(path)
    section = raw.get("backup")
    where = f"{path}: backup"
    side = path.with_name("backup.toml")
    if section is None and side.is_file():
        side_raw = _read_toml(side)
        section = side_raw.get("backup", side_raw)
        where = f"{side}: backup"
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: must be a table")
    return parse_backup_config(section, base, where=where)
