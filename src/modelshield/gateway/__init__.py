"""The guarded prediction gateway and its in-process twin, :class:`Shield` (stable).

Request path (see docs/gateway.md): authenticate -> scope -> validate -> limits (rate, budget in
rows, detector flags) -> predict -> harden -> watermark -> detect -> audit (durable) -> respond.
"""

from modelshield.gateway._app import AuditEntry, Gateway, build_app
from modelshield.gateway._harden import (
    LabelsOnly,
    Noise,
    OutputPolicy,
    Probabilities,
    ReverseSigmoid,
    Rounding,
    TopK,
    parse_policy,
)
from modelshield.gateway._init import InitReport, default_config, init_deployment
from modelshield.gateway._limits import (
    LimitDecision,
    LimitRule,
    LimitStore,
    MemoryLimitStore,
    RedisLimitStore,
    open_limit_store,
)
from modelshield.gateway._pipeline import Answer, Marker, Observer, Tier
from modelshield.gateway._server import ServerThread, create_app, load_served_model, open_gateway
from modelshield.gateway._shield import Shield, ShieldAnswer

__all__ = [
    "Answer",
    "AuditEntry",
    "Gateway",
    "InitReport",
    "LabelsOnly",
    "LimitDecision",
    "LimitRule",
    "LimitStore",
    "Marker",
    "MemoryLimitStore",
    "Noise",
    "Observer",
    "OutputPolicy",
    "Probabilities",
    "RedisLimitStore",
    "ReverseSigmoid",
    "Rounding",
    "ServerThread",
    "Shield",
    "ShieldAnswer",
    "Tier",
    "TopK",
    "build_app",
    "create_app",
    "default_config",
    "init_deployment",
    "load_served_model",
    "open_gateway",
    "open_limit_store",
    "parse_policy",
]
