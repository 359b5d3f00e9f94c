"""``obfuscate``: the pipeline of verified transforms and its report."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

from modelshield.errors import InvalidInputError, UnsupportedModelError
from modelshield.obfuscate import _level1, _transforms
from modelshield.obfuscate._cost import SIMD_BLOCK, macs_per_row, padded_macs_per_row
from modelshield.obfuscate._graph import check_supported, clone, serialize, to_onnx_model
from modelshield.obfuscate._inspect import ModelView, WeightMatch, inspect_model, weight_similarity
from modelshield.obfuscate._verify import EquivalenceError, Verifier, verification_inputs

_log = logging.getLogger(__name__)

LEVELS = (1, 2, 3)

#: A failed check within this many tolerances (and the same top-1) is rounding, not a bug.
_ROUNDING_SLACK = 10.0
#: Share of extra (cancelling) units per hidden layer at level 3, the widest that fits first.
_WIDEN = {3: (0.5, 0.25, 0.125)}
#: Level 2 widens a hidden layer when that is free (it fills the last SIMD block of its units) or
#: while the padded multiply-accumulates it adds stay within this share of the model's: a
#: widening that starts a new block costs 10-15% latency on a small MLP, on top of the split.
_WIDEN_BUDGET = 0.15
#: Spreads of the random additive share relative to the weights it hides, tried in this order.
_SHARE_SCALES = (2.0, 1.0, 0.5)
#: Rank of the random share as a fraction of the layer's (None: full rank, a twin layer).
_SHARE_RANK: dict[int, float | None] = {2: 0.0625, 3: None}


@dataclass(frozen=True)
class Change:
    """One verified transform: what it did and the output difference measured right after it."""

    step: str
    detail: str
    max_abs_diff: float


@dataclass(frozen=True)
class ObfuscationReport:
    """What :func:`obfuscate` changed and the proof that the function did not change.

    ``max_abs_diff`` and ``top1_equal`` compare the final model with the original on
    ``n_verification_rows`` rows (random ones plus the caller's real ones); ``before`` and ``after``
    are what a reader of each file sees; ``weights`` is how well the obfuscated weights match the
    original ones; ``cost_ratio`` is the ratio of multiply-accumulates per row (after / before).
    ``dropped`` lists randomized candidates whose rounding failed the check and were discarded.
    """

    level: int
    source_format: str
    max_abs_diff: float
    top1_equal: bool
    tolerance: float
    n_verification_rows: int
    changes: tuple[Change, ...]
    dropped: tuple[Change, ...]
    before: ModelView
    after: ModelView
    weights: WeightMatch
    cost_ratio: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "source_format": self.source_format,
            "max_abs_diff": self.max_abs_diff,
            "top1_equal": self.top1_equal,
            "tolerance": self.tolerance,
            "n_verification_rows": self.n_verification_rows,
            "changes": [
                {"step": c.step, "detail": c.detail, "max_abs_diff": c.max_abs_diff}
                for c in self.changes
            ],
            "dropped": [
                {"step": c.step, "detail": c.detail, "max_abs_diff": c.max_abs_diff}
                for c in self.dropped
            ],
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "max_weight_cosine": self.weights.max_cosine,
            "matrix_cosine": self.weights.matrix_cosine,
            "row_cosine": self.weights.row_cosine,
            "comparable_layer_pairs": self.weights.comparable_pairs,
            "cost_ratio": self.cost_ratio,
        }


@dataclass(frozen=True)
class ObfuscationResult:
    """The obfuscated ONNX model (``model_bytes``) and its :class:`ObfuscationReport`."""

    model_bytes: bytes = field(repr=False)
    report: ObfuscationReport


class _Run:
    """The model being transformed, the verifier and the log of verified changes."""

    def __init__(self, model: onnx.ModelProto, verifier: Verifier) -> None:
        self.model = model
        self.verifier = verifier
        self.changes: list[Change] = []
        self.dropped: list[Change] = []

    def step(
        self,
        name: str,
        transform: Callable[[onnx.ModelProto], str | None],
        *,
        droppable: bool = True,
    ) -> bool:
        """Apply ``transform`` to a copy, check it, and keep it; False when it did not apply.

        A candidate that misses the tolerance by float rounding only (same top-1, difference at
        most :data:`_ROUNDING_SLACK` times the tolerance: float32 rounding adds up over many
        rewrites of a model with large outputs) is dropped and listed in the report; a larger
        difference means a wrong transform and raises :class:`EquivalenceError`, as does any
        failure of a step that is not ``droppable`` (the clean-up and the renaming, which must
        not be skipped silently).
        """
        candidate = clone(self.model)
        detail = transform(candidate)
        if detail is None:
            return False
        try:
            result = self.verifier.check(candidate, name)
        except EquivalenceError as exc:
            slack = _ROUNDING_SLACK * self.verifier.tolerance
            if not droppable or not exc.top1_equal or exc.max_abs_diff > slack:
                raise
            _log.debug("dropped %s (rounding): %s", name, exc)
            self.dropped.append(Change(name, "rounding above the tolerance", exc.max_abs_diff))
            return False
        self.model = candidate
        self.changes.append(Change(name, detail, result.max_abs_diff))
        _log.debug("%s: %s (max abs diff %.3g)", name, detail, result.max_abs_diff)
        return True

    def attempt(self, name: str, transform: Callable[[onnx.ModelProto], str | None]) -> bool:
        """Like :meth:`step`, but a candidate that fails the check is dropped instead of raising.

        Only for the transforms that add random values (additive shares, padding layers, cancelling
        units), whose float rounding depends on the data; the dropped candidate is never returned
        and is listed in the report.
        """
        try:
            return self.step(name, transform)
        except EquivalenceError as exc:
            _log.debug("dropped %s: %s", name, exc)
            self.dropped.append(Change(name, "failed the equivalence check", exc.max_abs_diff))
            return False

    def repeat(self, name: str, transform: Callable[[onnx.ModelProto], str | None]) -> None:
        for _ in range(10_000):
            if not self.step(name, transform):
                return


def obfuscate(
    model_bytes: bytes,
    *,
    level: int = 2,
    seed: int | None = None,
    inputs: npt.ArrayLike | None = None,
    n_random: int = 256,
    tolerance: float = 1e-5,
    max_cost_ratio: float = 4.0,
    rename_io: bool = False,
) -> ObfuscationResult:
    """Rewrite a model into one that computes the same function but hides how it was built.

    ``model_bytes`` is an ONNX model or a torch.export archive (exported to ONNX first); the result
    is always ONNX. ``level`` 1 strips names, documentation, producer and metadata (keeping the
    ``modelshield`` entry), randomizes names and folds constants; 2 adds weight transforms
    (batch-norm folding, merging and splitting linear layers, permuting, rescaling and adding
    cancelling hidden units); 3 adds identity-equivalent ReLU layers and wider padding as long as
    the multiply-accumulates per row stay within ``max_cost_ratio`` times the original's.

    Every transform is checked on ``n_random`` random rows plus the real rows ``inputs``: each
    output within ``tolerance`` of the original and the same top-1. A failure raises
    :class:`EquivalenceError` and returns nothing. ``seed`` makes the result reproducible.
    Graphs that cannot be handled raise :class:`UnsupportedModelError`.
    """
    if level not in LEVELS:
        raise InvalidInputError(f"level must be one of {LEVELS}, got {level}")
    if not tolerance > 0 or n_random < 1 or not max_cost_ratio >= 1.0:
        raise InvalidInputError("tolerance must be > 0, n_random >= 1 and max_cost_ratio >= 1")
    if seed is not None and seed < 0:
        raise InvalidInputError("seed must be a non-negative integer")
    model, fmt = to_onnx_model(model_bytes)
    check_supported(model)
    rng = np.random.default_rng(seed)
    original = clone(model)
    rows = verification_inputs(original, inputs=inputs, n_random=n_random, rng=rng)
    row_shape = tuple(int(d) for d in rows.shape[1:])
    run = _Run(clone(model), Verifier(original, rows, tolerance))

    run.step("clean-up", partial(_clean, rows=rows), droppable=False)
    if level >= 2:
        _weights_and_layers(run, level, rng, row_shape, max_cost_ratio)
    run.step("strip and rename", lambda m: _strip(m, rng, rename_io), droppable=False)

    final = run.verifier.check(run.model, "final check")
    cost = macs_per_row(run.model, row_shape) / max(1, macs_per_row(original, row_shape))
    data = serialize(run.model)
    report = ObfuscationReport(
        level=level,
        source_format=fmt,
        max_abs_diff=final.max_abs_diff,
        top1_equal=final.top1_equal,
        tolerance=tolerance,
        n_verification_rows=int(rows.shape[0]),
        changes=tuple(run.changes),
        dropped=tuple(run.dropped),
        before=inspect_model(original),
        after=inspect_model(run.model),
        weights=weight_similarity(original, run.model),
        cost_ratio=float(cost),
    )
    return ObfuscationResult(model_bytes=data, report=report)


def _clean(model: onnx.ModelProto, rows: npt.NDArray[Any] | None = None) -> str:
    counts = {
        "constant_nodes": _level1.constants_to_initializers(model),
        "folded": _level1.fold_constants(model),
        "no-ops_removed": _level1.remove_noops(model),
        "batch_reshapes_frozen": (
            0 if rows is None else _level1.freeze_batch_reshapes(model, rows)
        ),
        "dead_nodes_removed": _level1.remove_dead_nodes(model),
    }
    del model.graph.value_info[:]  # stale once shapes change; ONNX Runtime infers them again
    _transforms.normalize_gemm(model)
    return _level1.describe(counts) or "nothing to fold"


def _strip(model: onnx.ModelProto, rng: np.random.Generator, rename_io: bool) -> str:
    return _level1.describe(_level1.strip_and_rename(model, rng, rename_io=rename_io))


def _weights_and_layers(
    run: _Run,
    level: int,
    rng: np.random.Generator,
    row_shape: tuple[int, ...],
    max_cost_ratio: float,
) -> None:
    if not _transforms.linear_nodes(run.model):
        raise UnsupportedModelError(
            "found no linear layer (MatMul, Gemm or Conv with constant weights) to transform; "
            "use level 1"
        )
    run.repeat("fold batch normalization", _transforms.fold_batchnorm)
    run.repeat("merge linear layers", _transforms.merge_linear)
    base_cost = max(1, macs_per_row(run.model, row_shape))

    def within_budget(
        transform: Callable[[onnx.ModelProto], str | None],
    ) -> Callable[[onnx.ModelProto], str | None]:
        def guarded(model: onnx.ModelProto) -> str | None:
            detail = transform(model)
            if detail is None or level < 3:
                return detail
            if macs_per_row(model, row_shape) > max_cost_ratio * base_cost:
                return None  # over the latency budget: leave this one out
            return detail

        return guarded

    if level >= 3:
        n_layers = len(_transforms.linear_nodes(run.model))
        # The first layer first: its rows face the raw input, so nothing else hides them.
        others = [int(i) for i in rng.permutation(np.arange(1, n_layers))]
        padded: list[int] = []
        for original_index in [0, *others[: max(1, n_layers // 2)]]:
            index = original_index + sum(1 for p in padded if p <= original_index)
            if run.attempt(
                "pad with an identity layer",
                within_budget(partial(_transforms.pad_identity_layer, layer_index=index, rng=rng)),
            ):
                padded.append(original_index)
    padded_base = max(1, padded_macs_per_row(run.model, row_shape))

    def affordable(
        transform: Callable[[onnx.ModelProto], str | None],
    ) -> Callable[[onnx.ModelProto], str | None]:
        """Level 2: keep a widening that costs nothing or keeps the total within the budget."""

        def guarded(model: onnx.ModelProto) -> str | None:
            before = padded_macs_per_row(model, row_shape)
            detail = transform(model)
            if detail is None:
                return None
            after = padded_macs_per_row(model, row_shape)
            if after > before and after > (1.0 + _WIDEN_BUDGET) * padded_base:
                return None
            return detail

        return guarded

    for index in range(_transforms.count_links(run.model)):
        if level == 2:
            width = _transforms.link_widths(run.model)[index]
            # Fill the last block of units, or add a whole block: one unit costs as much. Fewer
            # when that misses the budget or the rounding of many random units the tolerance.
            units = -width % SIMD_BLOCK or SIMD_BLOCK
            while units >= 1 and not run.attempt(
                "add cancelling units",
                affordable(
                    partial(_transforms.add_cancelling_units, index=index, rng=rng, units=units)
                ),
            ):
                units //= 2
        else:
            for fraction in _WIDEN[level]:  # the widest that fits the budget
                if run.attempt(
                    "add cancelling units",
                    within_budget(
                        partial(
                            _transforms.add_cancelling_units,
                            index=index,
                            rng=rng,
                            fraction=fraction,
                        )
                    ),
                ):
                    break
        run.step("permute units", partial(_transforms.permute_units, index=index, rng=rng))
        run.step("rescale units", partial(_transforms.rescale_units, index=index, rng=rng))
    n_layers = len(_transforms.linear_nodes(run.model))
    targets = [0] if level == 2 else list(range(n_layers))
    for index in sorted(targets, reverse=True):
        for scale in _SHARE_SCALES:  # the largest share whose rounding stays within tolerance
            if run.attempt(
                "split layer",
                within_budget(
                    partial(
                        _transforms.split_layer,
                        layer_index=index,
                        rng=rng,
                        share_scale=scale,
                        rank_fraction=_SHARE_RANK[level],
                    )
                ),
            ):
                break
