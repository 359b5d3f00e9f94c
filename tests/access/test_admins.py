"""Two-factor admins on every backend: admin key and TOTP code (RFC 6238), one step of
tolerance, each code once (also under concurrency), lockout after 5 failures shared by replicas."""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable

import pyotp
import pytest

from modelshield.access import (
    ADMIN_PREFIX,
    AdminRegistry,
    CredentialsRejected,
    DuplicateNameError,
    Enrollment,
    RegistryStore,
    RejectReason,
    Status,
    UnknownNameError,
    generate_key,
)
from modelshield.access._keys import format_key, parse_key
from modelshield.config import Secret

StoreFactory = Callable[[], RegistryStore]

T0 = 1_800_000_010.0  # 10 s into a 30 s time step: T0 - 30 and T0 + 30 are the neighbours


@pytest.fixture
def admins(store_factory: StoreFactory) -> AdminRegistry:
    return AdminRegistry(store_factory())


@pytest.fixture
def enrolled(admins: AdminRegistry) -> Enrollment:
    return admins.enroll("root", now=T0 - 3600)


def code_at(enrollment: Enrollment, when: float) -> str:
    return pyotp.TOTP(enrollment.totp_secret.reveal()).at(when)


def refused(admins: AdminRegistry, key: str | Secret, code: str, now: float) -> RejectReason:
    with pytest.raises(CredentialsRejected) as info:
        admins.verify(key, code, now)
    assert str(info.value) == "authentication failed"
    return info.value.reason


def test_enroll_hands_out_secrets(admins: AdminRegistry, enrolled: Enrollment) -> None:
    admin, admin_key, totp_secret, uri = enrolled  # a tuple, as documented
    for secret in (admin_key, totp_secret, uri):
        assert isinstance(secret, Secret)
        assert repr(secret) == "Secret('**********')"
    assert secret.reveal() not in repr(enrolled)
    assert parse_key(admin_key.reveal(), ADMIN_PREFIX).key_id == admin.key_id
    otp = pyotp.parse_uri(uri.reveal())
    assert isinstance(otp, pyotp.TOTP)
    assert otp.secret == totp_secret.reveal()
    assert uri.reveal().startswith("otpauth://totp/modelshield:root?")
    assert len(totp_secret.reveal()) == 32  # 160 bits
    assert admins.list() == [admin]
    with pytest.raises(DuplicateNameError):
        admins.enroll("root")


def test_current_code_is_accepted_once(admins: AdminRegistry, enrolled: Enrollment) -> None:
    code = code_at(enrolled, T0)
    assert admins.verify(enrolled.admin_key, code, T0) == enrolled.admin
    assert refused(admins, enrolled.admin_key, code, T0) is RejectReason.TOTP_REUSED
    assert refused(admins, enrolled.admin_key, code, T0 + 5) is RejectReason.TOTP_REUSED
    # the next step's code is fresh
    assert admins.verify(enrolled.admin_key, code_at(enrolled, T0 + 30), T0 + 30)


def test_one_step_of_tolerance(admins: AdminRegistry, enrolled: Enrollment) -> None:
    key = enrolled.admin_key
    assert refused(admins, key, code_at(enrolled, T0 - 60), T0) is RejectReason.BAD_TOTP
    assert refused(admins, key, code_at(enrolled, T0 + 60), T0) is RejectReason.BAD_TOTP
    assert admins.verify(key, code_at(enrolled, T0 - 30), T0)  # previous step
    assert admins.verify(key, code_at(enrolled, T0 + 30), T0)  # next step
    # after the next step was used, the current one (older) is refused
    assert refused(admins, key, code_at(enrolled, T0), T0) is RejectReason.TOTP_REUSED


@pytest.mark.parametrize(
    "code", ["", "12345", "1234567", "abcdef", " 123456", "\uff11\uff12\uff13\uff14\uff15\uff16"]
)
def test_malformed_codes(admins: AdminRegistry, enrolled: Enrollment, code: str) -> None:
    assert refused(admins, enrolled.admin_key, code, T0) is RejectReason.BAD_TOTP


def test_wrong_keys(admins: AdminRegistry, enrolled: Enrollment) -> None:
    code = code_at(enrolled, T0)
    assert refused(admins, "", code, T0) is RejectReason.MALFORMED
    assert refused(admins, generate_key("msk")[1], code, T0) is RejectReason.WRONG_PREFIX
    assert refused(admins, generate_key(ADMIN_PREFIX)[1], code, T0) is RejectReason.UNKNOWN_KEY
    forged = format_key(ADMIN_PREFIX, enrolled.admin.key_id, secrets.token_bytes(32))
    assert refused(admins, forged, code, T0) is RejectReason.WRONG_SECRET
    assert admins.verify(enrolled.admin_key, code, T0)  # the real pair still works


def test_lockout_after_five_failures(admins: AdminRegistry, enrolled: Enrollment) -> None:
    key, good = enrolled.admin_key, code_at(enrolled, T0)
    for i in range(5):
        assert refused(admins, key, "000000" if good != "000000" else "111111", T0 + i) is (
            RejectReason.BAD_TOTP
        )
    assert refused(admins, key, good, T0 + 5) is RejectReason.LOCKED_OUT
    assert refused(admins, key, good, T0 + 4 + 899) is RejectReason.LOCKED_OUT
    later = T0 + 4 + 900
    assert admins.verify(key, code_at(enrolled, later), later)  # 15 minutes later


