"""The dashboard's pure parts: SVG charts, session and CSRF tokens, reading the audit log."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import pytest

from modelshield.audit import AuditRecord
from modelshield.gateway._dashboard._data import (
    TrafficView,
    detector_scores,
    histogram_quantiles,
    parse_action,
    search,
)
from modelshield.gateway._dashboard._html import e, page
from modelshield.gateway._dashboard._session import SessionSigner, derive_session_key
from modelshield.gateway._dashboard._svg import bar_chart, line_chart, nice_max

KEY = derive_session_key(b"k" * 32)


def test_nice_max() -> None:
    assert nice_max(0) == 1.0
    assert nice_max(math.nan) == 1.0
    assert nice_max(3) == 5.0
    assert nice_max(11) == 20.0
    assert nice_max(2.5) == 2.5
    assert nice_max(0.07) == pytest.approx(0.1)


def test_line_chart_escapes_and_draws_the_threshold() -> None:
    svg = line_chart(
        [("<script>", [(0.0, 1.0), (10.0, 3.0)])], title='a "b" <c>', t0=0, t1=10, threshold=2.0
    )
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg
    assert "&lt;c&gt;" in svg
    assert svg.count('class="threshold"') == 1
    assert "style=" not in svg
    points = re.search(r'points="([^"]+)"', svg)
    assert points
    (x0, y0), (x1, y1) = (tuple(map(float, p.split(","))) for p in points.group(1).split())
    assert x0 < x1
    assert y1 < y0  # larger values are drawn higher


def test_empty_charts_say_so() -> None:
    assert "no data yet" in line_chart([], title="t", t0=0, t1=1)
    assert "no data yet" in line_chart([("a", [])], title="t", t0=0, t1=1)
    assert ">none<" in bar_chart([], title="t")
    assert "no data yet" not in line_chart([("a", [(0.5, 0.0)])], title="t", t0=0, t1=1)


def test_bar_chart_scales_bars_to_values() -> None:
    svg = bar_chart([("rate", 10.0), ("budget", 5.0)], title="t")
    widths = [float(w) for w in re.findall(r'class="bar" x="\d+" y="\d+" width="([\d.]+)"', svg)]
    assert widths[0] == pytest.approx(2 * widths[1])


def test_session_round_trip_expiry_and_sign_out() -> None:
    signer = SessionSigner(KEY, ttl=100)
    token, session = signer.issue("root", "kid", 1000.0)
    assert signer.check(token, 1050.0) == session
    assert signer.check(token, 1100.0) is None  # expired
    assert signer.check(token, 900.0) is None  # issued in the future
    signer.end(session, 1010.0)
    assert signer.check(token, 1020.0) is None


@pytest.mark.parametrize(
    "forge",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),
        lambda t: "e" + t,
        lambda t: t.replace(".", ""),
        lambda t: t + ".x",
        lambda t: "",
        lambda t: "x" * 5000,
        lambda t: "!!!.???",
    ],
)
def test_forged_session_tokens_are_refused(forge: Any) -> None:
    signer = SessionSigner(KEY, ttl=100)
    token, _ = signer.issue("root", "kid", 1000.0)
    assert signer.check(forge(token), 1001.0) is None


def test_a_token_from_another_key_is_refused() -> None:
    token, _ = SessionSigner(derive_session_key(b"x" * 32), ttl=100).issue("root", "k", 1.0)
    assert SessionSigner(KEY, ttl=100).check(token, 2.0) is None


def test_csrf_tokens_are_bound_to_the_session() -> None:
    signer = SessionSigner(KEY, ttl=100)
    _, one = signer.issue("root", "kid", 1.0)
    _, two = signer.issue("root", "kid", 1.0)
    assert signer.check_csrf(one, signer.csrf_token(one))
    assert not signer.check_csrf(one, signer.csrf_token(two))
    assert not signer.check_csrf(one, None)
    assert not signer.check_csrf(one, "")
    assert not signer.check_csrf(one, "x" * 500)


def test_signer_refuses_weak_settings() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        SessionSigner(b"short", ttl=1)
    with pytest.raises(ValueError, match="positive"):
        SessionSigner(KEY, ttl=0)


def test_detector_scores_from_an_action_record() -> None:
    extra = {
        "flag": "throttle",
        "evidence": {
            "kind": "throttle",
            "at": 5.0,
            "evidence": [
                {"detector": "ood", "subject": "m", "score": 7.5, "threshold": 5.0},
                {"detector": "coverage", "subject": "group:*", "score": 0.4, "threshold": 0.3},
            ],
            "parameters": {"throttle_factor": 0.1},
        },
    }
    found = {(s.detector, s.score, s.threshold) for s in detector_scores(extra, 9.0)}
    assert found == {("ood", 7.5, 5.0), ("coverage (group:*)", 0.4, 0.3)}


def test_detector_scores_other_shapes_and_junk() -> None:
    assert detector_scores({"scores": {"volume": 0.5}}, 1.0)[0].detector == "volume"
    nested = detector_scores({"evidence": {"prada": {"score": 0.9, "threshold": 0.95}}}, 1.0)
    assert [(s.detector, s.threshold) for s in nested] == [("prada", 0.95)]
    junk: list[dict[str, Any]] = [
        {},
        {"evidence": "x"},
        {"evidence": [1, 2]},
        {"evidence": {"score": "hi"}},
        {"evidence": {"score": math.inf, "detector": "a"}},
        {"evidence": {"score": True, "detector": "a"}},
    ]
    for extra in junk:
        assert detector_scores(extra, 1.0) == []


def test_parse_action() -> None:
    assert parse_action("flag:mallory:block") == ("mallory", "flag block")
    assert parse_action("flag:a:b:clear") == ("a:b", "flag clear")
    assert parse_action("suspend:bob") == ("bob", "suspend")
    assert parse_action("dashboard:sign-in") is None
    assert parse_action("flag:") is None
    assert parse_action("") is None


def test_histogram_quantiles() -> None:
    buckets = [(0.01, 50.0), (0.1, 100.0), (math.inf, 100.0)]
    q = histogram_quantiles(iter(buckets), (0.5, 0.75, 1.0))
    assert q[0.5] == pytest.approx(0.01)
    assert q[0.75] == pytest.approx(0.055)
    assert q[1.0] == pytest.approx(0.1)
    assert histogram_quantiles(iter([]), (0.5,)) == {0.5: None}


def _record(seq: int, t: float, **kw: Any) -> AuditRecord:
    fields: dict[str, Any] = {
        "segment": "s1", "seq": seq, "kind": "event", "time": t, "client": "alice",
        "key_id": "k", "model": "digits", "input_hmac": "0" * 64, "rows": 10,
        "output_summary": "", "decision": "allow", "reason": "", "status": 200, "extra": {},
        "marks_digest": "", "prev_hash": "", "hash": "",
    }  # fmt: skip
    fields.update(kw)
    return AuditRecord(**fields)


class ListStore:
    """Just enough of an audit store: records in a list, read by time."""

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []
        self.reads = 0

    def iter_records(
        self, *, since: float | None = None, client: str | None = None, **_: Any
    ) -> Iterator[AuditRecord]:
        self.reads += 1
        for r in sorted(self.records, key=lambda r: r.time):
            if (since is None or r.time >= since) and (client is None or r.client == client):
                yield r


def test_traffic_view_reads_incrementally_without_double_counting() -> None:
    store = ListStore()
    view = TrafficView(store, window=100, bucket=10, lag=5, min_interval=1)  # type: ignore[arg-type]
    store.records += [_record(1, 1000.0), _record(2, 1001.0, status=429, reason="rate")]
    view.refresh(1002.0)
    view.refresh(1002.5)  # too soon: not read again
    assert store.reads == 1
    # a late commit with an older time, and a new one; both counted once
    store.records += [_record(3, 1000.5), _record(4, 1010.0, client="admin:root",
                      reason="flag:alice:block", decision="admin", rows=0)]  # fmt: skip
    view.refresh(1011.0)
    view.refresh(1013.0)
    alice = view.clients["alice"]
    assert view.total(alice.requests) == 3
    assert view.total(alice.rows) == 20
    assert view.total(alice.refused) == 1
    assert view.total(view.refusals["rate"]) == 1
    assert [a.action for a in alice.actions] == ["flag block"]
    assert "admin:root" not in view.clients
    # old buckets leave the window
    view.refresh(1200.0)
    assert view.total(alice.requests) == 0


def test_traffic_view_reads_a_long_backlog_over_several_refreshes() -> None:
    store = ListStore()
    store.records += [_record(i, 1000.0 + i * 0.01) for i in range(250)]
    view = TrafficView(store, window=100, bucket=10, min_interval=0, max_records=100)  # type: ignore[arg-type]
    view.refresh(1010.0)
    assert view.caught_up is not None
    assert view.total(view.clients["alice"].requests) == 100
    view.refresh(1010.0)
    view.refresh(1010.0)
    assert view.caught_up is None
    assert view.total(view.clients["alice"].requests) == 250
    assert view.records_read == 250


def test_traffic_view_rejects_bad_windows() -> None:
    with pytest.raises(ValueError, match="bucket"):
        TrafficView(ListStore(), window=1, bucket=10)  # type: ignore[arg-type]


def test_search_keeps_the_newest_matches_newest_first() -> None:
    records = [_record(i, float(i), decision="allow" if i % 2 else "refuse") for i in range(10)]
    found = search(records, model="digits", decision="allow", until=8.0, limit=2)
    assert [r.seq for r in found] == [7, 5]
    assert search(records, model="other", decision=None, until=None, limit=5) == []


def test_page_escapes_and_has_no_inline_script() -> None:
    html = page(title="<x>", active="audit", body="", admin="r<o>ot", csrf='"c"', refresh=2,
                now=0.0)  # fmt: skip
    assert "<x>" not in html
    assert "r&lt;o&gt;ot" in html
    assert 'value="&quot;c&quot;"' in html
    assert re.findall(r"<script(?![^>]*\bsrc=)", html) == []
    assert e(None) == ""


def test_every_other_spelling_of_the_last_character_is_refused() -> None:
    """The last base64url character of a 32-byte MAC carries 2 unused bits: a decoder that
    ignores them would accept four spellings of one token."""
    signer = SessionSigner(KEY, ttl=100)
    token, session = signer.issue("root", "kid", 1000.0)
    assert signer.check(token, 1001.0) == session
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for c in alphabet:
        if c != token[-1]:
            assert signer.check(token[:-1] + c, 1001.0) is None, c
