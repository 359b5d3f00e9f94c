"""A live gateway with the dashboard on a loopback port, a movable clock, and a real detector."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyotp
import pytest

from modelshield import access, audit, vault
from modelshield.config import Config, load_config
from modelshield.demo import DemoData, DemoModel
from modelshield.detect import Action, Evidence, OutOfDistributionDetector
from modelshield.gateway import ServerThread, build_app, open_gateway
from modelshield.gateway._app import Gateway
from modelshield.gateway._dashboard import dashboard_routes
from modelshield.models import load_model
from modelshield.stores import open_audit_store

SESSION_TTL = 600.0


class MovableClock:
    """Wall-clock time plus an offset the test moves (TOTP steps, session expiry)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class OutOfDistributionObserver:
    """The real out-of-distribution detector behind the gateway's Observer seam.

    Like the gateway's detection plug-in, it answers a flagged client with ``throttle`` and the
    evidence of a :class:`~modelshield.detect.Action` (detector, score, threshold).
    """

    def __init__(self, detector: OutOfDistributionDetector) -> None:
        self.detector = detector

    def observe(
        self, client: str, inputs: Any, scores: Any, now: float, tier: str = ""
    ) -> tuple[str | None, dict[str, Any]]:
        o = self.detector.observe(client, inputs, scores, now)
        if not o.flagged:
            return None, {}
        action = Action(
            kind="throttle",
            client=client,
            tier=tier or "standard",
            at=now,
            evidence=(Evidence(o.detector, client, o.score, o.threshold, o.queries_seen),),
            parameters=(("throttle_factor", 0.1),),
        )
        return "throttle", action.to_dict()


@dataclass
class Deployment:
    url: str
    config: Config
    gateway: Gateway
    clock: MovableClock
    keys: dict[str, str]
    admin_key: str
    totp: pyotp.TOTP
    reports: Path
    data: DemoData
    sessions: list[httpx.Client] = field(default_factory=list)

    def client(self, name: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.keys[name]}"}, timeout=10
        )

    def browser_session(self) -> httpx.Client:
        """A cookie-keeping HTTP client, closed when the test ends."""
        session = httpx.Client(base_url=self.url, timeout=10)
        self.sessions.append(session)
        return session

    def code(self) -> str:
        """A TOTP code no sign-in used yet: each code is accepted once, so move a step on."""
        self.clock.advance(31)
        return str(self.totp.at(self.clock()))

    def records(self) -> list[dict[str, Any]]:
        store = open_audit_store(self.config.audit.url)
        try:
            return list(audit.export(store))
        finally:
            store.close()


def write_config(directory: Path) -> Path:
    audit.write_audit_key(directory / "keys" / "audit.key", audit.generate_audit_key())
    path = directory / "shield.toml"
    path.write_text(
        "[models.digits]\npath = 'models/digits.sealed'\n"
        "[audit]\nurl = 'sqlite:///state/audit.db'\nkey = { file = 'keys/audit.key' }\n"
        "[registry]\nurl = 'sqlite:///state/registry.db'\n"
        "[tiers.standard]\nrequests_per_second = 1000.0\nburst = 1000\nbudget_rows = 5000\n"
        "output = ['top_k:3', 'round:3']\n",
        encoding="utf-8",
    )
    (directory / "state").mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def fitted_ood(demo_data: DemoData) -> OutOfDistributionDetector:
    return OutOfDistributionDetector(random_state=0).fit(demo_data.x_train)


@pytest.fixture
def deployment(
    tmp_path: Path,
    demo_model: DemoModel,
    demo_data: DemoData,
    fitted_ood: OutOfDistributionDetector,
) -> Iterator[Deployment]:
    config = load_config(write_config(tmp_path))
    (tmp_path / "models").mkdir()
    sealed = tmp_path / "models" / "digits.sealed"
    vault.seal_bytes(
        demo_model.onnx_bytes,
        sealed,
        vault.generate_identity().recipient,
        vault.generate_signing_key(),
    )
    reports = tmp_path / "reports"
    reports.mkdir()
    keys: dict[str, str] = {}
    with access.open_registry(config.registry.url) as registry:
        for name in ("alice", "mallory"):
            _, key = registry.add(name, models=["digits"], tier="standard")
            keys[name] = key.reveal()
    with access.open_admin_registry(config.registry.url) as admins:
        enrollment = admins.enroll("root")
    clock = MovableClock()
    gateway = open_gateway(
        config,
        models={"digits": load_model(demo_model.onnx_bytes)},
        clock=clock,
        random_state=0,
        observers={"digits": OutOfDistributionObserver(copy.deepcopy(fitted_ood))},
    )
    registry = access.open_registry(config.registry.url)
    gateway.on_close.append(registry.close)
    gateway.admin_routes += dashboard_routes(
        gateway,
        clients=registry,
        audit_store_url=config.audit.url,
        audit_key=audit.audit_key_from_config(config),
        reports_dir=reports,
        model_paths={"digits": sealed},
        secure_cookies=False,
        session_ttl=SESSION_TTL,
        refresh_seconds=1.0,
        window_seconds=300.0,
        bucket_seconds=2.0,
    )
    with ServerThread(build_app(gateway)) as server:
        dep = Deployment(
            url=server.url,
            config=config,
            gateway=gateway,
            clock=clock,
            keys=keys,
            admin_key=enrollment.admin_key.reveal(),
            totp=pyotp.TOTP(enrollment.totp_secret.reveal()),
            reports=reports,
            data=demo_data,
        )
        try:
            yield dep
        finally:
            for session in dep.sessions:
                session.close()


def uniform_queries(n_batches: int, rows: int, seed: int = 1) -> Iterator[list[list[float]]]:
    """The attacker's queries: uniform random points of the input space (Knockoff's random pool)."""
    rng = np.random.default_rng(seed)
    for _ in range(n_batches):
        yield rng.uniform(0.0, 1.0, size=(rows, 64)).round(4).tolist()
