"""Building extraction detection (and the response watermark) for a served model.

The detectors are fitted on honest reference inputs (``[detection] reference``, a ``.npy`` of
the rows the model was trained on) and their thresholds calibrated at start-up on simulated
honest clients drawn from held-out rows (``[detection] calibration``): some send fresh rows, some
re-send a small pool with near-duplicates (the traffic that pushes PRADA's statistic down). Each
threshold is the highest honest peak plus half its spread above the median
(:func:`~modelshield.detect.calibrate_threshold`), as in ``benchmarks/detect_eval.py``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from modelshield.config import Config
from modelshield.errors import ConfigError
from modelshield.gateway._plugins import DetectionObserver, WatermarkMarker
from modelshield.models import Predictor
from modelshield.stores import DetectorStateStore, open_detector_state_store

_log = logging.getLogger(__name__)


def load_reference(path: Path) -> npt.NDArray[np.float64]:
    """Honest reference rows from a ``.npy`` file (no pickle)."""
    try:
        data = np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"detection.reference: cannot read {path}: {exc}") from None
    if not isinstance(data, np.ndarray) or data.ndim < 2 or len(data) < 50:
        raise ConfigError(f"detection.reference: {path} must hold at least 50 rows")
    return np.asarray(data, dtype=np.float64)


def _honest_streams(
    x: npt.NDArray[np.float64], rng: np.random.Generator, n_clients: int, queries: int
) -> list[npt.NDArray[np.float64]]:
    lo, hi = float(x.min()), float(x.max())
    spread = (hi - lo) or 1.0
    streams = []
    for c in range(n_clients):
        if c % 2 == 0:  # fresh rows, each at most once while the set lasts (most coverage)
            order = np.concatenate([rng.permutation(len(x)) for _ in range(queries // len(x) + 1)])
            rows = x[order[:queries]]
        else:  # a small pool re-sent with near-duplicates
            pool = x[rng.integers(0, len(x), size=max(5, queries // 10))]
            rows = pool[rng.integers(0, len(pool), size=queries)]
            rows = np.clip(rows + rng.normal(0, 0.01 * spread, size=rows.shape), lo, hi)
        streams.append(rows)
    return streams


def fit_and_calibrate(
    predictor: Predictor,
    reference: npt.NDArray[np.float64],
    calibration: npt.NDArray[np.float64] | None = None,
    *,
    random_state: int = 0,
    n_clients: int = 16,
    queries: int = 300,
) -> Any:
    """A :class:`~modelshield.detect.DetectorSuite` fitted on ``reference`` (the training data)
    and calibrated on simulated honest clients drawn from ``calibration`` (held-out rows: a
    model is more confident on its training data than on what honest clients send). Without
    ``calibration``, a third of ``reference`` is held out for it."""
    from modelshield.detect import DetectorSuite, calibrate_threshold

    rng = np.random.default_rng(random_state)
    if calibration is None:
        order = rng.permutation(len(reference))
        cut = len(order) // 3
        fit_x, honest_x = reference[order[cut:]], reference[order[:cut]]
    else:
        fit_x, honest_x = reference, calibration
    suite = DetectorSuite.default(random_state=random_state)
    suite.fit(fit_x, predictor.predict_proba(fit_x))
    peaks: dict[str, list[float]] = {d.name: [] for d in suite.detectors}
    for i, rows in enumerate(_honest_streams(honest_x, rng, n_clients, queries)):
        client = f"calibration-{i}"
        proba = predictor.predict_proba(rows)
        peak: dict[str, float] = {}
        now = 0.0
        for start in range(0, len(rows), 8):
            result = suite.observe(client, rows[start : start + 8], proba[start : start + 8], now)
            now += 60.0  # an honest pace: a batch a minute
            for obs in result.observations:
                if obs.ready and math.isfinite(obs.score):
                    peak[obs.detector] = max(peak.get(obs.detector, -math.inf), obs.score)
        for name, value in peak.items():
            peaks[name].append(value)
        suite.forget(client)
    for detector in suite.detectors:
        if peaks[detector.name]:
            detector.threshold = calibrate_threshold(peaks[detector.name])
    _log.info(
        "detectors calibrated: %s",
        {d.name: round(float(d.threshold), 4) for d in suite.detectors},
    )
    return suite


def response_policy(config: Config) -> Any:
    """The response policy of ``[detection]``: alert at one flag, then the configured action."""
    from modelshield.detect import ResponsePolicy, Rule, TierPolicy

    tiers = {}
    for tier in set(config.tiers) | {"standard"}:
        action = config.detection.actions.get(tier, config.detection.action)
        rules = (Rule("alert"),) if action == "alert" else (Rule("alert"), Rule(action))
        tiers[tier] = TierPolicy(rules)
    return ResponsePolicy(tiers, default_tier="standard")


def _webhook(url: str | None) -> Callable[[dict[str, Any]], None] | None:
    if url is None:
        return None

    def post(evidence: dict[str, Any]) -> None:
        import httpx

        try:
            httpx.post(url, json={"event": "extraction-flag", **evidence}, timeout=5.0)
        except httpx.HTTPError as exc:
            _log.warning("detection webhook failed: %s", type(exc).__name__)

    return post


def build_observer(
    config: Config,
    predictor: Predictor,
    *,
    name: str = "",
    state: DetectorStateStore | None = None,
) -> DetectionObserver:
    """The gateway's detection for model ``name``, from ``[detection]``; ``state`` shares the
    detectors' state with other replicas (see :func:`detector_state_store`)."""
    if config.detection.reference is None:
        raise ConfigError(
            f"{config.source or 'configuration'}: detection.reference: detection needs a .npy of "
            "honest inputs to fit and calibrate on"
        )
    calibration = config.detection.calibration
    suite = fit_and_calibrate(
        predictor,
        load_reference(config.detection.reference),
        None if calibration is None else load_reference(calibration),
    )
    return DetectionObserver(
        suite,
        response_policy(config),
        group=config.detection.group,
        webhook=_webhook(config.detection.webhook),
        state=state,
        namespace=name,
    )


