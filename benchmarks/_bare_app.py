"""The peer of the gateway benchmark: a bare Starlette endpoint serving the same ONNX model.

No authentication, limits, validation, hardening or audit: orjson in, ONNX Runtime, orjson out.
Started by uvicorn with ``--factory benchmarks._bare_app:create_app``; the model path comes from
``BARE_MODEL``.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def open_session() -> tuple[ort.InferenceSession, str]:
    """The ONNX Runtime session of ``BARE_MODEL`` (one thread, as the gateway's) and its input."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        os.environ["BARE_MODEL"], sess_options=options, providers=["CPUExecutionProvider"]
    )
    return session, session.get_inputs()[0].name


def create_app() -> Starlette:
    session, input_name = open_session()

    async def predict(request: Request) -> Response:
        body = orjson.loads(await request.body())
        x = np.asarray(body["inputs"], dtype=np.float32)
        labels, proba = session.run(None, {input_name: x})
        return Response(
            orjson.dumps(
                {"labels": labels.tolist(), "probabilities": proba},
                option=orjson.OPT_SERIALIZE_NUMPY,
            ),
            media_type="application/json",
        )

    return Starlette(routes=[Route("/v1/models/{name}/predict", predict, methods=["POST"])])
