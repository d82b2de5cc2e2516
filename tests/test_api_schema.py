"""A bounded property-based run of the published OpenAPI schema over every operation.

Schemathesis generates requests from /api/schema/ (valid ones and invalid ones)
and checks each answer: no 5xx, a documented status and content type, a body that matches
its schema.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from apps.accounts.models import User
from apps.accounts.tokens import token_create
from tests import factories

API = "/api/v1/agentos/"
EXAMPLES_PER_OPERATION = 12
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.mark.django_db(transaction=True)
def test_it_keeps_its_schema_for_generated_requests(user: User, settings: Any) -> None:
    # Hundreds of requests from one token: the rate limits are not what this run is about.
    settings.API_RATES = {}
    factories.agent(user, agent_id="agent-123", tools=["calculator"])
    headers = {"Authorization": f"Bearer {token_create(user=user, name='fuzz')[1]}"}
    schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [op for op in operations if op.path.startswith(API)]
    assert len(operations) >= 30
    for operation in operations:
        # Valid requests and deliberately invalid ones (wrong types, missing fields, bad ids).
        cases = st.one_of(
            operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
            operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
        )

        @given(case=cases)
        @hypothesis_settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            response = case.call(headers=headers)
            case.validate_response(response, checks=CHECKS, headers=headers)

        check()
