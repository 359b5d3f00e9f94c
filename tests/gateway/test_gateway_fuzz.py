"""Schemathesis against the served OpenAPI document (bounded): no 500, no off-schema response.

Schemathesis' pytest plugin does not support pytest 9 yet, so each operation's Hypothesis strategy
is driven directly.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings

from .conftest import LiveGateway

EXAMPLES_PER_OPERATION = 20


def test_api_conforms_to_its_document(live: LiveGateway) -> None:
    headers = {"Authorization": f"Bearer {live.keys['alice']}"}
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json", headers=headers)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers)

        run()
