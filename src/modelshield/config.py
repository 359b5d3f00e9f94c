"""Typed configuration read from ``shield.toml`` (stable).

Configuration is read explicitly with :func:`load_config`; nothing is read on import. Relative
paths in the file are resolved against the file's folder. Any bad value raises
:class:`~modelshield.errors.ConfigError` naming the file and the dotted field, for example
``shield.toml: server.port: Input should be less than or equal to 65535``.

Secrets (passphrases, tokens) are :class:`Secret` values. In the file a secret is written either
inline (``passphrase = "..."``, discouraged), or as a reference that is resolved at load time:
``passphrase = { env = "VAR" }`` or ``passphrase = { file = "path" }`` (a relative path is
resolved against the configuration file's folder).
"""

from __future__ import annotations

import hmac
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema

from modelshield.errors import ConfigError

__all__ = [
    "AuditConfig",
    "BackupSection",
    "Config",
    "DetectionConfig",
    "EvidenceConfig",
    "GatewayConfig",
    "LoggingConfig",
    "ModelConfig",
    "RegistryConfig",
    "Secret",
    "ServerConfig",
    "StateConfig",
    "TierConfig",
    "WatermarkConfig",
    "load_config",
    "parse_duration",
    "sqlite_path",
]

_MASK = "**********"


class Secret:
    """A secret string that never shows itself in ``repr``, ``str``, logs or tracebacks.

    Call :meth:`reveal` at the one place the value is used. Equality is constant-time.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret holds a str")
        self._value = value

    def reveal(self) -> str:
        """The secret value itself."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{_MASK}')"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, format_spec: str) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, len(self._value)))

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.with_info_plain_validator_function(
            _secret_from_config,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda s: _MASK),
        )


def _secret_from_config(value: Any, info: core_schema.ValidationInfo) -> Secret:
    if isinstance(value, Secret):
        return value
    if isinstance(value, str):
        return Secret(value)
    if isinstance(value, dict) and len(value) == 1:
        ((kind, ref),) = value.items()
        if kind == "env" and isinstance(ref, str):
            if ref not in os.environ:
                raise ValueError(f"environment variable {ref} is not set")
            return Secret(os.environ[ref])
        if kind == "file" and isinstance(ref, str):
            base = (info.context or {}).get("base")
            file = Path(ref) if base is None else Path(base) / ref
            try:
                return Secret(file.read_text(encoding="utf-8").strip())
            except OSError as exc:
                raise ValueError(f"cannot read secret file {ref}: {exc.strerror}") from None
    raise ValueError('a secret is a string, { env = "VAR" } or { file = "path" }')


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Section):
    """``[server]``: where the gateway listens."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    # threads per worker for numpy's BLAS (the detectors' and the watermark's matrix products).
    # Their matrices are a few rows, and a BLAS thread that waits for work spins on a core
    # that the other workers, the audit writer and the clients need.
    blas_threads: int = Field(default=1, ge=1, le=64)
    # with several workers: a worker whose event loop has been silent this long is replaced
    worker_timeout: float = Field(default=30.0, ge=2.0, le=3600.0)


class ModelConfig(_Section):
    """``[models.NAME]``: one served model."""

    path: Path
    format: Literal["auto", "onnx", "skops", "torch"] = "auto"
    identity: Path | None = None
    require_signer: Path | None = None
    passphrase: Secret | None = None
    image_shape: tuple[int, int] | None = None  # read a row as an image (response watermark)

    @field_validator("path")
    @classmethod
    def _path_not_empty(cls, value: Path) -> Path:
        if str(value) in ("", "."):
            raise ValueError("path must name a file")
        return value


def _check_store_url(value: str, schemes: tuple[str, ...]) -> str:
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme not in schemes:
        # only the scheme is echoed: a URL may carry a password
        raise ValueError(f"URL scheme must be one of {', '.join(schemes)}, got {scheme!r}")
    return value


class RegistryConfig(_Section):
    """``[registry]``: API keys, clients and admin TOTP secrets.

    ``sqlite:///relative/or/absolute/path.db`` (one machine) or ``postgresql://...`` (several
    gateway replicas).
    """

    url: str = "sqlite:///state/registry.db"

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        return _check_store_url(value, ("sqlite", "postgresql", "postgres"))


class AuditConfig(_Section):
    """``[audit]``: the tamper-evident query log and the HMAC key that keys its digests."""

    url: str = "sqlite:///state/audit.db"
    key: Secret | None = None

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        return _check_store_url(value, ("sqlite", "postgresql", "postgres"))


class StateConfig(_Section):
    """``[state]``: rate limits, budgets, revocations, flags and detector state.

    ``memory://`` keeps them in the gateway process (one process only); ``redis://host:port/db``
    shares them between replicas.
    """

    url: str = "memory://"

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        return _check_store_url(value, ("memory", "redis", "rediss"))


_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90s``, ``15m``, ``24h`` or ``30d``."""
    text = text.strip()
    if len(text) < 2 or text[-1] not in _PERIODS or not text[:-1].isdigit() or int(text[:-1]) <= 0:
        raise ValueError(f"a duration is a positive whole number and s, m, h or d, got {text!r}")
    return float(int(text[:-1]) * _PERIODS[text[-1]])


