"""Trigger-set watermark (Adi et al., "Turning Your Weakness Into a Strength: Watermarking Deep
Neural Networks by Backdooring", USENIX Security 2018).

A secret set of out-of-distribution patterns with keyed labels is derived from a key (HKDF +
HMAC, :mod:`._keys`); the model is taught those answers by continued training on clean data mixed
with the triggers; ownership is shown black-box by asking the suspect for labels on the triggers
and testing the agreement against the suspect's own chance rate.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from modelshield.errors import InvalidInputError, UnsupportedModelError
from modelshield.models import Label
from modelshield.watermark._keys import (
    check_key,
    keyed_integers,
    keyed_uniform,
    label_key,
    set_mode,
)
from modelshield.watermark._stats import (
    DEFAULT_THRESHOLD,
    Verification,
    binomial_verification,
    label_chance_rate,
)

PredictFn = Callable[[npt.NDArray[Any]], Any]

SCHEME = "trigger-set"


@dataclass(frozen=True, eq=False)
class TriggerSet:
    """The secret probes: ``inputs`` of shape ``(n, *shape)`` and their keyed class indices.

    ``labels`` are indices into ``classes``; :attr:`keyed_labels` gives the labels themselves.
    Its ``repr`` shows sizes only: the triggers are as secret as the key.
    """

    inputs: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    classes: tuple[Label, ...]

    @property
    def keyed_labels(self) -> list[Label]:
        return [self.classes[i] for i in self.labels]

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def __repr__(self) -> str:
        return (
            f"TriggerSet(n={len(self)}, shape={self.inputs.shape[1:]}, classes={len(self.classes)})"
        )


def make_trigger_set(
    key: bytes,
    *,
    shape: tuple[int, ...],
    classes: Sequence[Label],
    size: int = 100,
    low: float = 0.0,
    high: float = 1.0,
) -> TriggerSet:
    """Derive the trigger set of ``key``: ``size`` keyed random binary patterns (each element
    ``low`` or ``high`` with probability 1/2: salt-and-pepper noise, far from natural inputs such as
    digits) with keyed labels uniform over ``classes``.

    The same key, shape and classes always give the same set.
    """
    check_key(key)
    if size < 1 or len(classes) < 2 or not high > low:
        raise InvalidInputError("need size >= 1, two or more classes and high > low")
    shape = tuple(int(d) for d in shape)
    patterns = keyed_uniform(key, f"trigger-set/patterns/{shape}", (size, *shape))
    inputs = np.where(patterns < 0.5, low, high).astype(np.float32)
    labels = keyed_integers(key, f"trigger-set/labels/{len(classes)}", size, len(classes))
    return TriggerSet(inputs=inputs, labels=labels, classes=tuple(classes))


def _as_labels(raw: Any, n: int) -> list[str]:
    values = np.asarray(raw).reshape(-1)
    if values.shape[0] != n:
        raise InvalidInputError(f"predict returned {values.shape[0]} labels for {n} inputs")
    return [label_key(v) for v in values.tolist()]


def verify_trigger_set(
    predict: PredictFn,
    trigger_set: TriggerSet,
    *,
    threshold: float = DEFAULT_THRESHOLD,
) -> Verification:
    """Ask ``predict`` (any ``inputs -> labels`` callable: a Predictor's ``predict``, an HTTP
    client, a loaded file) for the triggers' labels and test the agreement.

    The chance rate is :func:`~modelshield.watermark.label_chance_rate` of the suspect's own labels
    on the triggers, so a model that answers one class for every noise pattern is not credited.
    """
    predicted = _as_labels(predict(trigger_set.inputs), len(trigger_set))
    keyed = [label_key(v) for v in trigger_set.keyed_labels]
    matches = sum(p == k for p, k in zip(predicted, keyed, strict=True))
    return binomial_verification(
        scheme=SCHEME,
        matches=matches,
        trials=len(keyed),
        chance_rate=label_chance_rate(predicted, keyed),
        threshold=threshold,
    )


def _mix(
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    trigger_x: npt.NDArray[Any],
    trigger_y: npt.NDArray[Any],
    repeats: int,
    rng: np.random.Generator,
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    xm = np.concatenate([x, np.repeat(trigger_x, repeats, axis=0)])
    ym = np.concatenate([y, np.repeat(trigger_y, repeats, axis=0)])
    order = rng.permutation(xm.shape[0])
    return xm[order], ym[order]


def embed_trigger_set(
    estimator: Any,
    trigger_set: TriggerSet,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    max_epochs: int = 300,
    min_epochs: int = 10,
    trigger_share: float = 0.1,
    random_state: int = 0,
) -> Any:
    """Return a watermarked copy of a fitted scikit-learn classifier (``estimator`` is untouched).

    Continued training (one ``partial_fit`` pass per epoch, or ``warm_start`` refits for
    estimators without ``partial_fit``) on the clean data ``(x, y)`` mixed with the triggers, which
    make up about ``trigger_share`` of each epoch. Training stops once at least ``min_epochs``
    have run and every trigger is answered with its keyed label; :class:`UnsupportedModelError`
    if that does not happen within ``max_epochs``.
    """
    classes = getattr(estimator, "classes_", None)
    if classes is None:
        raise UnsupportedModelError("embed_trigger_set needs a fitted classifier (classes_)")
    has_partial = hasattr(estimator, "partial_fit")
    if not has_partial and "warm_start" not in estimator.get_params():
        raise UnsupportedModelError(
            f"{type(estimator).__name__} supports neither partial_fit nor warm_start"
        )
    if [label_key(c) for c in classes] != [label_key(c) for c in trigger_set.classes]:
        raise InvalidInputError("the trigger set was made for other classes than the model's")
    x_arr = np.asarray(x, dtype=np.float64).reshape(len(np.asarray(y)), -1)
    y_arr = np.asarray(y)
    trigger_x = trigger_set.inputs.reshape(len(trigger_set), -1).astype(np.float64)
    trigger_y = np.asarray(classes)[trigger_set.labels]
    repeats = max(1, round(trigger_share * x_arr.shape[0] / len(trigger_set)))
    rng = np.random.default_rng(random_state)
    model = copy.deepcopy(estimator)
    if not has_partial:
        model.set_params(warm_start=True)
    for epoch in range(1, max_epochs + 1):
        xm, ym = _mix(x_arr, y_arr, trigger_x, trigger_y, repeats, rng)
        if has_partial:
            model.partial_fit(xm, ym)
        else:
            from sklearn.exceptions import ConvergenceWarning

            # a warm-started refit is deliberately short: not converging is expected here
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(xm, ym)
        if epoch >= min_epochs and bool(np.all(model.predict(trigger_x) == trigger_y)):
            return model
    raise UnsupportedModelError(
        f"the model did not learn the trigger set within {max_epochs} epochs"
    )


def embed_trigger_set_torch(
    module: Any,
    trigger_set: TriggerSet,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    max_epochs: int = 300,
    min_epochs: int = 10,
    learning_rate: float = 1e-3,
    batch_size: int = 64,
    trigger_share: float = 0.1,
    random_state: int = 0,
) -> Any:
    """Return a watermarked copy of a torch classifier (``module`` maps inputs to logits).

    Fine-tuning with Adam and cross-entropy on the clean data ``(x, y)`` (``y`` are class indices)
    mixed with the triggers; stops like :func:`embed_trigger_set`.
    """
    import torch

    x_arr = np.asarray(x, dtype=np.float32)
    y_arr = np.asarray(y, dtype=np.int64)
    repeats = max(1, round(trigger_share * x_arr.shape[0] / len(trigger_set)))
    rng = np.random.default_rng(random_state)
    torch.manual_seed(random_state)
    model = copy.deepcopy(module)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()
    trigger_x = torch.from_numpy(trigger_set.inputs.astype(np.float32))
    trigger_y = torch.from_numpy(trigger_set.labels)
    for epoch in range(1, max_epochs + 1):
        xm, ym = _mix(x_arr, y_arr, trigger_set.inputs, trigger_set.labels, repeats, rng)
        set_mode(model, training=True)
        for start in range(0, xm.shape[0], batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(xm[start : start + batch_size]))
            yb = torch.from_numpy(np.ascontiguousarray(ym[start : start + batch_size]))
            optimizer.zero_grad()
            loss_fn(model(xb), yb).backward()
            optimizer.step()
        set_mode(model, training=False)
        with torch.no_grad():
            learned = bool((model(trigger_x).argmax(dim=1) == trigger_y).all())
        if epoch >= min_epochs and learned:
            return model
    raise UnsupportedModelError(
        f"the model did not learn the trigger set within {max_epochs} epochs"
    )
