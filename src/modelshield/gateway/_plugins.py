"""Extraction detection and the response watermark, plugged into the guarded pipeline.

:class:`DetectionObserver` feeds each answered batch to a fitted
:class:`~modelshield.detect.DetectorSuite` and turns the response policy's strongest action into a
flag in the state store (``throttle``, ``degrade`` or ``block``); the flag acts on the client's
next request on every replica. :class:`WatermarkMarker` asks a
:class:`~modelshield.watermark.ResponseWatermark` which rows of this client's batch to answer with
the client's keyed wrong label.

Detection may follow the response: the gateway hands each answered batch to
:meth:`DetectionObserver.defer` and calls :meth:`DetectionObserver.flush` for a client before
admitting that client's next request, so a flag still acts on the next request while the detectors
see the rows of several requests in one batch (their cost per row falls about tenfold). Rows that
no next request flushes are observed by the gateway's idle flush shortly after.

Shared state (several replicas): with a :class:`~modelshield.stores.DetectorStateStore`, each
observation first brings the client's (and its group's) state up to date from the store when
another replica has written it since, observes, and saves the client's state with
compare-and-set; when another replica saved in between, it starts again from the store's state.
So a client whose requests are spread over replicas is observed on all of its rows, once each.
The group's state (the view over all clients) is saved after the client's, with a
compare-and-set of its own that is not retried: under contention a replica's share of the group
view can be lost, never counted twice. After a store failure the observer leaves the store alone
for ``store_retry`` seconds (the observations run on the event loop) and goes on with the state
it holds; that state reaches the store later only if no other replica wrote the client in the
meantime, otherwise the rows of the outage stay observed (with their flags) but leave the shared
history. A client's state that the store lacks is dropped from memory last, and saved first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from modelshield.detect import DetectorError
from modelshield.errors import ServiceUnavailableError
from modelshield.models._base import FloatArray
from modelshield.stores import DetectorStateStore

_log = logging.getLogger(__name__)
#: extraction alerts (WARNING), under a stable name that operators can route to their SIEM
_alerts = logging.getLogger("modelshield.alerts")

_FLAG_OF = {"throttle": "throttle", "degrade": "degrade", "block": "block"}

#: Deferred rows per client past which the gateway observes at once instead of later.
MAX_PENDING_ROWS = 4096

#: Local version of a key whose state must be read from the shared store before use.
_STALE = "?"
#: Local version of a key first observed while the store was unreachable: its state holds this
#: replica's rows only, and goes to the store when the store turns out to have none.
_NEW = "new?"
#: Observations of one batch at most, when other replicas keep saving the same keys first.
_MAX_ATTEMPTS = 5
#: After a failure of the shared store, how long observations use only this process's state.
STORE_RETRY_SECONDS = 10.0


#: A cleared client's state in the shared store (not a deletion: a replica that still holds rows
#: of that client from before the clear, read in earlier or observed while the store was out of
#: reach, must drop them rather than write them back to an empty key).
CLEARED = b"modelshield:cleared"


def clear_shared_state(store: DetectorStateStore, key: str) -> None:
    """Set the state of ``key`` (a :func:`state_key`) to :data:`CLEARED`, by compare-and-set,
    retried when replicas keep writing it; raises :class:`ServiceUnavailableError` when the store
    cannot be reached or the key never stays still."""
    for _ in range(_MAX_ATTEMPTS):
        version, _ = store.load(key, _STALE)
        if store.save({key: (version, CLEARED)}) is not None:
            return
    raise ServiceUnavailableError("detector state kept changing on other replicas: not cleared")


def state_key(namespace: str, key: str) -> str:
    """The shared store's key for ``key`` (a client, or a suite's group key) of the model
    ``namespace``: the namespace's length comes first, so that model ``a`` with client ``b:c``
    and model ``a:b`` with client ``c`` never share a key."""
    return f"{len(namespace)}.{namespace}:{key}"


@dataclass(slots=True)
class _Deferred:
    inputs: FloatArray
    scores: FloatArray
    now: float
    tier: str


class DetectionObserver:
    """Observe batches with a detector suite; decide with a response policy (per tier).

    The flag returned is the strongest enforcing action, or ``None``. ``alert`` actions are
    logged and sent to ``webhook`` when set (off the request path), at most once per client every
    ``alert_interval`` seconds (a client that keeps tripping a detector would otherwise raise an
    alert on every request); the evidence of an alert that was raised comes back under
    ``"alert"`` so that the gateway audits it. A flagged client cannot tell from its answers
    which detector fired: the rules count flags, they do not name detectors.

    Deferred mode (see the module docstring): :meth:`defer` keeps an answered batch,
    :meth:`release` marks that its response has gone out, and :meth:`flush` observes a client's
    deferred batches together. ``flush(client, released_only=True)``, called before the client's
    next request is admitted, does nothing while none of them has been released: a request sent
    while the earlier ones were still being answered is not their "next request", and skipping it
    is what lets one observation cover many concurrent requests.

    ``state`` (optional) shares the detectors' state with other replicas under keys prefixed
    ``namespace`` (the model's name); see the module docstring. Then at most ``max_cached``
    clients' states are kept in this process (least recently observed dropped first: the store
    holds them). A state that the store has not got yet (observed during an outage) is dropped
    only after the saved ones, and is saved first when the store is back; when more than
    ``max_cached`` clients are unsaved, the oldest are dropped with a warning (memory stays
    bounded). After a store failure the store is left alone for ``store_retry`` seconds.
    """

    def __init__(
        self,
        suite: Any,
        policy: Any,
        *,
        group: str | None = "*",
        webhook: Callable[[dict[str, Any]], None] | None = None,
        alert_interval: float = 60.0,
        state: DetectorStateStore | None = None,
        namespace: str = "",
        max_cached: int = 1024,
        store_retry: float = STORE_RETRY_SECONDS,
    ) -> None:
        self.suite = suite
        self.policy = policy
        self.group = group
        self.webhook = webhook
        self.alert_interval = alert_interval
        self.state = state
        self.namespace = namespace
        self.max_cached = max_cached
        self.store_retry = store_retry
        self._versions: dict[str, str] = {}  # key -> version of the store this state matches
        self._store_down_until = 0.0  # monotonic time before which the store is not tried
        self._cached: OrderedDict[str, None] = OrderedDict()  # clients, least recent first
        self._unsaved: OrderedDict[str, None] = OrderedDict()  # ... whose rows the store lacks
        self._lock = threading.Lock()
        self._alerted: dict[str, float] = {}  # client -> time of its last alert
        self._pending: dict[str, list[_Deferred]] = {}
        self._pending_rows: dict[str, int] = {}
        self._released: dict[str, int] = {}  # client -> released batches among the pending

    def observe(
        self, client: str, inputs: FloatArray, scores: FloatArray, now: float, tier: str = ""
    ) -> tuple[str | None, dict[str, Any]]:
        with self._lock:  # detector state is per process; batches of one client stay ordered
            if self.state is None:
                result = self.suite.observe(
                    client, inputs, scores, now, group=self.group, tier=tier or None
                )
            else:
                result = self._observe_shared(self.state, client, inputs, scores, now, tier)
            observations = tuple(result.observations) + tuple(result.group_observations)
            actions = self.policy.decide(
                client=client, tier=tier or "standard", observations=observations, now=now
            )
            alert = next((a for a in actions if a.kind == "alert"), None)
            if alert is not None:
                last = self._alerted.get(client)
                if last is not None and now - last < self.alert_interval:
                    alert = None  # raised recently: the audit and the log have it already
                elif not self._claim_alert(client, now):
                    alert = None  # another replica raised it within the interval
                else:
                    self._alerted[client] = now
        latest = {
            o.detector: {"score": round(float(o.score), 6), "threshold": float(o.threshold)}
            for o in result.observations
            if o.ready and np.isfinite(o.score)
        }
        out: dict[str, Any] = {"scores": latest} if latest else {}
        if alert is not None:
            out["alert"] = alert.to_dict()
            _alerts.warning("extraction alert for client %s: %s", client, out["alert"]["evidence"])
            if self.webhook is not None:
                threading.Thread(target=self.webhook, args=(out["alert"],), daemon=True).start()
        strongest = self.policy.strongest(actions)
        flag = None if strongest is None else _FLAG_OF.get(strongest.kind)
        if flag is None or strongest is None:
            return None, out
        evidence = strongest.to_dict()
        evidence["scores"] = latest
        if alert is not None:
            evidence["alert"] = out["alert"]  # audited even when the flag does not escalate
        return flag, evidence

    def _key(self, key: str) -> str:
        return state_key(self.namespace, key)

    def _store_usable(self) -> bool:
        return time.monotonic() >= self._store_down_until

    def _store_failed(self, exc: Exception) -> None:
        # a circuit breaker: the observations run on the event loop, so an unreachable store
        # must cost one timeout per store_retry seconds, not one per observation
        self._store_down_until = time.monotonic() + self.store_retry
        _log.warning("detector state not shared for %.0f s: %s", self.store_retry, exc)

    def _observe_shared(
        self,
        store: DetectorStateStore,
        client: str,
        inputs: FloatArray,
        scores: FloatArray,
        now: float,
        tier: str,
    ) -> Any:
        """Observe with the client's state shared; the group's state is saved separately and
        only when nobody else saved it first (see the module docstring)."""
        keys = self.suite.state_keys(client, self.group)
        result = None
        unsaved = False
        for attempt in range(_MAX_ATTEMPTS):
            if attempt and not self._store_usable():
                break
            for key in keys:
                self._sync(store, key)
            result = self.suite.observe(
                client, inputs, scores, now, group=self.group, tier=tier or None
            )
            if not self._store_usable():
                unsaved = True  # goes on with this state; saved when the store is back
                break
            verdict = self._save(store, keys[0])
            unsaved = verdict is None
            for key in keys[1:] if verdict else ():  # the group, once the client is saved
                if self._save(store, key) is False:
                    # another replica saved the group first: read its state next time; this
                    # batch's share of the group view is lost (counted by the other replicas'
                    # own rows), never counted twice
                    self.suite.forget(key)
                    self._versions[key] = _STALE
            if verdict is not False:
                break
            # another replica saved this client first: observe again on its state, starting
            # from nothing here so that a failed reload cannot count the batch twice (after
            # the last attempt the state with this batch stays, to be replaced at the next read)
            for key in keys:
                if attempt < _MAX_ATTEMPTS - 1:
                    self.suite.forget(key)
                self._versions[key] = _STALE
        else:
            _log.warning(
                "detector state of client %s kept changing on other replicas: this "
                "observation is not shared",
                client,
            )
        self._cached.pop(client, None)
        self._unsaved.pop(client, None)
        (self._unsaved if unsaved else self._cached)[client] = None
        self._evict(store, client)
        return result

    def _evict(self, store: DetectorStateStore, current: str) -> None:
        """Keep at most ``max_cached`` clients here. A client whose latest rows the store lacks
        is saved before it is dropped (when the store is back, those go first: they date from
        the outage); otherwise the least recently observed go first, and only when the store
        is still down and nothing else is left does an unsaved state go, with a warning. The
        client ``current``, just observed, is not saved-and-dropped: it is the most recent."""
        saving = True  # one failed save ends the saving here (even with store_retry=0)
        while len(self._cached) + len(self._unsaved) > self.max_cached:
            older = next((c for c in self._unsaved if c != current), None)
            if older is not None and saving and self._store_usable():
                old = older
                # the store's state first: the version of a client new in the outage, or a
                # newer state (another replica's, or a clear) that replaces this replica's
                if not self._sync(store, old) and (
                    not self._store_usable() or self._save(store, old) is None
                ):
                    saving = False
                    continue
                del self._unsaved[old]
            elif self._cached:
                old, _ = self._cached.popitem(last=False)
            else:
                old, _ = self._unsaved.popitem(last=False)
                _log.warning(
                    "detector state of client %s dropped before the store had its latest "
                    "rows (store unreachable, more than %d clients unsaved)",
                    old,
                    self.max_cached,
                )
            self.suite.forget(old)
            self._versions.pop(old, None)

    def _save(self, store: DetectorStateStore, key: str) -> bool | None:
        """Save ``key``: ``True`` when saved, ``False`` when another replica saved first,
        ``None`` when the store failed (the state stays here, unsaved)."""
        try:
            saved = store.save(
                {self._key(key): (self._versions.get(key, _STALE), self.suite.state_dict(key))}
            )
        except ServiceUnavailableError as exc:
            self._store_failed(exc)
            return None
        if saved is None:
            return False
        self._versions[key] = saved[self._key(key)]
        return True

    def _claim_alert(self, client: str, now: float) -> bool:
        """Whether this replica raises ``client``'s alert: with a shared store, only the first
        replica in each ``alert_interval`` does; an unreachable store raises it here (an alert
        too many rather than none)."""
        if self.state is None or not self._store_usable():
            return True
        try:
            return self.state.claim(self._key(f"alert:{client}"), self.alert_interval, now)
        except ServiceUnavailableError as exc:
            self._store_failed(exc)
            return True

    def _sync(self, store: DetectorStateStore, key: str) -> bool:
        """Make the local state of ``key`` the store's, when the store has a newer one.

        ``True`` when the local state is now exactly the store's (read in, or dropped because the
        store has none or a cleared one): then there is nothing of this replica's to save."""
        if not self._store_usable():
            self._versions.setdefault(key, _NEW)  # observe on what this process holds
            return False
        known = self._versions.get(key, _STALE)
        try:
            version, data = store.load(self._key(key), known)
        except ServiceUnavailableError as exc:
            self._store_failed(exc)
            self._versions.setdefault(key, _NEW)
            return False
        if version == known:
            return False  # the store's, plus whatever this replica could not save yet
        if data is None and known == _NEW:  # the store has nothing: this replica's rows stand
            self._versions[key] = version
            return False
        if data is None or data == CLEARED:  # absent (new or expired) or cleared by an admin
            self.suite.forget(key)
        else:
            try:
                self.suite.load_state_dict(key, data)
            except DetectorError as exc:
                # the suite dropped the key; the next save replaces the unreadable state
                _log.error("unreadable detector state in the store for %s: %s", key, exc)
        self._versions[key] = version  # only once the local state is the store's (or empty)
        return True

    def forget(self, client: str) -> None:
        """Start ``client`` afresh (an admin cleared its flag): drop its deferred rows, its
        detector state and its alert claim in the shared store and here, and its alert time,
        so that a new attack alerts again at once. The store goes first: when it cannot be
        reached, nothing is dropped and the error is raised. The group view (``group``) keeps
        what the client contributed to it."""
        with self._lock:
            if self.state is not None:
                clear_shared_state(self.state, self._key(client))
                self.state.release(self._key(f"alert:{client}"))
            self._pending.pop(client, None)
            self._pending_rows.pop(client, None)
            self._released.pop(client, None)
            self._alerted.pop(client, None)
            self.suite.forget(client)
            self._cached.pop(client, None)
            self._unsaved.pop(client, None)
            self._versions.pop(client, None)

    def defer(
        self, client: str, inputs: FloatArray, scores: FloatArray, now: float, tier: str = ""
    ) -> bool:
        """Keep an answered batch for a later :meth:`flush`; ``True`` when ``client`` has
        :data:`MAX_PENDING_ROWS` or more rows waiting (then flush now: memory stays bounded)."""
        with self._lock:
            self._pending.setdefault(client, []).append(_Deferred(inputs, scores, now, tier))
            rows = self._pending_rows.get(client, 0) + int(inputs.shape[0])
            self._pending_rows[client] = rows
        return rows >= MAX_PENDING_ROWS

    def release(self, client: str) -> None:
        """One of ``client``'s deferred batches has been answered (its response went out)."""
        with self._lock:
            if client in self._pending:
                self._released[client] = self._released.get(client, 0) + 1

    def has_released(self, client: str) -> bool:
        """Whether one of ``client``'s deferred batches has been released (a cheap check before
        :meth:`flush` with ``released_only``)."""
        return bool(self._released.get(client))

    def pending_clients(self) -> list[str]:
        """The clients with deferred batches."""
        with self._lock:
            return list(self._pending)

    def flush(
        self, client: str, *, released_only: bool = False
    ) -> tuple[str | None, dict[str, Any]]:
        """Observe ``client``'s deferred batches as one batch, in the order they were answered.

        The rows are observed at the time of the latest of them (a volume window may see a burst
        a few milliseconds late). Returns what :meth:`observe` returns; ``(None, {})`` when
        nothing was pending, or when ``released_only`` and no pending batch was released.
        """
        with self._lock:
            if released_only and not self._released.get(client):
                return None, {}
            batches = self._pending.pop(client, None)
            self._pending_rows.pop(client, None)
            self._released.pop(client, None)
        if not batches:
            return None, {}
        last = batches[-1]
        if len(batches) == 1:
            inputs, scores = last.inputs, last.scores
        else:
            inputs = np.concatenate([b.inputs for b in batches])
            scores = np.concatenate([b.scores for b in batches])
        return self.observe(client, inputs, scores, last.now, last.tier)


class WatermarkMarker:
    """Mark a keyed share of each client's answers (DAWN-style, neighbourhood-stable)."""

    def __init__(self, watermark: Any) -> None:
        self.watermark = watermark

    def mark(
        self, client: str, inputs: FloatArray, scores: FloatArray
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], list[str]]:
        # the control rows come too, answered unchanged: the audit store keeps their inputs,
        # and every row's kind, for the selection test of a trace
        rows, labels, kinds = self.watermark.decide(client, inputs, outputs=scores)
        return rows.astype(np.intp), labels.astype(np.intp), kinds
