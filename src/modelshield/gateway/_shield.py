"""``Shield``: the gateway's defences around a predictor, in process, without HTTP."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from modelshield.config import TierConfig
from modelshield.gateway._limits import LimitStore, MemoryLimitStore
from modelshield.gateway._pipeline import Clock, Marker, Observer, Tier, admit, answer, validate
from modelshield.models import Predictor
from modelshield.models._base import FloatArray


@dataclass(frozen=True)
class ShieldAnswer:
    """A hardened answer: top-1 labels always, scores only if the tier returns them."""

    labels: list[Any]
    probabilities: FloatArray | None


class Shield:
    """Wrap ``predictor`` with the gateway's defences: limits and budget (rows), validation,
    output hardening, optional response watermark and extraction detection.

    ``predict`` raises the same errors the gateway turns into HTTP statuses:
    :class:`~modelshield.errors.InvalidInputError`, :class:`~modelshield.errors.RateLimitedError`,
    :class:`~modelshield.errors.AuthorizationError` (a blocked client).
    """

    def __init__(
        self,
        predictor: Predictor,
        *,
        tier: TierConfig | None = None,
        tier_name: str = "standard",
        limits: LimitStore | None = None,
        marker: Marker | None = None,
        observer: Observer | None = None,
        clock: Clock = time.time,
        random_state: int | None = None,
    ) -> None:
        self.predictor = predictor
        self.tier = Tier.from_config(tier_name, tier or TierConfig())
        self.limits: LimitStore = limits if limits is not None else MemoryLimitStore()
        self.marker = marker
        self.observer = observer
        self._clock = clock
        self._rng = np.random.default_rng(random_state)

    @property
    def input_spec(self) -> Any:
        return self.predictor.input_spec

    @property
    def classes(self) -> tuple[Any, ...]:
        return tuple(self.predictor.classes)

    def predict(self, inputs: npt.ArrayLike, *, client: str = "local") -> ShieldAnswer:
        """Answer one batch for ``client`` as the gateway would."""
        now = self._clock()
        batch = validate(self.predictor, inputs)
        decision = admit(self.limits, client, self.tier, batch.shape[0], now)
        result = answer(
            self.predictor,
            batch,
            self.tier,
            self._rng,
            client=client,
            degraded=decision.flag == "degrade",
            marker=self.marker,
        )
        if self.observer is not None:
            flag, _evidence = self.observer.observe(
                client, batch, result.scores, now, self.tier.name
            )
            if flag is not None and flag != decision.flag:
                self.limits.set_flag(client, flag)
        return ShieldAnswer(labels=result.labels, probabilities=result.probabilities)
