"""What the dashboard shows, read from the audit log incrementally and from the gateway's metrics.

The audit log is the one source shared by every gateway replica, so the dashboard reads it rather
than this process's memory. Reading is incremental and bounded: each refresh reads only records
newer than the last one seen (less a small overlap for writers that commit late, deduplicated by
``(segment, seq)``), at most once per ``min_interval`` whatever the number of open dashboards,
and folds them into fixed time buckets that cover the last ``window`` seconds. One refresh reads
at most ``max_records`` records; a longer backlog (a dashboard opened on a busy gateway) is read
over the next refreshes.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelshield.audit import AuditRecord, AuditStore

ADMIN_PREFIX = "admin:"
_ACTION_KINDS = ("flag", "suspend", "resume", "revoke")
MAX_SCORES = 600  # detector observations kept per client and detector
MAX_ACTIONS = 200  # actions and flags kept per client


@dataclass(frozen=True)
class Score:
    """One detector's score for one client at one time, with its threshold when known."""

    time: float
    detector: str
    score: float
    threshold: float | None


@dataclass(frozen=True)
class Action:
    """A flag raised by detection or an admin action on a client."""

    time: float
    who: str
    action: str
    status: int


@dataclass
class ClientView:
    """One client's traffic in the window, its detector scores and the actions taken on it."""

    requests: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    rows: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    refused: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    last_seen: float | None = None
    scores: dict[str, deque[Score]] = field(default_factory=dict)
    actions: deque[Action] = field(default_factory=lambda: deque(maxlen=MAX_ACTIONS))

    def latest_scores(self) -> dict[str, Score]:
        return {name: obs[-1] for name, obs in self.scores.items() if obs}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def detector_scores(extra: Mapping[str, Any], when: float) -> list[Score]:
    """Detector scores found in an audit record's ``extra`` (``{"flag", "evidence"}``).

    Finds every mapping with a numeric ``score`` and a ``detector`` name (or named by its key)
    anywhere in ``evidence`` (an action with its evidence list, an observation, a list of
    them), and ``{"scores": {detector: score or {...}}}``. Group views (``subject`` starting
    with ``group:``) are named after their group.
    """
    found: list[Score] = []

    def walk(node: Any, name: str | None, depth: int) -> None:
        if depth > 5:
            return
        if isinstance(node, Mapping):
            score = _number(node.get("score"))
            label = node.get("detector", name)
            if score is not None and isinstance(label, str):
                subject = node.get("subject")
                if isinstance(subject, str) and subject.startswith("group:"):
                    label = f"{label} ({subject})"
                found.append(Score(when, label, score, _number(node.get("threshold"))))
                return
            for key, value in node.items():
                if isinstance(value, Mapping | list):
                    walk(value, key if isinstance(key, str) else None, depth + 1)
        elif isinstance(node, list):
            for item in node[:64]:
                walk(item, name, depth + 1)

    walk(extra.get("evidence"), None, 0)
    scores = extra.get("scores")
    if isinstance(scores, Mapping):
        for key, value in scores.items():
            number = _number(value)
            if number is not None and isinstance(key, str):
                found.append(Score(when, key, number, None))
            else:
                walk(value, key if isinstance(key, str) else None, 1)
    return found


def parse_action(reason: str) -> tuple[str, str] | None:
    """``(client, action)`` from an admin record's reason (``flag:NAME:FLAG``, ``suspend:NAME``)."""
    kind, _, rest = reason.partition(":")
    if kind not in _ACTION_KINDS or not rest:
        return None
    if kind == "flag":
        name, _, flag = rest.rpartition(":")
        return (name, f"flag {flag}") if name else None
    return rest, kind


#: The series of every model name that is not served (unknown paths, typing errors, probes).
NOT_SERVED = "(not served)"


