"""Per-client limits: a token bucket on requests and a query budget counted in rows.

The arithmetic is pure (:func:`consume`); the state lives in a :class:`LimitStore`: in process
memory for one gateway process, or Redis (one atomic Lua script per request) for several replicas.
Both also hold the per-client *flag* set by extraction detection (``throttle``, ``degrade``,
``block``), so that a flag raised on one replica acts on the next request on every replica.

A request is admitted whole or refused whole: a batch of 100 rows costs 100 rows of budget, and a
batch larger than what is left is refused without consuming anything.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from modelshield.errors import ConfigError, ServiceUnavailableError

FLAGS = ("throttle", "degrade", "block")
THROTTLE_FACTOR = 0.1  # a throttled client gets a tenth of its tier's request rate


@dataclass(frozen=True)
class LimitRule:
    """A tier's limits: ``rate`` requests per second with bursts of ``burst``; ``budget_rows`` rows
    per ``budget_seconds`` (``None``: for the key's whole life)."""

    rate: float
    burst: int
    budget_rows: int
    budget_seconds: float | None


@dataclass(frozen=True)
class LimitDecision:
    """Whether a request may proceed; ``reason`` is ``rate``, ``budget`` or ``blocked`` when not."""

    allowed: bool
    reason: str = ""
    retry_after: float | None = None
    rows_used: int = 0
    flag: str | None = None


@dataclass(frozen=True)
class BucketState:
    tokens: float
    updated: float
    window: int
    rows_used: int


def budget_window(rule: LimitRule, now: float) -> int:
    """Index of the fixed budget window that ``now`` falls in (0 for a lifetime budget)."""
    return 0 if rule.budget_seconds is None else int(now // rule.budget_seconds)


def consume(
    state: BucketState | None, rows: int, rule: LimitRule, now: float, flag: str | None = None
) -> tuple[BucketState, LimitDecision]:
    """Admit or refuse ``rows`` rows at time ``now``; returns the new state and the decision."""
    throttled = flag == "throttle"
    rate = rule.rate * (THROTTLE_FACTOR if throttled else 1.0)
    burst = max(1.0, rule.burst * THROTTLE_FACTOR) if throttled else float(rule.burst)
    window = budget_window(rule, now)
    if state is None:
        tokens, used = burst, 0
    else:
        tokens = min(burst, state.tokens + max(0.0, now - state.updated) * rate)
        used = state.rows_used if state.window == window else 0
    state = BucketState(tokens=tokens, updated=now, window=window, rows_used=used)
    if flag == "block":
        return state, LimitDecision(False, "blocked", None, state.rows_used, flag)
    if tokens < 1.0:
        wait = (1.0 - tokens) / rate
        return state, LimitDecision(False, "rate", wait, state.rows_used, flag)
    if state.rows_used + rows > rule.budget_rows:
        retry = None
        if rule.budget_seconds is not None:
            retry = (window + 1) * rule.budget_seconds - now
        return state, LimitDecision(False, "budget", retry, state.rows_used, flag)
    state = BucketState(tokens=tokens - 1.0, updated=now, window=window, rows_used=used + rows)
    return state, LimitDecision(True, "", None, state.rows_used, flag)


class LimitStore(Protocol):
    """Where limit state and detector flags live."""

    def consume(self, client: str, rows: int, rule: LimitRule, now: float) -> LimitDecision: ...

    def set_flag(self, client: str, flag: str | None) -> None: ...

    def get_flag(self, client: str) -> str | None: ...

    def flags(self) -> dict[str, str]: ...

    def reset(self, client: str) -> None: ...

    def close(self) -> None: ...


class MemoryLimitStore:
    """Limits in this process's memory, exact under threads (one lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, BucketState] = {}
        self._flags: dict[str, str] = {}

    def consume(self, client: str, rows: int, rule: LimitRule, now: float) -> LimitDecision:
        with self._lock:
            state, decision = consume(
                self._state.get(client), rows, rule, now, self._flags.get(client)
            )
            self._state[client] = state
            return decision

    def set_flag(self, client: str, flag: str | None) -> None:
        if flag is not None and flag not in FLAGS:
            raise ValueError(f"unknown flag {flag!r}")
        with self._lock:
            if flag is None:
                self._flags.pop(client, None)
            else:
                self._flags[client] = flag

    def get_flag(self, client: str) -> str | None:
        return self._flags.get(client)

    def flags(self) -> dict[str, str]:
        with self._lock:
            return dict(self._flags)

    def reset(self, client: str) -> None:
        with self._lock:
            self._state.pop(client, None)

    def close(self) -> None:
        return None


# KEYS: bucket hash, budget counter, flag; ARGV: rate, burst, rows, budget, now, budget ttl,
# throttle factor. Returns {allowed, reason, retry_after, rows_used, flag}.
_CONSUME_LUA = """
local flag = redis.call('GET', KEYS[3])
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
if flag == 'throttle' then
  rate = rate * tonumber(ARGV[7])
  burst = math.max(1, burst * tonumber(ARGV[7]))
end
local rows = tonumber(ARGV[3])
local budget = tonumber(ARGV[4])
local now = tonumber(ARGV[5])
local ttl = tonumber(ARGV[6])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local keep = math.ceil(burst / rate) + 60
if flag == 'block' then
  return {0, 'blocked', '-1', used, flag or ''}
end
if tokens < 1 then
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', ARGV[5])
  redis.call('EXPIRE', KEYS[1], keep)
  return {0, 'rate', tostring((1 - tokens) / rate), used, flag or ''}
end
if used + rows > budget then
  return {0, 'budget', '-1', used, flag or ''}
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens - 1), 'ts', ARGV[5])
redis.call('EXPIRE', KEYS[1], keep)
used = redis.call('INCRBY', KEYS[2], rows)
if ttl > 0 then redis.call('EXPIRE', KEYS[2], ttl) end
return {1, '', '-1', used, flag or ''}
"""


class RedisLimitStore:
    """Limits shared by every gateway replica through Redis; one atomic script per request.

    Replicas pass their own clock, so their clocks must agree (NTP) to well under a second.
    Any Redis failure raises :class:`ServiceUnavailableError`: the gateway then refuses (503).
    """

    def __init__(self, url: str, *, prefix: str = "modelshield", timeout: float = 1.0) -> None:
        import redis

        self._redis: Any = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._prefix = prefix
        self._script = self._redis.register_script(_CONSUME_LUA)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        where = self._redis.connection_pool.connection_kwargs  # never the password
        self._where = (
            f"Redis at {where.get('path')}"
            if where.get("path")
            else f"Redis at {where.get('host')}:{where.get('port')}/{where.get('db', 0)}"
        )

    def _unavailable(self, exc: BaseException) -> ServiceUnavailableError:
        first = str(exc).splitlines()[0] if str(exc) else ""
        return ServiceUnavailableError(
            f"state store unavailable ({self._where}): {type(exc).__name__}: {first}"[:300]
        )

    def _key(self, kind: str, client: str) -> str:
        return f"{self._prefix}:{kind}:{client}"

    def consume(self, client: str, rows: int, rule: LimitRule, now: float) -> LimitDecision:
        window = budget_window(rule, now)
        ttl = 0 if rule.budget_seconds is None else math.ceil(rule.budget_seconds) + 60
        keys = [
            self._key("bucket", client),
            self._key(f"budget:{window}", client),
            self._key("flag", client),
        ]
        args: list[Any] = [
            rule.rate,
            rule.burst,
            rows,
            rule.budget_rows,
            repr(now),
            ttl,
            THROTTLE_FACTOR,
        ]
        try:
            allowed, reason, retry, used, flag = self._script(keys=keys, args=args)
        except self._errors as exc:
            raise self._unavailable(exc) from None
        reason = reason.decode() if isinstance(reason, bytes) else str(reason)
        flag_text = flag.decode() if isinstance(flag, bytes) else str(flag)
        retry_after = float(retry)
        if reason == "budget" and rule.budget_seconds is not None:
            retry_after = (window + 1) * rule.budget_seconds - now
        return LimitDecision(
            allowed=bool(int(allowed)),
            reason=reason,
            retry_after=None if retry_after < 0 else retry_after,
            rows_used=int(used),
            flag=flag_text or None,
        )

    def set_flag(self, client: str, flag: str | None) -> None:
        if flag is not None and flag not in FLAGS:
            raise ValueError(f"unknown flag {flag!r}")
        try:
            if flag is None:
                self._redis.delete(self._key("flag", client))
            else:
                self._redis.set(self._key("flag", client), flag)
        except self._errors as exc:
            raise self._unavailable(exc) from None

    def get_flag(self, client: str) -> str | None:
        try:
            value = self._redis.get(self._key("flag", client))
        except self._errors as exc:
            raise self._unavailable(exc) from None
        return None if value is None else bytes(value).decode()

    def flags(self) -> dict[str, str]:
        out: dict[str, str] = {}
        prefix = self._key("flag", "")
        try:
            for key in self._redis.scan_iter(match=prefix + "*", count=500):
                value = self._redis.get(key)
                if value is not None:
                    out[bytes(key).decode()[len(prefix) :]] = bytes(value).decode()
        except self._errors as exc:
            raise self._unavailable(exc) from None
        return out

    def reset(self, client: str) -> None:
        try:
            for key in self._redis.scan_iter(match=f"{self._prefix}:*:{client}", count=500):
                if not bytes(key).decode().startswith(self._key("flag", "")):
                    self._redis.delete(key)
        except self._errors as exc:
            raise self._unavailable(exc) from None

    def close(self) -> None:
        self._redis.close()


def open_limit_store(url: str) -> LimitStore:
    """A limit store for a ``[state] url``: ``memory://`` or ``redis://`` / ``rediss://``."""
    if url.startswith("memory://"):
        return MemoryLimitStore()
    if url.startswith(("redis://", "rediss://")):
        return RedisLimitStore(url)
    scheme = url.split("://", 1)[0]
    raise ConfigError(f"state.url: unsupported scheme {scheme!r}; use memory:// or redis://")
