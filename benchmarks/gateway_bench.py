"""Throughput and latency of the guarded gateway against a bare Starlette endpoint.

Both serve the demo ONNX model with the same uvicorn worker count, driven by the same load
generator (wrk, 32 connections, 1-row JSON requests that cycle through 900 distinct held-out
digits) in the same run, alternating peer and ours to spread machine noise. The guarded
endpoint has everything on: API-key authentication, rate limit and row budget, validation,
output hardening (top_k:3, round:3) and a durable audit record per request in SQLite (group
commit). As with `modelshield serve`, Prometheus multiprocess mode (shared
metrics files, which cost a few microseconds per metric update) is on only with several workers.

    python benchmarks/gateway_bench.py [--quick]

A third server adds every extraction detector (alerting, so that no request is refused) and the
response watermark: ``ratio_with_detection``. A fourth, at one worker, is a reference point and
not a gateway: the bare endpoint plus only a durable, hash-chained audit record per request,
group-committed to SQLite with the same ``synchronous`` setting (``benchmarks/_audit_only_app.py``):
``ratio_audit_only`` is how much of the gap to the bare endpoint that one requirement explains,
and ``guarded_vs_audit_only`` what everything else the gateway does costs on top of it.

Each server is also measured with one connection, where a request does not queue behind others:
``p50_overhead_ms_1conn`` is the median cost of the guarded path (with one fsync-ed commit per
request, since group commit has nothing to group).

Both run on uvicorn's fast stack (httptools, uvloop), as the issue's reference figure for the
bare endpoint (about 8,500 req/s on a 2-core machine) was measured; ``http_stack`` in the JSON
names it. Without those two packages uvicorn falls back to h11 and asyncio's loop, which halve
the bare endpoint's throughput and so flatter every ratio.

Last line: JSON with guarded_rps, bare_rps, ratio (1 worker), ratio_2w, guarded_p50_ms,
bare_p50_ms, p50_overhead_ms, guarded_p99_ms (1 worker, 32 connections), guarded_p50_ms_1conn,
bare_p50_ms_1conn, p50_overhead_ms_1conn, ratio_with_detection, audit_only_rps,
ratio_audit_only, guarded_vs_audit_only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], headers: dict[str, str], body: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited early")
        try:
            r = httpx.post(url, content=body, headers=headers, timeout=2)
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200")


def start(kind: str, workers: int, workdir: Path, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if kind in ("bare", "audit_only"):
        env["BARE_MODEL"] = str(workdir / "digits.onnx")
        env["AUDIT_ONLY_DB"] = str(workdir / f"audit-only-{port}.db")
        target = f"benchmarks._{kind}_app:create_app"
    else:
        name = "shield.toml" if kind == "guarded" else "shield-detect.toml"
        env["MODELSHIELD_CONFIG"] = str(workdir / name)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if workers > 1:  # as `modelshield serve` does: shared metrics files only for workers
            env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(dir=workdir)
        target = "modelshield.gateway._server:create_app"
    # both servers start through the same launcher as `modelshield serve` (uvicorn, with
    # TCP_NODELAY on the listening socket when there are several workers)
    launch = (
        "from modelshield.gateway._server import run_uvicorn; "
        f"run_uvicorn({target!r}, host='127.0.0.1', port={port}, workers={workers})"
    )
    return subprocess.Popen(
        [sys.executable, "-c", launch],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir,
    )  # fmt: skip


def parse_wrk(text: str) -> tuple[float, float, float]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", text)
        assert m, text
        scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
        return float(m.group(1)) * scale

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non2xx:
        raise RuntimeError(f"wrk saw {non2xx.group(1)} error responses:\n{text}")
    return rps, pct("50"), pct("99")


def wrk_script(headers: dict[str, str], bodies: list[str]) -> str:
    """A wrk script that POSTs ``bodies`` in turn (one request each, then round again)."""
    header_lines = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
    listed = ",\n".join(json.dumps(b) for b in bodies)
    return (
        f'wrk.method = "POST"\n{header_lines}local bodies = {{\n{listed}\n}}\nlocal i = 0\n'
        "request = function()\n  i = i % #bodies + 1\n"
        "  return wrk.format(nil, nil, nil, bodies[i])\nend\n"
    )


def run_wrk(
    url: str,
    headers: dict[str, str],
    bodies: list[str],
    seconds: int,
    workdir: Path,
    connections: int = 32,
) -> tuple[float, float, float]:
    script = workdir / "post.lua"
    script.write_text(wrk_script(headers, bodies))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True, timeout=seconds + 30,
    ).stdout  # fmt: skip
    return parse_wrk(out)


def prepare(workdir: Path, synchronous: str = "FULL") -> dict[str, str]:
    import numpy as np

    from modelshield import access, audit
    from modelshield.demo import load_demo_data, train_demo_model

    data = load_demo_data()
    (workdir / "digits.onnx").write_bytes(train_demo_model(0, data).onnx_bytes)
    np.save(workdir / "reference.npy", data.x_train)
    np.save(workdir / "calibration.npy", data.x_test[:225])
    (workdir / "wm.key").write_text("5a" * 32)
    audit.write_audit_key(workdir / "audit.key", audit.generate_audit_key())
    base = (
        "[models.digits]\npath = 'digits.onnx'\nimage_shape = [8, 8]\n"
        f"[audit]\nurl = 'sqlite:///audit.db?synchronous={synchronous}'\n"
        "key = { file = 'audit.key' }\n"
        "[registry]\nurl = 'sqlite:///registry.db'\n"
        "[tiers.standard]\nrequests_per_second = 1000000.0\nburst = 1000000\n"
        "budget_rows = 1000000000\noutput = ['top_k:3', 'round:3']\n"
    )
    (workdir / "shield.toml").write_text(base, encoding="utf-8")
    # detection would block the benchmark's repeated identical row: alert only, so it keeps
    # doing all its work on every request without refusing any
    (workdir / "shield-detect.toml").write_text(
        base
        + "[detection]\nenabled = true\naction = 'alert'\nreference = 'reference.npy'\n"
        + "calibration = 'calibration.npy'\n"
        # the response watermark as `modelshield init` configures it: uncertain answers are
        # marked or kept as controls, so their rows are written with the audit records
        + "[watermark]\nenabled = true\nshare = 0.0005\nuncertain_share = 0.14\n"
        + "uncertain_below = 0.95\nkey = { file = 'wm.key' }\n",
        encoding="utf-8",
    )
    with access.open_registry(f"sqlite:///{workdir / 'registry.db'}") as registry:
        _, key = registry.add("bench", models=["digits"])
    return {"Authorization": f"Bearer {key.reveal()}", "Content-Type": "application/json"}


def request_bodies(copies: int = 2) -> list[str]:
    """One-row JSON bodies, all distinct: the held-out digits, then ``copies - 1`` copies of them
    with a little pixel noise (the traffic of an honest client). One row sent again and again
    would let the detectors' near-duplicate check skip most of their work."""
    import numpy as np

    from modelshield.demo import load_demo_data

    x = load_demo_data().x_test
    rng = np.random.default_rng(0)
    rows = [x] + [np.clip(x + rng.normal(0, 0.02, x.shape), 0, 1) for _ in range(copies - 1)]
    return [
        json.dumps({"inputs": [[round(float(v), 4) for v in row]]}) for row in np.concatenate(rows)
    ]


