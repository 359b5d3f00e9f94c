"""Does an open dashboard slow predictions? The gateway bench load with and without a dashboard.

The guarded gateway (everything on, SQLite audit; the dashboard's routes mounted in both runs)
serves the demo ONNX model with one uvicorn worker; wrk sends 1-row JSON predictions over 32
connections (the load of ``gateway_bench.py``). In the "open" runs a signed-in dashboard client
also loads the Overview and Clients pages every second, as an open browser tab does (the tab
polls one page; two is the heavier case), so the dashboard reads the audit log while it is
being written at full speed. Runs alternate closed and open to spread machine noise.

    python benchmarks/dashboard_bench.py [--quick]

Last line: JSON with ratio_dashboard_open (median over rounds of open rps / closed rps; goal
>= 0.95), ratio_cpu_per_request (the gateway process's CPU time per request, closed / open: less
sensitive to other load on a shared machine), rps, p50 and p99 latencies of both, and the
dashboard's own page latency.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pyotp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_bench import free_port, prepare, request_bodies, run_wrk, wait_ready

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("/dashboard/overview", "/dashboard/clients")


def create_app() -> object:
    """uvicorn factory: the gateway of ``MODELSHIELD_CONFIG`` with the dashboard mounted."""
    from modelshield import access, audit
    from modelshield.config import load_config
    from modelshield.gateway import build_app, open_gateway
    from modelshield.gateway._dashboard import dashboard_routes

    config = load_config(os.environ["MODELSHIELD_CONFIG"])
    gateway = open_gateway(config)
    registry = access.open_registry(config.registry.url)
    gateway.on_close.append(registry.close)
    gateway.admin_routes += dashboard_routes(
        gateway,
        clients=registry,
        audit_store_url=config.audit.url,
        audit_key=audit.audit_key_from_config(config),
        refresh_seconds=1.0,
    )
    return build_app(gateway)


def start(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'benchmarks'}{os.pathsep}{ROOT}")
    env["MODELSHIELD_CONFIG"] = str(workdir / "shield.toml")
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "dashboard_bench:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--log-level", "warning", "--no-access-log"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir,
    )  # fmt: skip


def enroll(workdir: Path) -> tuple[str, pyotp.TOTP]:
    from modelshield import access

    with access.open_admin_registry(f"sqlite:///{workdir / 'registry.db'}") as admins:
        enrollment = admins.enroll("bench-admin")
    return enrollment.admin_key.reveal(), pyotp.TOTP(enrollment.totp_secret.reveal())


class Viewer(threading.Thread):
    """A signed-in dashboard client loading ``PAGES`` once a second until stopped."""

    def __init__(self, base: str, cookies: httpx.Cookies) -> None:
        super().__init__(daemon=True)
        self.base, self.cookies = base, cookies
        self.stop = threading.Event()
        self.seconds: list[float] = []
        self.failures = 0

    def run(self) -> None:
        with httpx.Client(base_url=self.base, cookies=self.cookies, timeout=10) as http:
            while not self.stop.is_set():
                started = time.perf_counter()
                for path in PAGES:
                    t = time.perf_counter()
                    r = http.get(path)
                    if r.status_code != 200:
                        self.failures += 1
                    self.seconds.append(time.perf_counter() - t)
                self.stop.wait(max(0.0, 1.0 - (time.perf_counter() - started)))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    workdir: Path,
    headers: dict[str, str],
    bodies: list[str],
    seconds: int,
    cookies: httpx.Cookies | None,
) -> tuple[tuple[float, float, float], list[float], float]:
    """wrk's (rps, p50, p99), the dashboard page times, and server CPU microseconds per request."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/v1/models/digits/predict"
    proc = start(workdir, port)
    try:
        wait_ready(url, proc, headers, bodies[0])
        # an open tab: the dashboard is opened before the warm-up, so its first load (which
        # reads the last 15 minutes of the audit log once) is over when the measurement starts
        viewer = Viewer(base, cookies) if cookies is not None else None
        if viewer is not None:
            viewer.start()
            deadline = time.monotonic() + 60
            while len(viewer.seconds) < len(PAGES) and time.monotonic() < deadline:
                time.sleep(0.05)
        run_wrk(url, headers, bodies, 2, workdir)  # warm-up
        first = len(viewer.seconds) if viewer is not None else 0
        try:
            cpu_before = cpu_seconds(proc.pid)
            result = run_wrk(url, headers, bodies, seconds, workdir)
            cpu = cpu_seconds(proc.pid) - cpu_before
        finally:
            if viewer is not None:
                viewer.stop.set()
                viewer.join(timeout=15)
        if viewer is not None and (viewer.failures or not viewer.seconds):
            raise RuntimeError(f"dashboard refreshes failed: {viewer.failures}")
        pages = viewer.seconds[first:] if viewer is not None else []
        return result, pages, cpu / (result[0] * seconds) * 1e6
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def sign_in(workdir: Path, headers: dict[str, str], body: str) -> httpx.Cookies:
    """Sign in once; the session cookie stays valid across restarts (same audit key)."""
    admin_key, totp = enroll(workdir)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(workdir, port)
    try:
        wait_ready(f"{base}/v1/models/digits/predict", proc, headers, body)
        with httpx.Client(base_url=base, timeout=10) as http:
            r = http.post("/dashboard/login", data={"admin_key": admin_key, "totp": totp.now()})
            if r.status_code != 303:
                raise RuntimeError(f"dashboard sign-in failed: {r.status_code}")
            return http.cookies
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (under a minute)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    seconds = 5 if args.quick else 10
    rounds = 2 if args.quick else 4
    bodies = request_bodies()
    results: dict[str, list[tuple[float, float, float]]] = {"closed": [], "open": []}
    cpu_us: dict[str, list[float]] = {"closed": [], "open": []}
    page_seconds: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ms-dashbench-") as tmp:
        workdir = Path(tmp)
        headers = prepare(workdir)
        cookies = sign_in(workdir, headers, bodies[0])
        for _ in range(rounds):
            for kind in ("closed", "open"):
                r, pages, cpu = measure(
                    workdir, headers, bodies, seconds, cookies if kind == "open" else None
                )
                results[kind].append(r)
                cpu_us[kind].append(cpu)
                page_seconds.extend(pages)
                extra = f" pages={len(pages)}" if pages else ""
                print(
                    f"{kind:6s} rps={r[0]:8.0f} p50={r[1]:.2f}ms p99={r[2]:.2f}ms "
                    f"cpu/request={cpu:.0f}us{extra}"
                )

    def med(kind: str, i: int) -> float:
        return statistics.median(r[i] for r in results[kind])

    # each round's open run against the closed run just before it: slow drifts of the shared
    # machine's load cancel out better than in a ratio of medians
    ratio = statistics.median(
        o[0] / c[0] for o, c in zip(results["open"], results["closed"], strict=True)
    )
    cpu_ratio = statistics.median(cpu_us["closed"]) / statistics.median(cpu_us["open"])
    figures = {
        "ours_name": "guarded gateway, dashboard open (Overview + Clients every second)",
        "peer_name": "the same gateway, no dashboard open",
        "open_rps": round(med("open", 0), 1),
        "closed_rps": round(med("closed", 0), 1),
        "ratio_dashboard_open": round(ratio, 3),
        "open_p50_ms": round(med("open", 1), 3),
        "closed_p50_ms": round(med("closed", 1), 3),
        "open_p99_ms": round(med("open", 2), 3),
        "closed_p99_ms": round(med("closed", 2), 3),
        "cpu_us_per_request_open": round(statistics.median(cpu_us["open"]), 1),
        "cpu_us_per_request_closed": round(statistics.median(cpu_us["closed"]), 1),
        "ratio_cpu_per_request": round(cpu_ratio, 3),
        "dashboard_page_p50_ms": round(statistics.median(page_seconds) * 1000, 1),
        "dashboard_pages_loaded": len(page_seconds),
        "ours": round(med("open", 0), 1),
        "peer": round(med("closed", 0), 1),
        "ratio": round(ratio, 3),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