class TierConfig(_Section):
    """``[tiers.NAME]``: what a client of this tier may do and what it gets back.

    ``output`` is the ordered list of output policies (see docs/gateway.md): ``probabilities``,
    ``top_k:N``, ``round:N``, ``reverse_sigmoid:BETA:GAMMA``, ``noise:SCALE``, ``labels``.
    """

    requests_per_second: float = Field(default=20.0, gt=0)
    burst: int = Field(default=40, ge=1)
    budget_rows: int = Field(default=10_000, ge=1)
    budget_period: str = "30d"
    max_batch_rows: int = Field(default=256, ge=1, le=100_000)
    output: tuple[str, ...] = ("probabilities",)

    @field_validator("budget_period")
    @classmethod
    def _period(cls, value: str) -> str:
        if value != "lifetime":
            parse_duration(value)
        return value

    @field_validator("output")
    @classmethod
    def _output(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from modelshield.gateway._harden import parse_policy

        parse_policy(value)
        return value

    @property
    def budget_seconds(self) -> float | None:
        """Length of one budget period, ``None`` for a lifetime budget."""
        return None if self.budget_period == "lifetime" else parse_duration(self.budget_period)


def _default_tiers() -> dict[str, TierConfig]:
    return {"standard": TierConfig()}


class GatewayConfig(_Section):
    """``[gateway]``: request limits that apply to every client."""

    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # seconds a request body may take to arrive once its headers have (a client that trickles
    # its body, or stops sending, gets 408 instead of holding its connection for ever)
    body_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    dashboard: bool = False  # the web dashboard at /dashboard (loopback callers only)
    tls_terminated: bool = False  # served over TLS by a proxy in front: session cookies get Secure


class DetectionConfig(_Section):
    """``[detection]``: extraction detectors in the gateway and what happens to a flagged client.

    ``action`` is the response for every tier unless ``actions`` names one for a tier: ``alert``
    (log and webhook only), ``throttle`` (a tenth of the request rate), ``degrade`` (labels only)
    or ``block`` (suspend the key). ``reference`` is a ``.npy`` file of honest inputs that the
    detectors are fitted on (the gateway falls back to the model's declared input range).
    ``state_url`` is where the detectors' per-client state is shared between replicas:
    ``redis://``, ``postgresql://`` or ``memory://`` (each process its own); by default it
    follows ``[state] url``.
    """

    enabled: bool = False
    action: Literal["alert", "throttle", "degrade", "block"] = "block"
    actions: dict[str, Literal["alert", "throttle", "degrade", "block"]] = Field(
        default_factory=dict
    )
    reference: Path | None = None
    calibration: Path | None = None  # held-out honest rows (.npy) the thresholds are set on
    webhook: str | None = None
    group: str | None = None  # "*": also watch all clients together (colluding Sybil keys)
    state_url: str | None = None

    @field_validator("state_url")
    @classmethod
    def _state_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _check_store_url(value, ("memory", "redis", "rediss", "postgresql", "postgres"))


class WatermarkConfig(_Section):
    """``[watermark]``: per-client response watermark (DAWN-style) in the gateway."""

    enabled: bool = False
    share: float = Field(default=0.01, gt=0, le=0.1)
    # answers with top-1 probability below ``uncertain_below`` are marked at this higher rate
    # (thieves that augment or synthesise queries send many of them; honest clients few)
    uncertain_share: float | None = Field(default=None, gt=0, le=0.5)
    uncertain_below: float = Field(default=0.9, gt=0, le=1)
    key: Secret | None = None

    @model_validator(mode="after")
    def _uncertain_at_least_share(self) -> WatermarkConfig:
        if self.uncertain_share is not None and self.uncertain_share < self.share:
            raise ValueError("uncertain_share must be at least share")
        return self


class EvidenceConfig(_Section):
    """``[evidence]``: where the ownership certificate and red-team reports live."""

    certificate: Path | None = None
    reports: Path | None = None


class BackupSection(_Section):
    """``[backup]``: regular sealed snapshots (docs/backup.md; ``modelshield.backup`` resolves
    the paths, which stay relative to the configuration file)."""

    to: str | None = None
    every: str = "24h"
    keep_last: int = Field(default=7, ge=0)
    keep_daily: int = Field(default=7, ge=0)
    keep_weekly: int = Field(default=4, ge=0)
    keep_monthly: int = Field(default=12, ge=0)
    recipients: tuple[str, ...] = ("keys/backup.pub",)
    identity: str = "keys/backup.key"
    signing_key: str = "keys/backup.signing.key"
    trust: tuple[str, ...] | None = None
    endpoint: str | None = None
    region: str | None = None
    exclude: tuple[str, ...] = ()
    cache: str = "state/backup-cache.json"
    in_gateway: bool = False

    @field_validator("every")
    @classmethod
    def _every(cls, value: str) -> str:
        parse_duration(value)
        return value


class LoggingConfig(_Section):
    """``[logging]``: the level of the gateway's log."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Config(_Section):
    """The whole ``shield.toml``; ``source`` is the file read (``None`` if built in code)."""

    server: ServerConfig = ServerConfig()
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    registry: RegistryConfig = RegistryConfig()
    audit: AuditConfig = AuditConfig()
    state: StateConfig = StateConfig()
    gateway: GatewayConfig = GatewayConfig()
    tiers: dict[str, TierConfig] = Field(default_factory=_default_tiers)
    detection: DetectionConfig = DetectionConfig()
    watermark: WatermarkConfig = WatermarkConfig()
    evidence: EvidenceConfig = EvidenceConfig()
    backup: BackupSection = BackupSection()
    logging: LoggingConfig = LoggingConfig()
    source: Path | None = None

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: dict[str, ModelConfig]) -> dict[str, ModelConfig]:
        for name in value:
            if not name or not all(c.isalnum() or c in "-_." for c in name):
                raise ValueError(f"model name {name!r} may use only letters, digits, '-', '_', '.'")
        return value


def _format_location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a ``shield.toml``; relative paths become relative to its folder."""
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{file}: configuration file not found") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not a UTF-8 text file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from None
    if "source" in raw:
        raise ConfigError(f"{file}: source: not a configuration field")
    base = file.resolve().parent
    try:
        config = Config.model_validate(
            {**raw, "source": file.resolve()}, context={"base": file.resolve().parent}
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _format_location(first["loc"])
        raise ConfigError(f"{file}: {where}: {first['msg']}") from None
    models = {
        name: model.model_copy(
            update={
                "path": base / model.path,
                "identity": None if model.identity is None else base / model.identity,
                "require_signer": (
                    None if model.require_signer is None else base / model.require_signer
                ),
            }
        )
        for name, model in config.models.items()
    }

    def rel(path: Path | None) -> Path | None:
        return None if path is None else base / path

    return config.model_copy(
        update={
            "detection": config.detection.model_copy(
                update={
                    "reference": rel(config.detection.reference),
                    "calibration": rel(config.detection.calibration),
                }
            ),
            "evidence": config.evidence.model_copy(
                update={
                    "certificate": rel(config.evidence.certificate),
                    "reports": rel(config.evidence.reports),
                }
            ),
            "models": models,
            "registry": config.registry.model_copy(
                update={"url": _resolve_sqlite(config.registry.url, base)}
            ),
            "audit": config.audit.model_copy(
                update={"url": _resolve_sqlite(config.audit.url, base)}
            ),
        }
    )


def _resolve_sqlite(url: str, base: Path) -> str:
    """Make a relative ``sqlite:///path`` absolute against the configuration file's folder."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return url
    path = Path(url[len(prefix) :])
    return prefix + str(path if path.is_absolute() else base / path)


def sqlite_path(url: str) -> Path:
    """The file a ``sqlite:///`` URL names (after :func:`load_config` resolved it)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise ConfigError(f"not a sqlite URL: {url!r}")
    return Path(url[len(prefix) :])
