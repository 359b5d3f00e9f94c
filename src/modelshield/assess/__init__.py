"""OWASP ML05:2023 risk assessment of a deployment (stable).

:func:`assess` scores exploitability, detectability and technical impact (1-5 each) from a
``shield.toml`` and, optionally, measured red-team results; every finding says what to change.
"""

from modelshield.assess._render import render_html
from modelshield.assess._rules import FACTORS, Assessment, Finding, assess

__all__ = ["FACTORS", "Assessment", "Finding", "assess", "render_html"]
