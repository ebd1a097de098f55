"""Schemathesis over the whole OpenAPI document, with a valid admin key: no 5xx, and every
answer matches the document (status code, content type, headers, body schema).

Each operation gets generated valid requests, some aimed at real objects (a file, a job and a
tenant that exist), and generated invalid requests, which must be refused with a documented
4xx rather than crash. The number of examples is small so the whole run stays around a minute
on a small machine; raise ``BDS_FUZZ_EXAMPLES`` for a longer search.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err, Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bds_service.settings import Settings

TenantKey = Any  # fixture types from tests/api/conftest.py

EXAMPLES = int(os.environ.get("BDS_FUZZ_EXAMPLES", "8"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
def db_url(pg_url: str) -> str:
    """PostgreSQL, as in production."""
    return pg_url


@pytest.fixture
def service_settings(service_settings: Settings) -> Settings:
    """No rate limit: the fuzzer sends many requests with one key on purpose."""
    service_settings.rate_limit_requests = 0
    return service_settings


def test_every_operation_answers_valid_and_invalid_requests_as_documented(
    app: FastAPI,
    client: TestClient,
    make_tenant: Callable[..., TenantKey],
    upload: Callable[..., Any],
) -> None:
    admin = make_tenant("provider", admin=True)
    file_id = upload(admin).json()["id"]
    job_id = client.post(
        "/v1/fine_tuning/jobs",
        headers=admin.headers,
        json={
            "model": "tiny-random-llama",
            "training_file": file_id,
            "method": {"type": "supervised"},
        },
    ).json()["id"]
    real_ids = {
        "file_id": file_id,
        "fine_tuning_job_id": job_id,
        "tenant_id": admin.tenant_id,
        "model": "tiny-random-llama",
    }
    headers = {"Authorization": admin.headers["Authorization"]}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)

    results = list(schema.get_all_operations())
    broken = [result.err() for result in results if isinstance(result, Err)]
    assert not broken, f"the OpenAPI document has invalid operations: {broken}"
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) >= 20
    for operation in operations:
        path_names = {parameter.name for parameter in operation.path_parameters}
        strategies = [
            operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
            operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
        ]
        if path_names and path_names <= set(real_ids):
            strategies.append(
                operation.as_strategy(path_parameters={name: real_ids[name] for name in path_names})
            )

        @settings(
            max_examples=EXAMPLES * len(strategies),
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=st.one_of(strategies))
        def check(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            check()
        except Exception as error:
            raise AssertionError(f"{operation.label}: {error}") from error