def test_forged_secrets_cannot_lock_an_admin_out(
    admins: AdminRegistry, enrolled: Enrollment
) -> None:
    # key ids are public: if wrong secrets counted, anyone could keep an admin locked out
    forged = format_key(ADMIN_PREFIX, enrolled.admin.key_id, secrets.token_bytes(32))
    for _ in range(20):
        assert refused(admins, forged, code_at(enrolled, T0), T0) is RejectReason.WRONG_SECRET
    assert admins.verify(enrolled.admin_key, code_at(enrolled, T0), T0)


def test_success_resets_the_failure_count(admins: AdminRegistry, enrolled: Enrollment) -> None:
    key = enrolled.admin_key
    for _ in range(4):
        refused(admins, key, "bad", T0)
    assert admins.verify(key, code_at(enrolled, T0), T0)
    for _ in range(4):
        refused(admins, key, "bad", T0 + 30)
    assert admins.verify(key, code_at(enrolled, T0 + 30), T0 + 30)


def test_lockout_is_shared_by_replicas(store_factory: StoreFactory) -> None:
    one = AdminRegistry(store_factory())
    two = AdminRegistry(store_factory())
    enrolled = one.enroll("root", now=T0)
    for _ in range(3):
        refused(one, enrolled.admin_key, "bad", T0)
    for _ in range(2):
        refused(two, enrolled.admin_key, "bad", T0)
    good = code_at(enrolled, T0)
    assert refused(one, enrolled.admin_key, good, T0 + 1) is RejectReason.LOCKED_OUT
    assert refused(two, enrolled.admin_key, good, T0 + 1) is RejectReason.LOCKED_OUT


def test_a_code_used_on_one_replica_is_refused_on_the_other(store_factory: StoreFactory) -> None:
    one = AdminRegistry(store_factory())
    two = AdminRegistry(store_factory())
    enrolled = one.enroll("root", now=T0)
    code = code_at(enrolled, T0)
    assert one.verify(enrolled.admin_key, code, T0)
    assert refused(two, enrolled.admin_key, code, T0) is RejectReason.TOTP_REUSED


def test_concurrent_double_use_accepts_exactly_once(store_factory: StoreFactory) -> None:
    enrolled = AdminRegistry(store_factory()).enroll("root", now=T0)
    for round_ in range(5):
        now = T0 + 30 * round_
        code = code_at(enrolled, now)
        replicas = [AdminRegistry(store_factory()) for _ in range(4)]
        barrier = threading.Barrier(len(replicas))
        results: list[str] = []

        def attempt(
            admins: AdminRegistry,
            barrier: threading.Barrier,
            results: list[str],
            now: float = now,
            code: str = code,
        ) -> None:
            barrier.wait()
            try:
                admins.verify(enrolled.admin_key, code, now)
                results.append("ok")
            except CredentialsRejected as exc:
                results.append(exc.reason.value)

        threads = [threading.Thread(target=attempt, args=(r, barrier, results)) for r in replicas]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(results) == ["ok"] + ["totp_reused"] * 3, results


def test_revoked_admin_is_refused(admins: AdminRegistry, enrolled: Enrollment) -> None:
    assert admins.revoke("root").status is Status.REVOKED
    assert refused(admins, enrolled.admin_key, code_at(enrolled, T0), T0) is RejectReason.REVOKED
    with pytest.raises(UnknownNameError):
        admins.revoke("nobody")
    admins.enroll("root", now=T0)  # the name may be enrolled again


def test_secrets_never_in_logs(admins: AdminRegistry, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="modelshield")
    enrolled = admins.enroll("root", now=T0)
    code = code_at(enrolled, T0)
    admins.verify(enrolled.admin_key, code, T0)
    refused(admins, enrolled.admin_key, code, T0)
    refused(admins, enrolled.admin_key.reveal() + "x", code, T0)
    assert "totp_reused" in caplog.text
    for secret in (enrolled.admin_key, enrolled.totp_secret, enrolled.otpauth_uri):
        assert secret.reveal() not in caplog.text
    assert parse_key(enrolled.admin_key.reveal(), ADMIN_PREFIX).secret not in caplog.text
    stored = admins.store.get_admin(enrolled.admin.key_id)
    assert stored is not None
    assert enrolled.totp_secret.reveal() not in repr(stored)


def test_is_active_follows_lockout_and_revocation(
    admins: AdminRegistry, enrolled: Enrollment
) -> None:
    """What a dashboard session asks on every request: active, not while locked out, never
    again once revoked, and never for an unknown key id."""
    key_id = parse_key(enrolled.admin_key.reveal(), ADMIN_PREFIX).key_id
    assert admins.is_active(key_id, T0)
    good = code_at(enrolled, T0)
    for i in range(5):
        refused(admins, enrolled.admin_key, "000000" if good != "000000" else "111111", T0 + i)
    assert not admins.is_active(key_id, T0 + 5)
    assert admins.is_active(key_id, T0 + 4 + 900)  # the lockout has ended
    admins.revoke("root")
    assert not admins.is_active(key_id, T0 + 4 + 900)
    assert not admins.is_active("AAAAAAAAAAAA", T0)
