"""modelshield: protect machine-learning models against theft (OWASP ML05:2023).

The names below are the safe, stable public API. Importing this package reads no configuration,
writes no file, opens no socket and configures no logging.
"""

from modelshield._version import __version__
from modelshield.config import Config, Secret, load_config
from modelshield.errors import (
    AuthenticationError,
    AuthorizationError,
    ConfigError,
    IntegrityError,
    InvalidInputError,
    KeyMissingError,
    RateLimitedError,
    ServiceUnavailableError,
    ShieldError,
    UnsupportedModelError,
)
from modelshield.gateway import Shield
from modelshield.models import InputSpec, Predictor, load_model
from modelshield.vault import open_model, seal

__all__ = [
    "AuthenticationError",
    "AuthorizationError",
    "Config",
    "ConfigError",
    "InputSpec",
    "IntegrityError",
    "InvalidInputError",
    "KeyMissingError",
    "Predictor",
    "RateLimitedError",
    "Secret",
    "ServiceUnavailableError",
    "Shield",
    "ShieldError",
    "UnsupportedModelError",
    "__version__",
    "load_config",
    "load_model",
    "open_model",
    "seal",
]
