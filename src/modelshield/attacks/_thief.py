"""Thieves: the models an attacker trains on stolen answers (scikit-learn, torch or numpy).

Every thief is fitted on ``(n, d)`` inputs and ``(n, K)`` probability targets (one-hot rows for
hard labels) and predicts ``(n, K)`` probabilities in the target's class order. :func:`as_thief`
turns a scikit-learn estimator or a ``torch.nn.Module`` into one; torch is imported only when a
torch module is given.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Protocol, runtime_checkable

import numpy as np

from modelshield.attacks._base import RandomState, as_generator
from modelshield.attacks._mlp import NumpyMLP
from modelshield.attacks._target import FloatArray


@runtime_checkable
class Thief(Protocol):
    """A trainable copy: ``fit(inputs, targets)`` then ``predict_proba(inputs)``."""

    def fit(self, inputs: FloatArray, targets: FloatArray) -> Any: ...

    def predict_proba(self, inputs: FloatArray) -> FloatArray: ...


class SklearnThief:
    """A scikit-learn estimator as a thief (a fresh clone is fitted on every ``fit``).

    A classifier learns the top-1 labels of the targets (scikit-learn classifiers take no soft
    labels); a regressor (no ``predict_proba``) learns the probability vectors themselves.
    """

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    def fit(self, inputs: FloatArray, targets: FloatArray) -> SklearnThief:
        from sklearn.base import clone
        from sklearn.exceptions import ConvergenceWarning

        x = inputs.reshape(inputs.shape[0], -1)
        self.n_classes_ = int(targets.shape[1])
        self.model_ = clone(self.estimator)
        self.regressor_ = not hasattr(self.model_, "predict_proba")
        y = targets if self.regressor_ else np.argmax(targets, axis=1)
        self.constant_: int | None = None
        if not self.regressor_ and np.unique(y).shape[0] < 2:
            self.constant_ = int(y[0])
            return self
        # a thief trained on a small query budget often stops before converging: that is the
        # attack's trade-off, not an error
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model_.fit(x, y)
        return self

    def predict_proba(self, inputs: FloatArray) -> FloatArray:
        x = inputs.reshape(inputs.shape[0], -1)
        out = np.zeros((x.shape[0], self.n_classes_))
        if self.constant_ is not None:
            out[:, self.constant_] = 1.0
            return out
        if self.regressor_:
            raw = np.clip(np.asarray(self.model_.predict(x), dtype=np.float64), 1e-9, None)
            result: FloatArray = raw / raw.sum(axis=1, keepdims=True)
            return result
        proba = np.asarray(self.model_.predict_proba(x), dtype=np.float64)
        out[:, np.asarray(self.model_.classes_, dtype=np.int64)] = proba
        return out

    def __repr__(self) -> str:
        return f"SklearnThief({self.estimator!r})"


class TorchThief:
    """A ``torch.nn.Module`` returning logits, trained with Adam on soft cross-entropy.

    Each ``fit`` starts from a copy of the module as given, so retraining is reproducible.
    """

    def __init__(
        self,
        module: Any,
        *,
        epochs: int = 100,
        learning_rate: float = 1e-2,
        batch_size: int = 128,
        random_state: RandomState = None,
    ) -> None:
        self.module = module
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.random_state = random_state

    def fit(self, inputs: FloatArray, targets: FloatArray) -> TorchThief:
        import torch

        threads = torch.get_num_threads()
        # a thief is a small model: one thread is fastest and does not thrash a shared machine
        torch.set_num_threads(1)
        try:
            return self._fit(torch, inputs, targets)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, torch: Any, inputs: FloatArray, targets: FloatArray) -> TorchThief:
        rng = as_generator(self.random_state)
        torch.manual_seed(int(rng.integers(2**31)))
        net = copy.deepcopy(self.module).train()
        opt = torch.optim.Adam(net.parameters(), lr=self.learning_rate)
        x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
        t = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
        n = x.shape[0]
        for _ in range(self.epochs):
            order = torch.from_numpy(rng.permutation(n))
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                opt.zero_grad()
                logp = torch.log_softmax(net(x[idx]), dim=1)
                loss = -(t[idx] * logp).sum(dim=1).mean()
                loss.backward()
                opt.step()
        self.module_ = net.eval()
        return self

    def predict_proba(self, inputs: FloatArray) -> FloatArray:
        import torch

        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
            probs = torch.softmax(self.module_(x), dim=1).numpy()
        return np.asarray(probs, dtype=np.float64)

    def __repr__(self) -> str:
        return f"TorchThief({type(self.module).__name__}, epochs={self.epochs})"


class MLPThief(NumpyMLP):
    """The default thief: the numpy MLP (no extra dependency), soft labels supported.

    :func:`as_thief` builds it with 64 hidden units and ``alpha=1e-2``.
    """

    def fit(self, inputs: FloatArray, targets: FloatArray) -> MLPThief:
        super().fit(inputs, targets)
        return self


def _is_torch_module(obj: object) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def as_thief(thief: object, *, random_state: RandomState = None) -> Thief:
    """A :class:`Thief` from ``None`` (the default MLP), a thief, a scikit-learn estimator or a
    ``torch.nn.Module``; raises ``TypeError`` for anything else."""
    if thief is None:
        # a stronger L2 penalty than the MLP's default: a thief sees few rows (measured on the
        # digits model: +1.3 points with hard labels at 1,000 rows, -0.7 with soft at 250)
        return MLPThief(hidden_layer_sizes=(64,), alpha=1e-2, random_state=random_state)
    if isinstance(thief, SklearnThief | TorchThief | NumpyMLP):
        return thief
    if _is_torch_module(thief):
        return TorchThief(thief, random_state=random_state)
    if hasattr(thief, "fit") and hasattr(thief, "get_params") and hasattr(thief, "predict"):
        return SklearnThief(thief)
    if isinstance(thief, Thief):
        return thief
    raise TypeError(
        f"cannot use {type(thief).__name__} as a thief: pass a scikit-learn estimator, a "
        "torch.nn.Module, or an object with fit(inputs, targets) and predict_proba(inputs)"
    )
