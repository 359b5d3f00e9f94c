"""End to end in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

A red-team attack (uniform random queries, the Knockoff "random" pool) runs through the live
gateway; the real out-of-distribution detector flags the attacker; the flag appears on the open
Overview page by itself (polling); the admin blocks the attacker from the Clients page; the
attacker's next request is refused (403) and the block is in the Audit page. Wrong TOTP, an
expired session and a forged CSRF token are refused in the browser too. A screenshot of every
page goes to docs/img/dashboard-*.png (referenced from docs/dashboard.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from modelshield.attacks import Evaluation, HttpTarget, UniformNoise

from .conftest import SESSION_TTL, Deployment

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 15_000


def _in_ci() -> bool:
    return os.environ.get("CI") == "true" or os.environ.get("MODELSHIELD_REQUIRE_SERVICES") == "1"


def _chromium() -> str:
    """The Chromium binary: installed here in CI if missing (Debian package), else skip."""
    found = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if found is not None:
        return found
    if not _in_ci():
        pytest.skip("Chromium is not installed (apt-get install -y chromium); CI requires it")
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.fail("Chromium is missing and apt-get is not available to install it")
    result = subprocess.run(
        [apt, "install", "-y", "--no-install-recommends", "chromium"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    found = shutil.which("chromium")
    if found is None:
        pytest.fail(f"could not install Chromium:\n{result.stderr[-2000:]}")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if _in_ci():
            pytest.fail("the playwright package is missing: pip install -e '.[dev]'")
        pytest.skip("the playwright package is not installed: pip install -e '.[dev]'")
    executable = _chromium()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _shooter(folder: Path) -> Any:
    def shot(page: Any, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / f"dashboard-{name}.png"), full_page=True)

    return shot


def _sign_in(page: Any, dep: Deployment, code: str) -> None:
    page.goto(f"{dep.url}/dashboard/login")
    page.fill("#admin_key", dep.admin_key)
    page.fill("#totp", code)
    page.click("#login button[type=submit]")


def test_attack_flag_block_and_audit_in_chromium(
    deployment: Deployment, browser: Any, screenshot_dir: Path
) -> None:
    _shot = _shooter(screenshot_dir)
    from playwright.sync_api import expect

    dep = deployment
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    try:
        # sign-in: a wrong TOTP code is refused, the right one opens the Overview
        page.goto(f"{dep.url}/dashboard")
        expect(page).to_have_url(f"{dep.url}/dashboard/login")
        good = dep.code()
        _sign_in(page, dep, "000000" if good != "000000" else "111111")
        expect(page.locator("#login-message")).to_contain_text("Invalid admin key or TOTP code")
        _shot(page, "login")
        _sign_in(page, dep, good)
        expect(page).to_have_url(f"{dep.url}/dashboard/overview")
        cookies = context.cookies()
        assert [c["httpOnly"] for c in cookies] == [True]
        assert [c["sameSite"] for c in cookies] == ["Strict"]

        # honest traffic, then a red-team attack through the gateway while Overview is open
        with dep.client("alice") as alice:
            for i in range(0, 200, 20):
                rows = dep.data.x_test[i : i + 20].tolist()
                assert (
                    alice.post("/v1/models/digits/predict", json={"inputs": rows}).status_code
                    == 200
                )
        victim = dep.gateway.models["digits"]
        evaluation = Evaluation.from_predictor(victim, inputs=dep.data.x_test[200:400])
        target = HttpTarget(dep.url, api_key=dep.keys["mallory"], model="digits")
        try:
            first = UniformNoise(budget=400, batch_size=20, random_state=0).run(
                target, evaluation=evaluation
            )
            assert first.rows == 400
            assert dep.gateway.limits.get_flag("mallory") == "throttle"
            # the flag appears on the open page by itself (the page polls every second)
            expect(page.locator("#flags-table")).to_contain_text("mallory", timeout=TIMEOUT_MS)
            expect(page.locator("#flags-table")).to_contain_text("throttle")
            expect(page.locator("#tile-flags .value")).to_have_text("1")
            page.wait_for_timeout(1500)  # one more refresh: the charts include the attack
            _shot(page, "overview")

            page.click("header nav >> text=Clients")
            expect(page.locator("#clients-table")).to_contain_text("mallory")
            expect(page.locator("#clients-table")).to_contain_text("ood")
            for secret in dep.keys.values():
                assert secret not in page.content()
            _shot(page, "clients")

            page.click("#clients-table >> text=mallory")
            expect(page.locator("#client-charts")).to_contain_text("Detector ood")
            expect(page.locator("#client-charts .threshold")).to_have_count(2)
            _shot(page, "client")

            # block from the dashboard; the attacker's next request is refused
            page.click("#action-block")
            expect(page.locator("#done")).to_contain_text("block")
            expect(page.locator("#client-flag")).to_contain_text("block")
            with dep.client("mallory") as mallory:
                r = mallory.post("/v1/models/digits/predict", json={"inputs": [[0.5] * 64]})
                assert r.status_code == 403
            second = UniformNoise(budget=100, batch_size=20, random_state=1).run(target)
            assert second.outcome == "blocked"
            assert second.rows == 0
        finally:
            target.close()
        report = {
            "matrix": [
                {"attack": r.attack, **{k: v for k, v in r.to_dict().items() if k != "attack"}}
                for r in (first, second)
            ]
        }
        (dep.reports / "redteam-matrix.json").write_bytes(orjson.dumps(report))

        # the action is in the audit trail, and the chain verifies
        page.click("header nav >> text=Audit")
        page.select_option("select[name=decision]", "admin")
        page.click("#audit-filters button[type=submit]")
        expect(page.locator("#audit-table")).to_contain_text("flag:mallory:block")
        expect(page.locator("#audit-table")).not_to_contain_text("forbidden")  # mallory's 403s
        page.click("#verify")
        expect(page.locator("#verify-status")).to_contain_text("intact")
        _shot(page, "audit")

        page.click("header nav >> text=Models")
        expect(page.locator(".model")).to_contain_text("yes, format v")
        _shot(page, "models")

        page.click("header nav >> text=Reports")
        expect(page.locator("#matrix")).to_contain_text("UniformNoise")
        expect(page.locator("#matrix")).to_contain_text("blocked")
        _shot(page, "reports")

        # a forged CSRF token is refused: edit the hidden field in the page, then submit
        page.goto(f"{dep.url}/dashboard/clients/alice")
        page.eval_on_selector_all("input[name=csrf]", "els => els.forEach(e => e.value = 'forged')")
        page.click("#action-block")
        expect(page.locator("body")).to_contain_text("invalid or missing CSRF token")
        assert dep.gateway.limits.get_flag("alice") is None

        # an expired session is refused: the next refresh sends the browser to sign in again
        page.goto(f"{dep.url}/dashboard/overview")
        dep.clock.advance(SESSION_TTL + 1)
        expect(page).to_have_url(f"{dep.url}/dashboard/login?expired=1", timeout=TIMEOUT_MS)
        expect(page.locator("#login-message")).to_contain_text("expired")
        # no Content-Security-Policy violation and no script error on any page (the refused
        # requests above log "Failed to load resource" lines, which are expected)
        assert [p for p in problems if not p.startswith("Failed to load resource")] == []
    finally:
        context.close()
    records = dep.records()
    blocks = [x for x in records if x["reason"] == "flag:mallory:block"]
    assert len(blocks) == 1
    assert blocks[0]["client"] == "admin:root"
    assert blocks[0]["output_summary"] == "dashboard-block"
    refused = [x for x in records if x["client"] == "mallory" and x["status"] == 403]
    assert refused
    assert any(x["extra"].get("flag") == "throttle" for x in records if x["client"] == "mallory")
