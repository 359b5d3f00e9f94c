"""The gateway's OpenAPI 3.1 document, written out in full (the hot path does not use pydantic)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelshield._version import __version__

if TYPE_CHECKING:
    from modelshield.gateway._app import Gateway
    from modelshield.models import Predictor

_ERROR = {"$ref": "#/components/schemas/Error"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


_COMMON_ERRORS = {
    "401": _error("missing, malformed, unknown, expired or revoked API key"),
    "503": _error("a backing store (audit log, state) is unavailable; nothing was served"),
}

ADMIN_ERRORS = {
    "401": _error("missing or wrong admin key or TOTP code, or locked out"),
    "404": _error("no such client"),
    "503": _error("a backing store is unavailable"),
}


def _row_schema(predictor: Predictor) -> dict[str, Any]:
    spec = predictor.input_spec
    number: dict[str, Any] = {"type": "number"}
    if spec.min_value is not None:
        number["minimum"] = spec.min_value
    if spec.max_value is not None:
        number["maximum"] = spec.max_value
    schema: dict[str, Any] = number
    for size in reversed(spec.shape):
        schema = {"type": "array", "minItems": size, "maxItems": size, "items": schema}
    return schema


def _predict_operation(name: str, predictor: Predictor, max_rows: int) -> dict[str, Any]:
    request = {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "inputs": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_rows,
                "items": _row_schema(predictor),
            }
        },
    }
    return {
        "post": {
            "summary": f"Predict with {name}",
            "description": (
                "Send a batch of input rows; get the top-1 label of each row and, where the "
                "client's tier returns scores, hardened probabilities. Every request is audited "
                "before it is answered. Rows count against the client's budget; the tier may "
                "allow fewer rows per request than maxItems says (then 413)."
            ),
            "operationId": f"predict_{name}",
            "security": [{"apiKey": []}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": request},
                    "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            "responses": {
                "200": {
                    "description": "predictions",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/PredictResponse"}
                        }
                    },
                },
                "400": _error("the body is not valid JSON or .npy"),
                **_COMMON_ERRORS,
                "403": _error(
                    "the key is blocked (extraction detection) or its tier is not configured"
                ),
                "404": _error("no such model for this key"),
                "413": _error("body or batch too large"),
                "415": _error("unsupported content type"),
                "422": _error(
                    "inputs have the wrong shape or type, are not finite or out of range"
                ),
                "429": {
                    **_error("rate limit or query budget exhausted"),
                    "headers": {
                        "Retry-After": {
                            "description": "seconds to wait before retrying",
                            "schema": {"type": "integer"},
                        }
                    },
                },
            },
        }
    }


def openapi_document(
    gateway: Gateway, models: dict[str, Predictor] | None = None
) -> dict[str, Any]:
    """The document for ``gateway``: one predict path per served model, with its exact rows."""
    max_rows = max((t.max_batch_rows for t in gateway.tiers.values()), default=1)
    paths: dict[str, Any] = {
        f"/v1/models/{name}/predict": _predict_operation(name, predictor, max_rows)
        for name, predictor in sorted((gateway.models if models is None else models).items())
    }
    paths.update({
        "/v1/models": {
            "get": {
                "summary": "List the models this key may use",
                "operationId": "listModels",
                "security": [{"apiKey": []}],
                "responses": {
                    "200": {
                        "description": "the caller's models",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ModelList"}
                            }
                        },
                    },
                    **_COMMON_ERRORS,
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "operationId": "healthz",
                "security": [],
                "responses": {
                    "200": {
                        "description": "alive",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    })  # fmt: skip
    for route in gateway.admin_routes:
        spec = getattr(route.endpoint, "openapi", None)
        if spec is not None:
            paths.setdefault(route.path, {}).update(spec)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "modelshield gateway",
            "version": __version__,
            "description": "A guarded prediction API: authenticated, limited, hardened, audited.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "msk_... API key"},
                "adminKey": {"type": "http", "scheme": "bearer", "description": "admin key"},
                "totp": {"type": "apiKey", "in": "header", "name": "X-TOTP-Code"},
            },
            "schemas": {
                "PredictResponse": {
                    "type": "object",
                    "required": ["model", "labels"],
                    "properties": {
                        "model": {"type": "string"},
                        "labels": {"type": "array", "items": {"type": ["integer", "string"]}},
                        "probabilities": {
                            "type": "array",
                            "items": {"type": "array", "items": {"type": "number"}},
                        },
                    },
                },
                "ModelList": {
                    "type": "object",
                    "required": ["models"],
                    "properties": {
                        "models": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "input", "classes"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "input": {"type": "object"},
                                    "classes": {"type": "array"},
                                },
                            },
                        }
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        }
                    },
                },
            },
        },
    }
