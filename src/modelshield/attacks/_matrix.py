"""The attack x defence matrix: every attack against every defence setting at several budgets.

Defences are the gateway's own, run in process through :class:`~modelshield.gateway.Shield` (or
through HTTP by the benchmark): output hardening, a per-client row budget, extraction detection
with its response, and the response watermark. Each setting also gets its **benign cost**: what
an honest client loses (accuracy, and agreement of its top-1 labels with the undefended model).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from modelshield.attacks._knockoff import shift_images
from modelshield.attacks._registry import make_attack
from modelshield.attacks._result import Evaluation
from modelshield.attacks._target import Answer, FloatArray
from modelshield.config import TierConfig
from modelshield.errors import InvalidInputError, ShieldError
from modelshield.models import InputSpec, Label, Predictor

ShieldFactory = Callable[[Predictor], Any]


@dataclass(frozen=True)
class Defence:
    """A named defence setting: how to wrap the victim in a ``Shield``."""

    name: str
    description: str
    build: ShieldFactory


class ShieldTarget:
    """An attack target over an in-process ``Shield``: the attacker is one client of it."""

    def __init__(self, shield: Any, *, client: str = "attacker") -> None:
        self.shield = shield
        self.client = client
        self._classes = tuple(shield.classes)
        self._index = {label: i for i, label in enumerate(self._classes)}

    @property
    def input_spec(self) -> InputSpec:
        spec: InputSpec = self.shield.input_spec
        return spec

    @property
    def classes(self) -> tuple[Label, ...]:
        return self._classes

    def query(self, inputs: FloatArray) -> Answer:
        answer = self.shield.predict(inputs, client=self.client)
        probs = None if answer.probabilities is None else np.asarray(answer.probabilities)
        return Answer(labels=np.asarray(answer.labels), probabilities=probs)


def _shield(tier: TierConfig, **extra: Any) -> ShieldFactory:
    def build(predictor: Predictor) -> Any:
        from modelshield.gateway import Shield

        return Shield(predictor, tier=tier, random_state=0, **extra)

    return build


_OPEN = {"requests_per_second": 1e9, "burst": 10**9, "budget_rows": 10**9, "max_batch_rows": 10**5}


def standard_defences(
    *,
    budget_rows: int = 1000,
    detection: Callable[[Predictor], Any] | None = None,
    watermark: Callable[[Predictor], Any] | None = None,
) -> list[Defence]:
    """The settings of the matrix. ``detection`` and ``watermark`` build the gateway's observer
    and marker for a victim (left out when not given)."""
    out = [
        Defence("none", "full probabilities, no limit", _shield(TierConfig(**_OPEN))),
        Defence(
            "rounding", "scores rounded to 2 decimals",
            _shield(TierConfig(**_OPEN, output=("round:2",))),
        ),
        Defence("top1", "only the top score", _shield(TierConfig(**_OPEN, output=("top_k:1",)))),
        Defence("labels", "labels only", _shield(TierConfig(**_OPEN, output=("labels",)))),
        Defence(
            "reverse_sigmoid", "Lee et al. deceptive perturbation (beta 1, gamma 0.2)",
            _shield(TierConfig(**_OPEN, output=("reverse_sigmoid:1:0.2",))),
        ),
        Defence(
            "noise", "argmax-preserving Gaussian noise (0.1)",
            _shield(TierConfig(**_OPEN, output=("noise:0.1",))),
        ),
        Defence(
            "budget", f"{budget_rows} rows per client",
            _shield(TierConfig(**{**_OPEN, "budget_rows": budget_rows})),
        ),
    ]  # fmt: skip
    if detection is not None:

        def build_detect(predictor: Predictor) -> Any:
            return _shield(TierConfig(**_OPEN), observer=detection(predictor))(predictor)

        out.append(Defence("detection", "extraction detection, block on flag", build_detect))
    if watermark is not None:

        def build_mark(predictor: Predictor) -> Any:
            return _shield(TierConfig(**_OPEN), marker=watermark(predictor))(predictor)

        out.append(Defence("watermark", "per-client response watermark", build_mark))
    return out


def moved_pool(
    inputs: npt.ArrayLike, *, image_shape: tuple[int, int] | None, random_state: int = 0
) -> FloatArray:
    """Natural data moved to a related but different distribution: shifted by a pixel, rescaled
    in intensity and noisy (the pool a Knockoff thief would gather from similar public data)."""
    rng = np.random.default_rng(random_state)
    x = np.asarray(inputs, dtype=np.float64)
    if image_shape is not None:
        x = shift_images(x, image_shape=image_shape, max_shift=1, random_state=random_state)
    x = x * rng.uniform(0.7, 1.0, size=(len(x), 1)) + rng.normal(0, 0.08, size=x.shape)
    lo, hi = float(np.min(inputs)), float(np.max(inputs))
    return np.clip(x, lo, hi)


@dataclass(frozen=True)
class MatrixRun:
    """One cell of the matrix."""

    attack: str
    defence: str
    budget: int
    fidelity: float | None
    accuracy: float | None
    queries: int
    rows: int
    outcome: str
    detected_at: int | None
    seconds: float


@dataclass(frozen=True)
class BenignCost:
    """What an honest client keeps under one defence setting."""

    defence: str
    accuracy: float
    top1_kept: float


@dataclass
class MatrixResult:
    runs: list[MatrixRun] = field(default_factory=list)
    benign: list[BenignCost] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": [r.__dict__ for r in self.runs],
            "benign": [b.__dict__ for b in self.benign],
        }


def benign_cost(
    defence: Defence, victim: Predictor, inputs: FloatArray, labels: npt.NDArray[Any]
) -> BenignCost:
    """Send ``inputs`` as an honest client (in batches of 50) and compare with the victim."""
    shield = defence.build(victim)
    answered: list[Any] = []
    for start in range(0, len(inputs), 50):
        try:
            answered.extend(shield.predict(inputs[start : start + 50], client="honest").labels)
        except ShieldError:  # an honest client refused (limited or blocked) keeps nothing more
            break
    n = len(answered)
    got = np.asarray(answered, dtype=object)
    truth = victim.predict(inputs)
    return BenignCost(
        defence=defence.name,
        accuracy=float(np.sum(got == np.asarray(labels[:n], dtype=object)) / len(inputs)),
        top1_kept=float(np.sum(got == np.asarray(truth[:n], dtype=object)) / len(inputs)),
    )


def run_matrix(
    victim: Predictor,
    *,
    attacks: Sequence[str],
    defences: Sequence[Defence],
    budgets: Sequence[int],
    pool: FloatArray | None,
    evaluation: Evaluation,
    honest_inputs: FloatArray,
    honest_labels: npt.NDArray[Any],
    random_state: int = 0,
    progress: Callable[[str], None] | None = None,
) -> MatrixResult:
    """Run every attack against every defence at every budget; measure benign cost too."""
    if not attacks or not defences or not budgets:
        raise InvalidInputError("the matrix needs at least one attack, defence and budget")
    result = MatrixResult()
    for defence in defences:
        result.benign.append(benign_cost(defence, victim, honest_inputs, honest_labels))
        for attack_name in attacks:
            for budget in budgets:
                started = time.perf_counter()
                attack = make_attack(
                    attack_name, budget=budget, pool=pool, random_state=random_state
                )
                outcome = attack.run(ShieldTarget(defence.build(victim)), evaluation=evaluation)
                result.runs.append(
                    MatrixRun(
                        attack=attack_name,
                        defence=defence.name,
                        budget=budget,
                        fidelity=outcome.fidelity,
                        accuracy=outcome.accuracy,
                        queries=outcome.queries,
                        rows=outcome.rows,
                        outcome=outcome.outcome,
                        detected_at=outcome.stopped_at_row
                        if outcome.outcome == "blocked"
                        else None,
                        seconds=time.perf_counter() - started,
                    )
                )
                if progress is not None:
                    progress(f"{attack_name} x {defence.name} @ {budget}")
    return result