class TrafficView:
    """Requests, rows, refusals, detector scores and actions in the last ``window`` seconds."""

    def __init__(
        self,
        store: AuditStore,
        *,
        window: float = 900.0,
        bucket: float = 5.0,
        lag: float = 0.5,
        min_interval: float = 5.0,
        max_records: int = 20_000,
        models: Iterable[str] | None = None,
    ) -> None:
        if bucket <= 0 or window < bucket:
            raise ValueError("need 0 < bucket <= window")
        self.store = store
        self.window = window
        self.bucket = bucket
        self.lag = lag
        self.min_interval = min_interval
        self.max_records = max_records
        self.caught_up: float | None = None  # while catching up: how far the log was read
        self.lock = threading.Lock()  # held while folding records in, and by readers
        self._since: float | None = None
        self._last_refresh = -math.inf
        self._seen: dict[tuple[str, int], float] = {}
        # the served models; any other name (a path anyone can make up) counts as one series
        self.models = None if models is None else frozenset(models)
        self.model_requests: dict[str, dict[int, int]] = {}
        self.model_rows: dict[str, dict[int, int]] = {}
        self.refusals: dict[str, dict[int, int]] = {}
        self.clients: dict[str, ClientView] = {}
        self.records_read = 0
        self.first_seen: float | None = None

    def expire(self) -> None:
        """Make the next :meth:`refresh` read the log whatever ``min_interval`` says."""
        self._last_refresh = -math.inf

    def index(self, t: float) -> int:
        return int(t // self.bucket)

    def refresh(self, now: float) -> None:
        """Fold in records committed since the last refresh (skipped if one ran lately)."""
        if not self.lock.acquire(blocking=False):
            return  # another refresh is running: its result is as fresh as ours would be
        try:
            if now - self._last_refresh < self.min_interval:
                return
            self._last_refresh = now
            since = now - self.window if self._since is None else self._since
            newest = since
            read = 0
            records = self.store.iter_records(since=since, by_time=True)
            try:
                for record in records:
                    read += 1
                    key = (record.segment, record.seq)
                    if key in self._seen:
                        continue
                    self._seen[key] = record.time
                    newest = max(newest, record.time)
                    self.records_read += 1
                    if record.kind == "event":
                        self._fold(record)
                    if read >= self.max_records:
                        break
            finally:
                close = getattr(records, "close", None)
                if close is not None:
                    close()  # ends the store's read snapshot now, not when collected
            if read >= self.max_records:
                # a busy log: carry on from here at the next refresh, so that one refresh never
                # holds a CPU for long (the charts catch up over a few refreshes)
                self.caught_up = newest
                self._since = max(since, newest)
            else:
                self.caught_up = None
                self._since = max(since, min(newest, now) - self.lag)
            self._prune(now)
        finally:
            self.lock.release()

    def _fold(self, r: AuditRecord) -> None:
        b = int(r.time // self.bucket)
        if self.first_seen is None or r.time < self.first_seen:
            self.first_seen = r.time
        client = r.client or ""
        if client.startswith(ADMIN_PREFIX):
            parsed = parse_action(r.reason)
            if parsed is not None:
                name, action = parsed
                who = client[len(ADMIN_PREFIX) :]
                self._client(name).actions.append(Action(r.time, who, action, r.status))
            return
        # on every record: look up before creating (setdefault would build a dict each time)
        ok = r.status < 400
        model = r.model
        if model is not None:
            if self.models is not None and model not in self.models:
                model = NOT_SERVED
            counts = self.model_requests.get(model)
            if counts is None:
                counts = self.model_requests[model] = defaultdict(int)
            counts[b] += 1
            if ok:
                rows = self.model_rows.get(model)
                if rows is None:
                    rows = self.model_rows[model] = defaultdict(int)
                rows[b] += r.rows
        if not ok:
            reason = r.reason.split(":", 1)[0] or "error"
            refused = self.refusals.get(reason)
            if refused is None:
                refused = self.refusals[reason] = defaultdict(int)
            refused[b] += 1
        if not client:
            return
        view = self.clients.get(client) or self._client(client)
        view.requests[b] += 1
        if ok:
            view.rows[b] += r.rows
        else:
            view.refused[b] += 1
        view.last_seen = r.time if view.last_seen is None else max(view.last_seen, r.time)
        if r.extra:
            for score in detector_scores(r.extra, r.time):
                view.scores.setdefault(score.detector, deque(maxlen=MAX_SCORES)).append(score)
            flag = r.extra.get("flag")
            if isinstance(flag, str):
                view.actions.append(Action(r.time, "detection", f"flag {flag}", r.status))

    def _client(self, name: str) -> ClientView:
        view = self.clients.get(name)
        if view is None:
            view = self.clients[name] = ClientView()
        return view

    def _prune(self, now: float) -> None:
        oldest = self.index(now - self.window)
        keep_after = (self._since or now) - self.lag
        self._seen = {k: t for k, t in self._seen.items() if t >= keep_after}
        maps: list[dict[int, int]] = [
            *self.model_requests.values(),
            *self.model_rows.values(),
            *self.refusals.values(),
        ]
        for view in self.clients.values():
            maps.extend((view.requests, view.rows, view.refused))
            for name, scores in view.scores.items():
                while scores and scores[0].time < now - self.window:
                    scores.popleft()
                view.scores[name] = scores
        for counts in maps:
            for stale in [i for i in counts if i < oldest]:
                del counts[stale]

    def start(self, now: float) -> float:
        """Where charts start: the window, cut to shortly before the first record seen (so that
        a young gateway's charts are not one spike at the right edge), at least a minute."""
        begin = now - self.window
        if self.first_seen is not None:
            begin = max(begin, self.first_seen - 4 * self.bucket)
        return min(begin, now - 60.0)

    def series(self, counts: Mapping[int, int], now: float) -> list[tuple[float, float]]:
        """``(bucket start, count)`` for every bucket of the window, zeros included."""
        first, last = self.index(self.start(now)), self.index(now)
        return [(i * self.bucket, float(counts.get(i, 0))) for i in range(first, last + 1)]

    def total(self, counts: Mapping[int, int]) -> int:
        return sum(counts.values())


def search(
    records: Iterable[AuditRecord],
    *,
    model: str | None,
    decision: str | None,
    until: float | None,
    limit: int,
) -> list[AuditRecord]:
    """The newest ``limit`` records that match, newest first (``records`` oldest first)."""
    kept: deque[AuditRecord] = deque(maxlen=limit)
    for record in records:
        if until is not None and record.time > until:
            break
        if model and record.model != model:
            continue
        if decision and record.decision != decision:
            continue
        kept.append(record)
    return list(reversed(kept))


def histogram_quantiles(
    buckets: Iterator[tuple[float, float]], quantiles: tuple[float, ...]
) -> dict[float, float | None]:
    """Quantiles from cumulative ``(upper bound, count)`` histogram buckets (linear inside a
    bucket, as Prometheus's ``histogram_quantile``); ``None`` when there is no observation."""
    pairs = sorted(buckets)
    total = pairs[-1][1] if pairs else 0.0
    out: dict[float, float | None] = {}
    for q in quantiles:
        if total <= 0:
            out[q] = None
            continue
        rank = q * total
        lower_bound, lower_count = 0.0, 0.0
        value = None
        for bound, count in pairs:
            if count >= rank:
                if math.isinf(bound):
                    value = lower_bound
                else:
                    width = count - lower_count
                    share = (rank - lower_count) / width if width > 0 else 1.0
                    value = lower_bound + (bound - lower_bound) * share
                break
            lower_bound, lower_count = bound, count
        out[q] = value
    return out
