"""Cost per query of all detectors together, with 50,000 queries of history for one client.

Ours: :class:`modelshield.detect.DetectorSuite` with every detector (PRADA with bounded sets,
incremental statistics and BLAS batching; out-of-distribution; boundary; coverage; volume).
Peer: PRADA alone as the paper describes it (Juuti et al., EuroS&P 2019, Algorithm 1): an exact
scan of the whole growing set of the predicted class, the set's mean and standard deviation
rebuilt, and Shapiro-Wilk over all pooled distances after every query. The peer's state has the
sizes an unbounded PRADA reaches after the same 50,000 queries (the number of additions to each
class set, which our detector counts even past its bound), filled with the history's rows.

    python benchmarks/detect_bench.py [--quick]

Per-query time is the time of one ``DetectorSuite.observe`` call divided by its rows. The
headline figures ``p50_ms_64d`` / ``p50_ms_784d`` (goals 0.1 / 0.5 ms) are for requests of one
row, as a prediction API receives them and as the peer runs; ``p50_ms_*_batch`` are per row in
requests of ``--batch`` rows (default 32). Request sizes are interleaved (one batched request,
then 16 one-row requests) so that machine noise hits both alike. ``goal_met_*`` compare the
one-row medians with the goals. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from modelshield.detect import DetectorSuite  # noqa: E402


def make_data(dim: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Inputs on a 20-dimensional manifold in [0, 1]^dim, labels from a random linear model."""
    basis = rng.normal(size=(20, dim)).astype(np.float32) / np.sqrt(20)
    x = np.clip(0.5 + 0.15 * rng.normal(size=(n, 20)).astype(np.float32) @ basis, 0, 1)
    w = rng.normal(size=(dim, 10)).astype(np.float32)
    logits = (x - 0.5) @ w
    p = np.exp(logits - logits.max(1, keepdims=True))
    return x.astype(np.float32), (p / p.sum(1, keepdims=True)).astype(np.float32)


