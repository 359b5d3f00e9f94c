"""A running gateway as an attack target, over HTTP with an API key.

The red team steals the user's own model through the user's own gateway: the HTTP target counts
requests and rows exactly, waits out a ``429`` when ``Retry-After`` is short, and turns refusals
into the library's errors so that :class:`~modelshield.attacks.BudgetedTarget` stops cleanly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from modelshield.attacks._target import Answer, FloatArray
from modelshield.errors import (
    AuthenticationError,
    AuthorizationError,
    InvalidInputError,
    RateLimitedError,
    ServiceUnavailableError,
    UnsupportedModelError,
)
from modelshield.models import InputSpec, Label


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


class HttpTarget:
    """``POST {url}/v1/models/{model}/predict`` with ``Authorization: Bearer {api_key}``.

    The model's input specification and classes are read from ``GET /v1/models`` (``model``
    may be left out when the key may use one model only). A ``429`` whose
    ``Retry-After`` is at most ``max_wait`` seconds is waited out and retried (at most
    ``max_retries`` times); a longer one raises :class:`RateLimitedError`. ``401`` raises
    :class:`AuthenticationError`, ``403`` :class:`AuthorizationError`, ``5xx``
    :class:`ServiceUnavailableError`. ``queries`` and ``rows`` count answered requests and rows.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str,
        model: str | None = None,
        timeout: float = 10.0,
        max_wait: float = 2.0,
        max_retries: int = 3,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url.rstrip("/")
        self.max_wait = max_wait
        self.max_retries = max_retries
        self._sleep = sleep
        self._client = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
        )
        self.queries = 0
        self.rows = 0
        self.waited = 0.0
        try:
            listing = self._client.get("/v1/models")
        except httpx.HTTPError as exc:
            self._client.close()
            raise ServiceUnavailableError(
                f"cannot reach {self.url}: {type(exc).__name__}"
            ) from None
        try:
            self._raise_for(listing)
        except BaseException:
            self._client.close()
            raise
        models = listing.json()["models"]
        if model is None and len(models) == 1:
            model = str(models[0]["name"])
        entry = next((m for m in models if m["name"] == model), None)
        if entry is None:
            self._client.close()
            if model is None:
                raise InvalidInputError("this key may use several models: name one")
            raise AuthorizationError(f"this key may not use a model named {model!r}")
        self.model: str = str(model)
        self._spec = InputSpec.from_dict(entry["input"])
        self._classes: tuple[Label, ...] = tuple(entry["classes"])

    def __repr__(self) -> str:  # never the key
        return f"HttpTarget({self.url!r}, model={self.model!r})"

    @property
    def input_spec(self) -> InputSpec:
        return self._spec

    @property
    def classes(self) -> tuple[Label, ...]:
        return self._classes

    def _raise_for(self, response: httpx.Response) -> None:
        status = response.status_code
        if status < 400:
            return
        message = _error(response)
        if status == 401:
            raise AuthenticationError(message)
        if status == 403:
            raise AuthorizationError(message)
        if status == 429:
            retry = response.headers.get("Retry-After")
            raise RateLimitedError(message, retry_after=float(retry) if retry else None)
        if status >= 500:
            raise ServiceUnavailableError(message)
        raise InvalidInputError(message)

    def query(self, inputs: FloatArray) -> Answer:
        batch = np.asarray(inputs, dtype=np.float64)
        body = {"inputs": batch.tolist()}
        for attempt in range(self.max_retries + 1):
            try:
                response = self._client.post(f"/v1/models/{self.model}/predict", json=body)
            except httpx.HTTPError as exc:
                raise ServiceUnavailableError(f"request failed: {type(exc).__name__}") from None
            retry = response.headers.get("Retry-After")
            if (
                response.status_code == 429
                and retry is not None
                and float(retry) <= self.max_wait
                and attempt < self.max_retries
            ):
                self.waited += float(retry)
                self._sleep(float(retry))
                continue
            self._raise_for(response)
            return self._answer(response.json(), batch.shape[0])
        raise RateLimitedError("rate limited")  # pragma: no cover - the loop always returns

    def _answer(self, payload: dict[str, Any], n: int) -> Answer:
        labels = np.asarray(payload["labels"])
        probs = payload.get("probabilities")
        probabilities = None if probs is None else np.asarray(probs, dtype=np.float64)
        if labels.shape[0] != n:
            raise ServiceUnavailableError(f"target answered {labels.shape[0]} rows for {n}")
        self.queries += 1
        self.rows += n
        return Answer(labels=labels, probabilities=probabilities)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteVictim:
    """The deployment's own answers on an evaluation set, fetched once through ``target``.

    For measuring fidelity when only the API is at hand: ``predict`` answers the evaluation rows
    from the fetched labels (other rows are asked from the target). It costs ``len(inputs)`` rows
    of the deployment's budget, outside the attack's own budget.
    """

    def __init__(self, target: HttpTarget, inputs: npt.ArrayLike) -> None:
        self.target = target
        self._inputs = np.asarray(inputs, dtype=np.float64)
        labels = [
            target.query(self._inputs[i : i + 100]).labels for i in range(0, len(self._inputs), 100)
        ]
        self._labels = np.concatenate(labels)

    @property
    def input_spec(self) -> InputSpec:
        return self.target.input_spec

    @property
    def classes(self) -> tuple[Label, ...]:
        return self.target.classes

    def predict(self, inputs: npt.ArrayLike) -> npt.NDArray[Any]:
        x = np.asarray(inputs, dtype=np.float64)
        if x.shape == self._inputs.shape and np.array_equal(x, self._inputs):
            return self._labels
        return self.target.query(x).labels

    def predict_proba(self, inputs: npt.ArrayLike) -> FloatArray:
        raise UnsupportedModelError("a remote victim answers labels only")