def measure(
    kind: str, workers: int, workdir: Path, headers: dict[str, str], bodies: list[str], seconds: int
) -> tuple[float, float, float, float]:
    """Requests per second, median and 99th percentile latency (ms) at 32 connections, and the
    median latency (ms) at one connection (no queueing: the cost of one request)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/models/digits/predict"
    proc = start(kind, workers, workdir, port)
    try:
        wait_ready(url, proc, headers, bodies[0])
        run_wrk(url, headers, bodies, 2, workdir)  # warm-up
        rps, p50, p99 = run_wrk(url, headers, bodies, seconds, workdir)
        _, p50_one, _ = run_wrk(url, headers, bodies, max(2, seconds // 2), workdir, connections=1)
        return rps, p50, p99, p50_one
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stack_name() -> str:
    """What uvicorn serves both endpoints with (``http_stack`` in the JSON)."""
    import uvicorn

    from modelshield.gateway._server import http_stack

    parser, loop = http_stack()
    return f"uvicorn {uvicorn.__version__}, {parser}, {loop}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (under a minute)")
    parser.add_argument(
        "--synchronous",
        choices=("FULL", "NORMAL"),
        default="FULL",
        help="SQLite audit durability: FULL (default, survives power loss) or NORMAL (survives "
        "a killed process; an OS crash can drop the last commits)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    seconds = 4 if args.quick else 10
    rounds = 1 if args.quick else 3
    bodies = request_bodies()
    os.environ["AUDIT_ONLY_SYNCHRONOUS"] = args.synchronous  # the servers inherit it
    results: dict[tuple[str, int], list[tuple[float, float, float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="ms-gwbench-") as tmp:
        workdir = Path(tmp)
        headers = prepare(workdir, args.synchronous)
        worker_counts = (1,) if args.quick else (1, 2)
        for _ in range(rounds):
            for workers in worker_counts:
                kinds = (
                    ("bare", "guarded", "detect", "audit_only")
                    if workers == 1
                    else ("bare", "guarded")
                )
                for kind in kinds:
                    r = measure(kind, workers, workdir, headers, bodies, seconds)
                    results.setdefault((kind, workers), []).append(r)
                    print(
                        f"{kind:10s} workers={workers} rps={r[0]:8.0f} "
                        f"p50={r[1]:.2f}ms p99={r[2]:.2f}ms p50(1 connection)={r[3]:.2f}ms"
                    )

    def med(kind: str, workers: int, i: int) -> float:
        return statistics.median(r[i] for r in results[(kind, workers)])

    figures = {
        "ours_name": "modelshield gateway (auth, limits, validation, hardening, SQLite audit)",
        "peer_name": "bare Starlette + orjson + ONNX Runtime",
        "guarded_rps": round(med("guarded", 1, 0), 1),
        "bare_rps": round(med("bare", 1, 0), 1),
        "ratio": round(med("guarded", 1, 0) / med("bare", 1, 0), 3),
        "guarded_p50_ms": round(med("guarded", 1, 1), 3),
        "bare_p50_ms": round(med("bare", 1, 1), 3),
        "p50_overhead_ms": round(med("guarded", 1, 1) - med("bare", 1, 1), 3),
        "guarded_p99_ms": round(med("guarded", 1, 2), 3),
        # one connection: what a request costs without queueing behind 31 others
        "guarded_p50_ms_1conn": round(med("guarded", 1, 3), 3),
        "bare_p50_ms_1conn": round(med("bare", 1, 3), 3),
        "p50_overhead_ms_1conn": round(med("guarded", 1, 3) - med("bare", 1, 3), 3),
    }
    figures["ratio_with_detection"] = round(med("detect", 1, 0) / med("bare", 1, 0), 3)
    figures["detect_rps"] = round(med("detect", 1, 0), 1)
    figures["audit_only_rps"] = round(med("audit_only", 1, 0), 1)
    figures["ratio_audit_only"] = round(med("audit_only", 1, 0) / med("bare", 1, 0), 3)
    figures["guarded_vs_audit_only"] = round(med("guarded", 1, 0) / med("audit_only", 1, 0), 3)
    if ("guarded", 2) in results:
        figures["ratio_2w"] = round(med("guarded", 2, 0) / med("bare", 2, 0), 3)
    figures["audit_synchronous"] = args.synchronous
    figures["http_stack"] = stack_name()
    figures["ours"] = figures["guarded_rps"]
    figures["peer"] = figures["bare_rps"]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
