"""The gateway over real HTTP: auth, scopes, validation, limits, hardening, audit, metrics."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from modelshield import audit
from modelshield.demo import DemoData
from modelshield.stores import open_audit_store

from .conftest import LiveGateway


def predict(client: httpx.Client, rows: list[list[float]]) -> httpx.Response:
    return client.post("/v1/models/digits/predict", json={"inputs": rows})


def audit_records(live: LiveGateway) -> list[dict[str, object]]:
    store = open_audit_store(live.config.audit.url)
    try:
        return list(audit.export(store))
    finally:
        store.close()


def test_prediction_returns_labels_and_hardened_probabilities(
    live: LiveGateway, demo_data: DemoData
) -> None:
    x = demo_data.x_test[:5]
    with live.client() as c:
        r = predict(c, x.tolist())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "digits"
    assert body["labels"] == live.predictor.predict(x).tolist()
    proba = np.asarray(body["probabilities"])
    assert proba.shape == (5, 10)
    assert ((proba > 0).sum(axis=1) <= 3).all()  # top_k:3
    np.testing.assert_array_equal(proba, np.round(proba, 3))  # round:3


def test_npy_body_is_accepted(live: LiveGateway, demo_data: DemoData) -> None:
    buf = io.BytesIO()
    np.save(buf, demo_data.x_test[:3])
    with live.client() as c:
        r = c.post(
            "/v1/models/digits/predict",
            content=buf.getvalue(),
            headers={"Content-Type": "application/x-npy"},
        )
    assert r.status_code == 200, r.text
    assert len(r.json()["labels"]) == 3


def test_labels_only_tier_gets_no_scores(live: LiveGateway, demo_data: DemoData) -> None:
    with live.client("bob") as c:
        r = predict(c, demo_data.x_test[:4].tolist())
    assert r.status_code == 200
    assert "probabilities" not in r.json()
    assert r.json()["labels"] == live.predictor.predict(demo_data.x_test[:4]).tolist()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer msk_nope"},
        {"Authorization": "Bearer"},
    ],
)
def test_bad_credentials_are_401(live: LiveGateway, headers: dict[str, str]) -> None:
    r = httpx.post(
        f"{live.url}/v1/models/digits/predict", json={"inputs": [[0.0] * 64]}, headers=headers
    )
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthenticated"


def test_key_with_one_typo_is_refused(live: LiveGateway) -> None:
    key = live.keys["alice"]
    typo = key[:-8] + ("A" if key[-8] != "A" else "B") + key[-7:]
    r = httpx.post(
        f"{live.url}/v1/models/digits/predict",
        json={"inputs": [[0.0] * 64]},
        headers={"Authorization": f"Bearer {typo}"},
    )
    assert r.status_code == 401


def test_scope_is_enforced(live: LiveGateway) -> None:
    with live.client("dave") as c:
        assert predict(c, [[0.0] * 64]).status_code == 404
        assert c.get("/v1/models").json() == {"models": []}
    with live.client() as c:
        assert c.post("/v1/models/other/predict", json={"inputs": [[0.0] * 64]}).status_code == 404
        models = c.get("/v1/models").json()["models"]
    assert [m["name"] for m in models] == ["digits"]
    assert models[0]["input"]["shape"] == [64]


@pytest.mark.parametrize(
    ("content", "content_type", "status", "fragment"),
    [
        (b"{not json", "application/json", 400, "valid JSON"),
        (b'{"x": 1}', "application/json", 400, "inputs"),
        (b'{"inputs": 5}', "application/json", 422, "list of rows"),
        (b'{"inputs": [[1, 2, 3]]}', "application/json", 422, "shape"),
        (b'{"inputs": []}', "application/json", 422, "shape"),
        (b'{"inputs": [["a"]]}', "application/json", 422, "real numbers"),
        (b'{"inputs": [[NaN]]}', "application/json", 400, "valid JSON"),
        (b'{"inputs": [[1e999]]}', "application/json", 400, "valid JSON"),
        (b"not an npy", "application/x-npy", 400, "npy"),
        (b"a,b", "text/csv", 415, "application/json"),
        # booleans are no numbers, alone or among numbers (numpy would read them as 1 and 0)
        (b'{"inputs": [[' + b", ".join([b"true"] * 64) + b"]]}", "application/json", 422, "true"),
        (
            b'{"inputs": [[false, ' + b", ".join([b"0.5"] * 63) + b"]]}",
            "application/json",
            422,
            "true or false",
        ),
        # ragged rows: our words, not numpy's
        (b'{"inputs": [[0.5, 0.5], [0.5]]}', "application/json", 422, "different lengths"),
        # deep nesting with "true" somewhere in the body: the boolean check does not recurse
        (
            b'{"inputs": ' + b"[" * 1000 + b"0" + b"]" * 1000 + b', "note": "true"}',
            "application/json",
            422,
            "not a numeric array",
        ),
    ],
)
def test_bad_requests_get_a_clear_4xx(
    live: LiveGateway, content: bytes, content_type: str, status: int, fragment: str
) -> None:
    with live.client() as c:
        r = c.post(
            "/v1/models/digits/predict", content=content, headers={"Content-Type": content_type}
        )
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"]


def test_out_of_range_and_non_finite_npy_are_422(live: LiveGateway) -> None:
    for bad in (
        np.full((1, 64), 2.0),
        np.full((1, 64), np.nan),
        np.full((1, 64), -np.inf),
        np.ones((1, 64), dtype=bool),
    ):
        buf = io.BytesIO()
        np.save(buf, bad)
        with live.client() as c:
            r = c.post(
                "/v1/models/digits/predict",
                content=buf.getvalue(),
                headers={"Content-Type": "application/x-npy"},
            )
        assert r.status_code == 422, r.text


def test_huge_body_is_413(live: LiveGateway) -> None:
    with live.client() as c:
        r = c.post(
            "/v1/models/digits/predict",
            content=b"[" * (2 * 1024 * 1024),
            headers={"Content-Type": "application/json"},
        )
    assert r.status_code == 413


def test_batch_over_tier_limit_is_413(live: LiveGateway) -> None:
    with live.client() as c:
        r = predict(c, [[0.0] * 64] * 257)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "too_large"  # as for a body too large
    assert "too many rows" in r.json()["error"]["message"]


def test_budget_counts_rows_and_answers_429(live: LiveGateway) -> None:
    with live.client() as c:
        assert predict(c, [[0.0] * 64] * 250).status_code == 200
        assert predict(c, [[0.0] * 64] * 250).status_code == 200
        r = predict(c, [[0.0] * 64])
    assert r.status_code == 429
    assert r.json()["error"]["message"] == "query budget exhausted"
    assert int(r.headers["Retry-After"]) >= 1


def test_rate_limit_answers_429_with_retry_after(live: LiveGateway) -> None:
    with live.client("carol") as c:
        codes = [predict(c, [[0.0] * 64]).status_code for _ in range(4)]
        assert codes[:2] == [200, 200]
        assert 429 in codes[2:]
        r = predict(c, [[0.0] * 64])
    assert r.headers["Retry-After"] == "1"


def test_every_request_is_audited_and_the_chain_verifies(live: LiveGateway) -> None:
    with live.client() as c:
        predict(c, [[0.0] * 64])
        predict(c, [[1.0] * 63])
    httpx.post(f"{live.url}/v1/models/digits/predict", json={"inputs": []})
    records = audit_records(live)
    decisions = [
        (r["client"], r["decision"], r["status"])
        for r in records
        if r.get("kind", "event") == "event"
    ]
    assert ("alice", "allow", 200) in decisions
    assert ("alice", "refuse", 422) in decisions
    assert (None, "refuse", 401) in decisions
    store = open_audit_store(live.config.audit.url)
    try:
        key = audit.audit_key_from_config(live.config)
        assert audit.verify(store, key).ok
    finally:
        store.close()


def test_metrics_are_prometheus_text_without_client_ids(live: LiveGateway) -> None:
    with live.client() as c:
        predict(c, [[0.0] * 64])
    for i in range(5):  # unknown model names must not grow the label sets
        httpx.post(f"{live.url}/v1/models/junk{i}/predict", json={"inputs": [[0.0] * 64]})
    text = httpx.get(f"{live.url}/metrics").text
    assert "junk" not in text
    assert 'model="unknown"' in text
    assert "modelshield_requests_total" in text
    assert "modelshield_request_duration_seconds_bucket" in text
    assert "modelshield_rows_served_total" in text
    assert "alice" not in text


def test_openapi_document_is_served_to_clients_only(live: LiveGateway) -> None:
    assert httpx.get(f"{live.url}/openapi.json").status_code == 401
    assert httpx.get(f"{live.url}/healthz").json() == {"status": "ok"}
    with live.client("dave") as c:
        assert "/v1/models/digits/predict" not in c.get("/openapi.json").json()["paths"]
    with live.client() as c:
        doc = c.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert "/v1/models/digits/predict" in doc["paths"]
    assert "/v1/admin/clients" in doc["paths"]


def test_unknown_route_and_method_are_json(live: LiveGateway) -> None:
    r = httpx.get(f"{live.url}/nope")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    r = httpx.get(f"{live.url}/v1/models/digits/predict")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"
    r = httpx.post(f"{live.url}/v1/models/" + "x" * 5000 + "/../predict")
    assert r.status_code == 404
    # refusals outside the endpoints are audited too, with the method and the path (cut)
    refused = [
        (x["status"], x["reason"], x["extra"]["method"], x["extra"]["path"][:12])
        for x in audit_records(live)
        if str(x["reason"]).startswith("route:")
    ]
    assert refused[:2] == [
        (404, "route:not_found", "GET", "/nope"),
        (405, "route:method_not_allowed", "GET", "/v1/models/d"),
    ]
    assert len(refused) == 3
    assert all(len(x["extra"].get("path", "")) <= 200 for x in audit_records(live))


def test_the_openapi_document_is_audited(live: LiveGateway) -> None:
    with live.client() as c:
        assert c.get("/openapi.json").status_code == 200
    assert httpx.get(f"{live.url}/openapi.json").status_code == 401
    seen = [
        (x["status"], x["client"], x["output_summary"])
        for x in audit_records(live)
        if x["output_summary"] == "openapi" or x["status"] == 401
    ]
    assert seen == [(200, "alice", "openapi"), (401, None, "")]


def test_npy_header_that_lies_about_its_size_is_400(live: LiveGateway) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (2**40, 2)}
    )
    with live.client() as c:
        r = c.post(
            "/v1/models/digits/predict",
            content=header.getvalue() + b"\x00" * 16,
            headers={"Content-Type": "application/x-npy"},
        )
    assert r.status_code == 400
    assert "does not match" in r.json()["error"]["message"]


def test_chunked_body_is_read_whole_and_limited(live: LiveGateway) -> None:
    """Without a Content-Length the body arrives in several messages: all of them are read, and
    the size limit still holds while reading."""
    import orjson

    body = orjson.dumps({"inputs": [[0.5] * 64] * 3})

    def pieces(data: bytes, size: int) -> Iterator[bytes]:
        for start in range(0, len(data), size):
            yield data[start : start + size]

    with live.client() as c:
        r = c.post(
            "/v1/models/digits/predict",
            content=pieces(body, 100),
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["labels"]) == 3
        r = c.post(
            "/v1/models/digits/predict",
            content=pieces(b"[" * (2 * 1024 * 1024), 64 * 1024),
            headers={"Content-Type": "application/json"},
        )
    assert r.status_code == 413
    assert r.headers["connection"] == "close"  # the rest of the body is not read


def test_first_of_repeated_headers_counts(live: LiveGateway) -> None:
    body = b'{"inputs": [[' + b", ".join([b"0.5"] * 64) + b"]]}"
    good = f"Bearer {live.keys['alice']}"
    with httpx.Client(base_url=live.url, timeout=10) as c:
        url = "/v1/models/digits/predict"
        first_good = [("Authorization", good), ("Authorization", "Bearer msk_bad")]
        r = c.post(url, content=body, headers=[*first_good, ("Content-Type", "application/json")])
        assert r.status_code == 200, r.text
        first_bad = [("Authorization", "Bearer msk_bad"), ("Authorization", good)]
        r = c.post(url, content=body, headers=[*first_bad, ("Content-Type", "application/json")])
        assert r.status_code == 401
        media = [("Content-Type", "application/x-npy"), ("Content-Type", "application/json")]
        r = c.post(url, content=body, headers=[("Authorization", good), *media])
        assert r.status_code == 400  # read as .npy, which this body is not


def test_a_non_ascii_content_length_is_ignored_not_a_crash(live: LiveGateway) -> None:
    import asyncio

    from starlette.requests import Request

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    request = Request({"type": "http", "headers": []}, receive)
    # "²".isdigit() is true but int("²") raises: the size limit is still checked on the chunks
    assert asyncio.run(live.gateway.read_body(request, "\u00b2")) == b"{}"


def test_a_client_gone_before_its_body_is_audited_without_a_traceback(
    live: LiveGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that hangs up halfway through its body is no server error: one audit record
    (reason ``client_disconnect``, status 499), no 500 and no traceback in the log."""
    import socket
    import time
    from urllib.parse import urlsplit

    url = urlsplit(live.url)
    head = (
        "POST /v1/models/digits/predict HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {live.keys['alice']}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    with caplog.at_level("ERROR"), socket.create_connection((url.hostname, url.port)) as s:
        s.sendall(head.encode() + b'{"inp')
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    gone: list[dict[str, object]] = []
    while not gone and time.monotonic() < deadline:
        time.sleep(0.05)
        gone = [r for r in audit_records(live) if r["reason"] == "client_disconnect"]
    assert [(r["status"], r["client"]) for r in gone] == [(499, "alice")]
    assert not [r for r in audit_records(live) if r["status"] == 500]
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_a_refused_key_is_audited_with_its_key_id(live: LiveGateway) -> None:
    """Which revoked (or mistyped) key is being tried is in the audit record, not the answer."""
    from modelshield import access
    from modelshield.access import CLIENT_PREFIX
    from modelshield.access._keys import parse_key

    key = live.keys["carol"]
    key_id = parse_key(key, CLIENT_PREFIX).key_id
    with access.open_registry(live.config.registry.url) as registry:
        registry.revoke("carol")
    live.gateway.registry.invalidate()
    r = httpx.post(
        f"{live.url}/v1/models/digits/predict",
        json={"inputs": [[0.0] * 64]},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 401
    assert key_id not in r.text
    refused = [x for x in audit_records(live) if x["reason"] == "auth:revoked"]
    assert [(x["key_id"], x["status"]) for x in refused] == [(key_id, 401)]


def test_a_long_model_name_is_cut_in_the_answer_and_the_audit(live: LiveGateway) -> None:
    with live.client() as c:
        r = predict_to(c, "m" * 5000)
    assert r.status_code == 404
    assert len(r.text) < 300
    records = [x for x in audit_records(live) if x["reason"] == "scope"]
    assert [len(str(x["model"])) for x in records] == [200]


def predict_to(client: httpx.Client, model: str) -> httpx.Response:
    return client.post(f"/v1/models/{model}/predict", json={"inputs": [[0.0] * 64]})


def test_a_body_that_stops_arriving_gets_408_and_is_audited(live: LiveGateway) -> None:
    """A client with a key that sends its headers and part of its body, then nothing, would
    hold its connection for ever: past the body timeout it gets 408 (and an audit record)."""
    import socket
    import time
    from urllib.parse import urlsplit

    live.gateway.body_timeout = 1.0
    url = urlsplit(live.url)
    head = (
        "POST /v1/models/digits/predict HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {live.keys['alice']}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    started = time.monotonic()
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        s.sendall(head.encode() + b'{"inp')
        answer = s.recv(4096).decode()
        took = time.monotonic() - started
        # a client that goes on trickling bytes is shown the door: the connection ends
        closed = False
        for _ in range(20):
            try:
                s.sendall(b"0")
                s.settimeout(0.25)
                closed = s.recv(4096) == b""
            except TimeoutError:
                continue
            except OSError:
                closed = True
            if closed:
                break
    assert answer.startswith("HTTP/1.1 408"), answer
    assert '"code":"timeout"' in answer
    assert "connection: close" in answer.lower()
    assert 0.9 <= took < 5
    assert closed
    with live.client() as c:  # the gateway goes on serving
        assert predict(c, [[0.0] * 64]).status_code == 200
    late = [x for x in audit_records(live) if x["status"] == 408]
    assert [(x["client"], x["reason"]) for x in late] == [("alice", "timeout")]
