"""A small numpy multilayer perceptron the attacks can train on soft labels and differentiate.

ReLU hidden layers, a softmax output, cross-entropy against probability targets (one-hot for hard
labels) with an L2 penalty, trained full-batch with L-BFGS (scipy), as Tramèr et al. (2016) train
their MLP copies. ``hidden_layer_sizes=()`` is multinomial logistic (softmax) regression.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from modelshield.attacks._base import RandomState, as_generator
from modelshield.attacks._target import FloatArray


def _softmax(z: FloatArray) -> FloatArray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: FloatArray = e / e.sum(axis=1, keepdims=True)
    return out


class NumpyMLP:
    """Softmax MLP trained by L-BFGS on probability targets; exposes input gradients."""

    def __init__(
        self,
        *,
        hidden_layer_sizes: tuple[int, ...] = (64,),
        alpha: float = 1e-4,
        max_iter: int = 300,
        random_state: RandomState = None,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.alpha = alpha
        self.max_iter = max_iter
        self.random_state = random_state

    def _shapes(self, n_in: int, n_out: int) -> list[tuple[int, int]]:
        sizes = [n_in, *self.hidden_layer_sizes, n_out]
        return list(itertools.pairwise(sizes))

    def _unpack(self, flat: FloatArray) -> list[tuple[FloatArray, FloatArray]]:
        layers = []
        pos = 0
        for n_in, n_out in self.shapes_:
            w = flat[pos : pos + n_in * n_out].reshape(n_in, n_out)
            pos += n_in * n_out
            b = flat[pos : pos + n_out]
            pos += n_out
            layers.append((w, b))
        return layers

    def _forward(
        self, x: FloatArray, layers: list[tuple[FloatArray, FloatArray]]
    ) -> tuple[list[FloatArray], FloatArray]:
        activations = [x]
        a = x
        for i, (w, b) in enumerate(layers):
            z = a @ w + b
            a = np.maximum(z, 0.0) if i < len(layers) - 1 else z
            activations.append(a)
        return activations, _softmax(activations[-1])

    def _loss_grad(
        self, flat: FloatArray, x: FloatArray, targets: FloatArray
    ) -> tuple[float, FloatArray]:
        layers = self._unpack(flat)
        n = x.shape[0]
        activations, probs = self._forward(x, layers)
        loss = -float(np.sum(targets * np.log(np.clip(probs, 1e-12, None)))) / n
        loss += 0.5 * self.alpha * sum(float(np.sum(w * w)) for w, _ in layers) / n
        grads: list[FloatArray] = []
        delta = (probs - targets) / n
        for i in range(len(layers) - 1, -1, -1):
            w, _ = layers[i]
            grads.append(delta.sum(axis=0))
            grads.append(activations[i].T @ delta + self.alpha * w / n)
            if i > 0:
                delta = (delta @ w.T) * (activations[i] > 0)
        grads.reverse()
        return loss, np.concatenate([g.ravel() for g in grads])

    def fit(self, inputs: FloatArray, targets: FloatArray) -> NumpyMLP:
        """Fit to ``(n, d)`` inputs and ``(n, K)`` probability targets; returns ``self``."""
        from scipy.optimize import minimize

        x = np.asarray(inputs, dtype=np.float64).reshape(inputs.shape[0], -1)
        t = np.asarray(targets, dtype=np.float64)
        rng = as_generator(self.random_state)
        self.shapes_ = self._shapes(x.shape[1], t.shape[1])
        parts = []
        for n_in, n_out in self.shapes_:
            bound = np.sqrt(6.0 / (n_in + n_out))
            parts.append(rng.uniform(-bound, bound, size=n_in * n_out))
            parts.append(rng.uniform(-bound, bound, size=n_out))
        start = np.concatenate(parts)
        result = minimize(
            self._loss_grad,
            start,
            args=(x, t),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": self.max_iter},
        )
        self.coefs_ = self._unpack(np.asarray(result.x, dtype=np.float64))
        self.loss_ = float(result.fun)
        self.n_classes_ = int(t.shape[1])
        return self

    def predict_proba(self, inputs: FloatArray) -> FloatArray:
        x = np.asarray(inputs, dtype=np.float64).reshape(inputs.shape[0], -1)
        return self._forward(x, self.coefs_)[1]

    def input_gradient(self, inputs: FloatArray, classes: Any) -> FloatArray:
        """Gradient of the probability of ``classes[i]`` with respect to row ``i`` of ``inputs``."""
        x = np.asarray(inputs, dtype=np.float64).reshape(inputs.shape[0], -1)
        idx = np.asarray(classes, dtype=np.int64)
        activations, probs = self._forward(x, self.coefs_)
        onehot = np.zeros_like(probs)
        onehot[np.arange(x.shape[0]), idx] = 1.0
        chosen = probs[np.arange(x.shape[0]), idx][:, None]
        delta = chosen * (onehot - probs)
        for i in range(len(self.coefs_) - 1, -1, -1):
            w, _ = self.coefs_[i]
            delta = delta @ w.T
            if i > 0:
                delta = delta * (activations[i] > 0)
        return delta

    def __repr__(self) -> str:
        return (
            f"NumpyMLP(hidden_layer_sizes={self.hidden_layer_sizes}, alpha={self.alpha}, "
            f"max_iter={self.max_iter})"
        )
