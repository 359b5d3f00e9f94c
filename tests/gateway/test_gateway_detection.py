"""Extraction detection and the response watermark inside the live gateway."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelshield import ConfigError, access, audit
from modelshield.config import load_config
from modelshield.demo import DemoData, DemoModel
from modelshield.gateway import ServerThread, build_app, open_gateway
from modelshield.models import load_model
from modelshield.stores import open_audit_store

from .conftest import write_config

OPEN_TIER = (
    "[tiers.open]\nrequests_per_second = 100000.0\nburst = 100000\nbudget_rows = 1000000\n"
    "max_batch_rows = 100\noutput = ['probabilities']\n"
)


def _npy(path: Path, rows: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, rows)
    path.write_bytes(buf.getvalue())


@pytest.fixture
def guarded(
    tmp_path: Path, demo_model: DemoModel, demo_data: DemoData
) -> tuple[str, dict[str, str], object]:
    _npy(tmp_path / "ref.npy", demo_data.x_train)
    _npy(tmp_path / "cal.npy", demo_data.x_test[:225])
    (tmp_path / "wm.key").write_text("ab" * 32)
    extra = (
        OPEN_TIER
        + "[detection]\nenabled = true\nreference = 'ref.npy'\ncalibration = 'cal.npy'\n"
        + "[watermark]\nenabled = true\nshare = 0.05\nkey = { file = 'wm.key' }\n"
    )
    config = load_config(write_config(tmp_path, extra))
    keys = {}
    with access.open_registry(config.registry.url) as registry:
        for name in ("honest", "thief"):
            keys[name] = registry.add(name, models=["digits"], tier="open")[1].reveal()
    gateway = open_gateway(
        config, models={"digits": load_model(demo_model.onnx_bytes)}, random_state=0
    )
    assert set(gateway.observers) == {"digits"}
    assert set(gateway.markers) == {"digits"}
    with ServerThread(build_app(gateway)) as server:
        yield server.url, keys, config


def _post(url: str, key: str, rows: np.ndarray) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/models/digits/predict",
        json={"inputs": rows.tolist()},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_noise_thief_is_blocked_and_honest_client_is_not(
    guarded: tuple[str, dict[str, str], object], demo_data: DemoData
) -> None:
    url, keys, config = guarded
    honest = demo_data.x_test[225:]
    for start in range(0, len(honest), 15):
        assert _post(url, keys["honest"], honest[start : start + 15]).status_code == 200
    rng = np.random.default_rng(0)
    statuses = []
    for _ in range(10):  # 20 rows of uniform noise per request, at most 200 rows
        statuses.append(_post(url, keys["thief"], rng.random((20, 64))).status_code)
        if statuses[-1] != 200:
            break
    assert statuses[-1] == 403, statuses
    blocked_after_rows = 20 * (len(statuses) - 1)
    assert blocked_after_rows <= 200
    r = _post(url, keys["thief"], honest[:1])
    assert r.status_code == 403
    assert "detector" not in r.text  # a flagged client cannot tell which detector fired
    store = open_audit_store(config.audit.url)  # type: ignore[attr-defined]
    try:
        flagged = [x for x in audit.export(store, client="thief") if x.get("extra", {}).get("flag")]
    finally:
        store.close()
    assert flagged
    assert flagged[0]["extra"]["flag"] == "block"
    assert flagged[0]["extra"]["evidence"]["evidence"]  # detector, score, threshold, queries


def test_response_watermark_marks_are_kept_per_client(
    guarded: tuple[str, dict[str, str], object], demo_data: DemoData, demo_model: DemoModel
) -> None:
    url, keys, config = guarded
    victim = load_model(demo_model.onnx_bytes)
    x = demo_data.x_test[225:]
    got = []
    for start in range(0, len(x), 15):
        got.extend(_post(url, keys["honest"], x[start : start + 15]).json()["labels"])
    changed = np.asarray(got) != victim.predict(x)
    store = open_audit_store(config.audit.url)  # type: ignore[attr-defined]
    try:
        marks = audit.marks_by_client(store)
    finally:
        store.close()
    assert changed.sum() == len(marks.get("honest", []))
    assert 0 < changed.mean() < 0.15  # share 0.05 of answers, by neighbourhood


def test_detection_without_reference_is_a_config_error(
    tmp_path: Path, demo_model: DemoModel
) -> None:
    config = load_config(write_config(tmp_path, "[detection]\nenabled = true\n"))
    with pytest.raises(ConfigError, match=r"detection\.reference"):
        open_gateway(config, models={"digits": load_model(demo_model.onnx_bytes)})


def test_watermark_rates_come_from_the_configuration(tmp_path: Path, demo_model: DemoModel) -> None:
    (tmp_path / "wm.key").write_text("cd" * 32)
    extra = (
        "[watermark]\nenabled = true\nshare = 0.002\nuncertain_share = 0.3\n"
        "uncertain_below = 0.8\nkey = { file = 'wm.key' }\n"
    )
    config = load_config(write_config(tmp_path, extra))
    gateway = open_gateway(config, models={"digits": load_model(demo_model.onnx_bytes)})
    try:
        mark = gateway.markers["digits"].watermark  # type: ignore[attr-defined]
        assert (mark.share, mark.uncertain_share, mark.uncertain_below) == (0.002, 0.3, 0.8)
    finally:
        gateway.close()


def test_a_cleared_flag_starts_the_client_afresh(
    guarded: tuple[str, dict[str, str], object],
) -> None:
    import pyotp

    url, keys, config = guarded
    rng = np.random.default_rng(1)

    def requests_until_refused() -> int:
        for n in range(1, 31):  # 10 rows of noise per request, at most 300 rows
            r = _post(url, keys["thief"], rng.random((10, 64)))
            if r.status_code != 200:
                assert r.status_code == 403
                return n
        raise AssertionError("the thief was never refused")

    first = requests_until_refused()
    assert first >= 3  # the detectors need a few requests' rows
    with access.open_admin_registry(config.registry.url) as admins:  # type: ignore[attr-defined]
        enrollment = admins.enroll("root")
    r = httpx.delete(
        f"{url}/v1/admin/flags/thief",
        headers={
            "Authorization": f"Bearer {enrollment.admin_key.reveal()}",
            "X-TOTP-Code": pyotp.TOTP(enrollment.totp_secret.reveal()).now(),
        },
        timeout=30,
    )
    assert r.status_code == 200, r.text
    # the detectors forgot the thief: it is refused again only once it has sent as many rows,
    # not on the request after the one the old state would have flagged
    assert requests_until_refused() >= 3


def test_uncertain_answers_are_kept_with_their_controls_and_traced(
    tmp_path: Path, demo_model: DemoModel, demo_data: DemoData
) -> None:
    """Uncertain answers: the marked ones answer the runner-up, the unmarked ones are stored
    unchanged as controls, and the trace finds the client whose answers a copy learned."""
    from modelshield.attacks._knockoff import shift_images
    from modelshield.evidence._trace import response_trace

    (tmp_path / "wm.key").write_text("ef" * 32)
    extra = OPEN_TIER + (
        "[watermark]\nenabled = true\nshare = 0.001\nuncertain_share = 0.3\n"
        "uncertain_below = 0.95\nkey = { file = 'wm.key' }\n"
    )
    config = load_config(write_config(tmp_path, extra))
    with access.open_registry(config.registry.url) as registry:
        keys = {n: registry.add(n, models=["digits"], tier="open")[1].reveal() for n in "ab"}
    victim = load_model(demo_model.onnx_bytes)
    pool = demo_data.x_test[:300]
    rows = np.concatenate(
        [pool, np.clip(shift_images(pool, image_shape=(8, 8), max_shift=1, random_state=0), 0, 1)]
    ).astype(np.float32)
    got: dict[str, list[object]] = {"a": [], "b": []}
    gateway = open_gateway(config, models={"digits": victim}, random_state=0)
    with ServerThread(build_app(gateway)) as server:
        for name in got:
            for start in range(0, len(rows), 50):
                r = _post(server.url, keys[name], rows[start : start + 50])
                assert r.status_code == 200, r.text
                got[name].extend(r.json()["labels"])
    proba = victim.predict_proba(rows)
    unsure = proba.max(1) < 0.95
    assert unsure.sum() > 40
    store = open_audit_store(config.audit.url)
    try:
        stored = audit.marks_by_client(store)
    finally:
        store.close()
    received = np.asarray(got["a"])
    changed = received != np.asarray(victim.predict(rows))
    kept = {np.load(io.BytesIO(m.mark.row)).astype(np.float32).tobytes(): m for m in stored["a"]}
    # every uncertain answer is stored, as it was returned (rows at the threshold to within
    # float noise of batching could fall either side)
    for i in np.flatnonzero(unsure & (np.abs(proba.max(1) - 0.95) > 1e-4)):
        mark = kept[rows[i].tobytes()]
        assert mark.mark.label == received[i]
        assert mark.mark.kind == ("runner-up@0.3" if changed[i] else "control@0.3")
        if changed[i]:
            assert received[i] == np.argsort(-proba[i], kind="stable")[1]  # the runner-up
    assert 0 < changed[unsure].mean() < 0.6
    assert len(kept) > changed.sum()  # the controls are stored too
    # a copy that reproduces what client b was answered names b, and the model itself nobody
    answered_b = {row.tobytes(): label for row, label in zip(rows, got["b"], strict=True)}

    def copy_of_b(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        own = victim.predict(x)
        return np.asarray([answered_b.get(r.tobytes(), o) for r, o in zip(x, own, strict=True)])

    run = response_trace(config, victim=victim)
    results = run(copy_of_b)
    assert results[0].client_id == "b"
    assert results[0].verified
    assert not any(r.verified for r in results[1:])
    assert not any(r.verified for r in run(victim.predict))
    # the trace reads what was decided then, not the rates configured now
    path = tmp_path / "shield.toml"
    text = path.read_text(encoding="utf-8").replace(
        "uncertain_share = 0.3", "uncertain_share = 0.1"
    )
    path.write_text(text.replace("uncertain_below = 0.95", "uncertain_below = 0.8"), "utf-8")
    assert response_trace(load_config(path), victim=victim)(copy_of_b) == results