class NaivePrada:
    """Algorithm 1 of the PRADA paper, without any bound or incremental statistic."""

    def __init__(self, sets: dict[int, np.ndarray], set_d: dict[int, list[float]], d: list[float]):
        self.sets, self.set_d, self.d = sets, set_d, d
        self.thr = {
            c: max(0.0, float(np.mean(v) - np.std(v))) if v else 0.0 for c, v in set_d.items()
        }

    def observe(self, x: np.ndarray, c: int) -> float:
        from scipy.stats import shapiro

        g = self.sets[c]
        dmin = float(np.sqrt(((g - x) ** 2).sum(axis=1)).min())
        self.d.append(dmin)
        if dmin > self.thr[c]:
            self.sets[c] = np.vstack([g, x[None]])  # the set grows by one row
            self.set_d[c].append(dmin)
            v = np.asarray(self.set_d[c])
            self.thr[c] = max(self.thr[c], float(v.mean() - v.std()))
        dist = np.asarray(self.d)
        kept = dist[np.abs(dist - dist.mean()) <= 3 * dist.std()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return float(shapiro(kept).statistic)


def measure(dim: int, history: int, batch: int, reps: int, naive_reps: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    x_ref, p_ref = make_data(dim, 3000, rng)
    suite = DetectorSuite.default(random_state=seed).fit(x_ref, p_ref)
    x_hist, p_hist = make_data(dim, history, np.random.default_rng(seed + 1))
    x_hist = np.clip(x_hist + rng.normal(0, 0.01, x_hist.shape).astype(np.float32), 0, 1)
    t = 0.0
    for i in range(0, history, 100):
        suite.observe("c", x_hist[i : i + 100], p_hist[i : i + 100], t)
        t += 10.0
    singles = 16  # one-row requests per batched one: they are the headline figure
    x_new, p_new = make_data(dim, reps * (batch + singles), np.random.default_rng(seed + 2))
    batched, single = [], []
    for r in range(reps):  # interleave request sizes so that machine noise hits both alike
        xs, ps = x_new[r * batch : (r + 1) * batch], p_new[r * batch : (r + 1) * batch]
        t0 = time.perf_counter()
        suite.observe("c", xs, ps, t)
        batched.append((time.perf_counter() - t0) / batch)
        for j in range(reps * batch + r * singles, reps * batch + (r + 1) * singles):
            t0 = time.perf_counter()
            suite.observe("c", x_new[j : j + 1], p_new[j : j + 1], t)
            single.append(time.perf_counter() - t0)
            t += 0.25
    state = suite.state_dict("c")
    shared = measure_shared(suite, "c", max(reps // 4, 10))
    # the peer: sizes of an unbounded PRADA after the same history
    prada = suite.detector("prada")
    sizes = {c: g.n + 1 for c, g in prada.states_["c"].sets.items()}  # type: ignore[attr-defined]
    labels = p_hist.argmax(1)
    sets, set_d = {}, {}
    for c, n in sizes.items():
        rows = x_hist[labels == c][:n]
        sets[c] = rows
        set_d[c] = list(np.abs(rng.normal(1.0, 0.3, max(n - 1, 0))))
    pooled = list(np.abs(rng.normal(1.0, 0.3, history)))
    naive = NaivePrada(sets, set_d, pooled)
    naive_times = []
    for r in range(naive_reps):
        xq = x_new[r]
        c = int(p_new[r].argmax())
        if c not in naive.sets:
            continue
        t0 = time.perf_counter()
        naive.observe(xq, c)
        naive_times.append(time.perf_counter() - t0)
    return {
        "p50_ms_batch": 1e3 * float(np.median(batched)),
        "p50_ms": 1e3 * float(np.median(single)),
        "naive_p50_ms": 1e3 * float(np.median(naive_times)),
        "naive_set_rows": int(sum(sizes.values())),
        "bytes_per_client": suite.max_state_bytes(),
        "state_blob_bytes": len(state),
        **shared,
    }


def measure_shared(suite: DetectorSuite, client: str, reps: int) -> dict:
    """What sharing ``client``'s state through Redis adds to one observation (the gateway's
    replicas do this once per observed batch): the check that nobody else wrote it, encoding it
    and saving it with compare-and-set; and what a replica that does not hold the client pays
    to read it in. Empty when no Redis answers on 127.0.0.1:6379."""
    from modelshield.errors import ServiceUnavailableError
    from modelshield.stores import ABSENT, RedisDetectorStateStore

    store = RedisDetectorStateStore(
        "redis://127.0.0.1:6379/0", prefix=f"modelshield-bench-{os.getpid()}", timeout=1.0
    )
    key = f"bench:{client}"
    try:
        saved = store.save({key: (ABSENT, suite.state_dict(client))})
    except ServiceUnavailableError:
        store.close()
        return {}
    try:
        assert saved is not None
        version = saved[key]
        per_observation, read_in = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            current, _ = store.load(key, version)
            saved = store.save({key: (current, suite.state_dict(client))})
            per_observation.append(time.perf_counter() - t0)
            assert saved is not None
            version = saved[key]
            t0 = time.perf_counter()
            _, data = store.load(key, "?")
            assert data is not None
            suite.load_state_dict(client, data)
            read_in.append(time.perf_counter() - t0)
    finally:
        store.delete(key)
        store.close()
    return {
        "shared_ms": 1e3 * float(np.median(per_observation)),
        "shared_read_in_ms": 1e3 * float(np.median(read_in)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    history = 50_000
    reps, naive_reps = (100, 10) if args.quick else (400, 40)
    out = {}
    for dim in (64, 784):
        start = time.perf_counter()
        out[dim] = measure(dim, history, args.batch, reps, naive_reps, args.seed)
        print(f"{dim}-d: {out[dim]} ({time.perf_counter() - start:.1f}s)", file=sys.stderr)
    goals = {64: 0.1, 784: 0.5}
    print(
        f"| inputs | ours p50 ms (1 row) | goal | ours p50 ms/row ({args.batch} rows) "
        "| naive PRADA p50 ms | naive set rows | bytes per client |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for dim, r in out.items():
        print(
            f"| {dim}-d | {r['p50_ms']:.4f} | {goals[dim]} | {r['p50_ms_batch']:.4f} "
            f"| {r['naive_p50_ms']:.2f} | {r['naive_set_rows']} | {r['bytes_per_client']} |"
        )
    summary = {
        "ours_name": "DetectorSuite (all five detectors), one-row requests",
        "peer_name": "naive PRADA (exact scan, statistics rebuilt per query)",
        "batch_rows": args.batch,
        "history_queries": history,
        "p50_ms_64d": round(out[64]["p50_ms"], 4),
        "p50_ms_784d": round(out[784]["p50_ms"], 4),
        "goal_met_64d": out[64]["p50_ms"] <= goals[64],
        "goal_met_784d": out[784]["p50_ms"] <= goals[784],
        "p50_ms_64d_batch": round(out[64]["p50_ms_batch"], 4),
        "p50_ms_784d_batch": round(out[784]["p50_ms_batch"], 4),
        "naive_p50_ms_64d": round(out[64]["naive_p50_ms"], 3),
        "naive_p50_ms_784d": round(out[784]["naive_p50_ms"], 3),
        "ours": round(out[784]["p50_ms"], 4),
        "peer": round(out[784]["naive_p50_ms"], 3),
        "ratio_784d": round(out[784]["p50_ms"] / out[784]["naive_p50_ms"], 5),
        "ratio": round(out[784]["p50_ms"] / out[784]["naive_p50_ms"], 5),
        "ratio_784d_batch": round(out[784]["p50_ms_batch"] / out[784]["naive_p50_ms"], 5),
        "bytes_per_client": out[784]["bytes_per_client"],
        "bytes_per_client_64d": out[64]["bytes_per_client"],
        "state_blob_bytes_784d": out[784]["state_blob_bytes"],
        "state_blob_bytes_64d": out[64]["state_blob_bytes"],
        # sharing the state through Redis, per observed batch (absent without a Redis server)
        **{
            f"{k}_{dim}d": round(out[dim][k], 3)
            for dim in (64, 784)
            for k in ("shared_ms", "shared_read_in_ms")
            if k in out[dim]
        },
        "quick": bool(args.quick),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