def detector_state_store(config: Config) -> DetectorStateStore | None:
    """Where the detectors' state is shared: ``[detection] state_url``, else ``[state] url``
    when that is Redis; ``None`` (each process its own) for ``memory://``."""
    url = config.detection.state_url or config.state.url  # [state] url: memory:// or Redis
    if url.startswith("memory://"):
        return None
    return open_detector_state_store(url)


def detection_factory(
    reference: npt.ArrayLike,
    calibration: npt.ArrayLike | None = None,
    *,
    action: Literal["alert", "throttle", "degrade", "block"] = "block",
    random_state: int = 0,
) -> Callable[[Predictor], DetectionObserver]:
    """For the red-team matrix: build calibrated detection for a victim from ``reference``."""
    from modelshield.detect import ResponsePolicy, Rule, TierPolicy

    ref = np.asarray(reference, dtype=np.float64)
    cal = None if calibration is None else np.asarray(calibration, dtype=np.float64)

    def build(predictor: Predictor) -> DetectionObserver:
        suite = fit_and_calibrate(predictor, ref, cal, random_state=random_state)
        policy = ResponsePolicy(
            {"standard": TierPolicy((Rule("alert"), Rule(action)))}, default_tier="standard"
        )
        return DetectionObserver(suite, policy, group=None)

    return build


def watermark_factory(
    *, random_state: int = 0, share: float = 0.01
) -> Callable[[Predictor], WatermarkMarker]:
    """For the red-team matrix: a response watermark with a key derived from ``random_state``."""
    from modelshield.watermark import ResponseWatermark

    key = hashlib.sha256(f"modelshield-redteam-{random_state}".encode()).digest()

    def build(predictor: Predictor) -> WatermarkMarker:
        n = predictor.input_spec.n_features
        side = round(math.sqrt(n))
        image = (side, side) if side * side == n and side >= 4 else None
        return WatermarkMarker(
            ResponseWatermark(key, classes=predictor.classes, share=share, image_shape=image)
        )

    return build
