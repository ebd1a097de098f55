"""Bad input gets a clear 4xx and leaves nothing behind: every case of the reliability promise.

``BAD_INPUT_CASES`` maps each case that docs/reliability.md promises to the tests that show
it. Cases the API tests already cover completely (status, code, message, line or field, and
nothing stored) point at those tests; the others are rows of the two tables below, each
checked for its status, ``error.code``, a message, the line and field where they apply, and
that no file, job, audit row, idempotency key, stored byte or task message was left behind.
A property test then uploads arbitrary bytes: never a 5xx, and a refusal stores nothing.
The validator's own property tests are in tests/bds_core/data/test_data_validation_properties.py.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from bds_service.models import AuditLog, File, FineTuningJob, IdempotencyKey
from bds_service.settings import Settings

TenantKey = Any  # fixture types from tests/api/conftest.py
RecordingPublisher = Any

REPO_ROOT = Path(__file__).resolve().parents[2]
UPLOAD_TEST = "tests/reliability/test_bad_input.py::test_bad_uploads_are_refused_with_code_line_and_field_and_store_nothing"
JOB_TEST = (
    "tests/reliability/test_bad_input.py::test_bad_job_requests_are_refused_and_store_nothing"
)
API_UPLOADS = "tests/api/test_api_files.py::test_bad_uploads_are_refused_and_nothing_is_stored"
API_JOBS = "tests/api/test_api_jobs.py::test_bad_job_requests_are_400_and_create_nothing"
API_IDEMPOTENCY = "tests/api/test_api_jobs.py::test_idempotency_key_replays_and_detects_reuse"
HOSTILE = "tests/reliability/test_hostile_requests.py"

# Every case of the promise (docs/reliability.md, "Bad input") -> the tests that show it.
BAD_INPUT_CASES: dict[str, list[str]] = {
    "empty file": [f"{API_UPLOADS}[empty file]"],
    "not UTF-8": [f"{UPLOAD_TEST}[not UTF-8]"],
    "a line that is not JSON": [f"{UPLOAD_TEST}[a line that is not JSON]"],
    "JSON that is not an object": [f"{UPLOAD_TEST}[JSON that is not an object]"],
    "missing fields": [f"{UPLOAD_TEST}[missing field]"],
    "unknown fields": [f"{UPLOAD_TEST}[unknown field]", f"{API_JOBS}[unknown field]"],
    "wrong roles": [f"{UPLOAD_TEST}[wrong role]"],
    "an empty conversation": [f"{UPLOAD_TEST}[an empty conversation]"],
    "a line over the limit": [f"{UPLOAD_TEST}[a line over the limit]"],
    "a file over the limit": [f"{API_UPLOADS}[too large]"],
    "too many examples": [f"{UPLOAD_TEST}[too many examples]"],
    "NaN or infinite numbers": [
        f"{UPLOAD_TEST}[NaN]",
        f"{UPLOAD_TEST}[Infinity]",
        f"{JOB_TEST}[infinite number]",
    ],
    "a client filename with path parts": [f"{API_UPLOADS}[filename with path]"],
    "an unknown base model": [f"{API_JOBS}[unknown model]"],
    "hyperparameters out of range": [
        f"{API_JOBS}[n_epochs out of range]",
        f"{API_JOBS}[batch_size out of range]",
        f"{API_JOBS}[negative learning rate multiplier]",
    ],
    "a training file of another tenant": [f"{API_JOBS}[another tenant's file]"],
    "a training file of the wrong purpose": [f"{API_JOBS}[alignment file as training file]"],
    "a malformed Idempotency-Key": [f"{JOB_TEST}[malformed Idempotency-Key]", API_IDEMPOTENCY],
    "a NUL character in a request": [
        f"{JOB_TEST}[NUL character in a field]",
        "tests/reliability/test_nul_characters.py::test_nul_in_a_path_parameter",
        "tests/reliability/test_nul_characters.py::test_nul_in_a_query_parameter",
        "tests/reliability/test_nul_characters.py::test_nul_in_a_json_body_names_the_field_and_stores_nothing",
        "tests/reliability/test_nul_characters.py::test_nul_in_a_form_field",
    ],
    "JSON nested too deeply": [
        f"{UPLOAD_TEST}[nested too deeply]",
        f"{HOSTILE}::test_json_that_could_mean_two_things_is_refused[nested 100 deep]",
    ],
    "a request body over the cap": [
        f"{HOSTILE}::test_a_body_over_the_cap_is_refused_with_413_before_authentication"
    ],
    "a JSON member sent twice": [
        f"{HOSTILE}::test_json_that_could_mean_two_things_is_refused[repeated member]",
        f"{HOSTILE}::test_json_that_could_mean_two_things_is_refused[repeated nested member]",
    ],
    "a job field of the wrong type": [
        f"{HOSTILE}::test_job_fields_of_the_wrong_type_are_refused_not_coerced[string epochs]",
        f"{HOSTILE}::test_job_fields_of_the_wrong_type_are_refused_not_coerced[string sgld]",
        f"{HOSTILE}::test_job_fields_of_the_wrong_type_are_refused_not_coerced[denormal rate]",
    ],
    "a filename with control or invisible characters": [
        f"{HOSTILE}::test_file_names_with_invisible_or_control_characters_are_refused",
        f"{HOSTILE}::test_broken_multipart_bodies_are_refused_and_store_nothing",
    ],
    "a multipart body cut short, or a form field sent twice": [
        f"{HOSTILE}::test_broken_multipart_bodies_are_refused_and_store_nothing"
    ],
    "an Idempotency-Key reused with a different body": [
        f"{JOB_TEST}[Idempotency-Key reused with a different body]",
        API_IDEMPOTENCY,
    ],
}


@pytest.fixture
def db_url(pg_url: str) -> str:
    """PostgreSQL only (the API tests run these paths on SQLite as well)."""
    return pg_url


def _chat(*turns: tuple[str, str], **extra: Any) -> bytes:
    record: dict[str, Any] = {"messages": [{"role": r, "content": c} for r, c in turns]}
    record.update(extra)
    return json.dumps(record).encode()


GOOD = _chat(("user", "What is 2 plus 2?"), ("assistant", "4"))

# (case, file content, settings overrides, status, error.code, line, field)
BAD_UPLOADS: list[tuple[str, bytes, dict[str, Any], int, str, int | None, str | None]] = [
    (
        "not UTF-8",
        GOOD + b'\n{"prompt": "caf\xe9", "completion": "x"}\n',
        {},
        400,
        "invalid_utf8",
        2,
        None,
    ),
    ("a line that is not JSON", GOOD + b"\nthis is not json\n", {}, 400, "invalid_json", 2, None),
    ("JSON that is not an object", b"[1, 2, 3]\n", {}, 400, "not_an_object", 1, None),
    ("missing field", b'{"prompt": "a"}\n', {}, 400, "missing_field", 1, "completion"),
    (
        "unknown field",
        _chat(("user", "a"), ("assistant", "b"), temperature=0.5),
        {},
        400,
        "unknown_field",
        1,
        "temperature",
    ),
    (
        "wrong role",
        _chat(("wizard", "hi"), ("assistant", "x")),
        {},
        400,
        "invalid_role",
        1,
        "messages[0].role",
    ),
    (
        "an empty conversation",
        b'{"messages": []}\n',
        {},
        400,
        "empty_conversation",
        1,
        "messages",
    ),
    (
        "a line over the limit",
        GOOD + b"\n" + _chat(("user", "x" * 300), ("assistant", "y")) + b"\n",
        {"max_line_bytes": 200},
        400,
        "line_too_long",
        2,
        None,
    ),
    (
        "too many examples",
        b"\n".join([GOOD, GOOD, GOOD]) + b"\n",
        {"max_examples": 2},
        400,
        "too_many_examples",
        3,
        None,
    ),
    (
        "nested too deeply",
        b'{"prompt": "a", "completion": "b", "metadata": {"x": '
        + b"[" * 950
        + b"]" * 950
        + b"}}\n",
        {},
        400,
        "invalid_json",
        1,
        None,
    ),
    (
        "NaN",
        b'{"prompt": "a", "completion": "b", "metadata": {"score": NaN}}\n',
        {},
        400,
        "non_finite_number",
        1,
        None,
    ),
    (
        "Infinity",
        GOOD + b'\n{"prompt": "a", "completion": "b", "metadata": {"score": -Infinity}}\n',
        {},
        400,
        "non_finite_number",
        2,
        None,
    ),
]


def _leftovers(read: Callable[..., list[Any]], settings: Settings) -> dict[str, Any]:
    """Everything a request could have left behind."""
    storage = settings.resolved_storage_dir
    return {
        "files": read(select(func.count()).select_from(File)),
        "jobs": read(select(func.count()).select_from(FineTuningJob)),
        "audit rows": read(select(func.count()).select_from(AuditLog)),
        "idempotency keys": read(select(func.count()).select_from(IdempotencyKey)),
        "stored objects": sorted(str(p) for p in storage.rglob("*") if p.is_file())
        if storage.exists()
        else [],
    }


@pytest.mark.parametrize(
    ("content", "overrides", "status", "code", "line", "field"),
    [case[1:] for case in BAD_UPLOADS],
    ids=[case[0] for case in BAD_UPLOADS],
)
def test_bad_uploads_are_refused_with_code_line_and_field_and_store_nothing(
    service_settings: Settings,
    tenant: TenantKey,
    upload: Callable[..., Any],
    read: Callable[..., list[Any]],
    publisher: RecordingPublisher,
    content: bytes,
    overrides: dict[str, Any],
    status: int,
    code: str,
    line: int | None,
    field: str | None,
) -> None:
    for name, value in overrides.items():
        setattr(service_settings, name, value)
    before = _leftovers(read, service_settings)
    response = upload(tenant, content)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (code, "file", "invalid_request_error")
    assert (error["line"], error["field"]) == (line, field)
    assert f"line {line}" in error["message"]
    assert error["validation_report"]["ok"] is False
    assert _leftovers(read, service_settings) == before
    assert publisher.messages == []


def _job_body(training: str) -> dict[str, Any]:
    return {
        "model": "tiny-random-llama",
        "training_file": training,
        "method": {"type": "supervised"},
    }


# (case, headers, raw JSON body with {training} for the file id, status, error.code, param)
BAD_JOB_REQUESTS: list[tuple[str, dict[str, str], str, int, str, str]] = [
    (
        "infinite number",
        {},
        '{"model": "tiny-random-llama", "training_file": "{training}", "method": {"type": "bds",'
        ' "bds": {"scheduler_learning_rate": Infinity}}}',
        400,
        "invalid_value",
        "method.bds.scheduler_learning_rate",
    ),
    (
        "NUL character in a field",
        {},
        '{"model": "tiny-random-llama", "training_file": "{training}", "suffix": "a\\u0000b"}',
        400,
        "invalid_value",
        "suffix",
    ),
    (
        "malformed Idempotency-Key",
        {"Idempotency-Key": "two words"},
        json.dumps(_job_body("{training}")),
        400,
        "invalid_idempotency_key",
        "Idempotency-Key",
    ),
    (
        "Idempotency-Key reused with a different body",
        {"Idempotency-Key": "used-once"},
        json.dumps({**_job_body("{training}"), "seed": 99}),
        422,
        "idempotency_key_reused",
        "Idempotency-Key",
    ),
]


@pytest.mark.parametrize(
    ("headers", "body", "status", "code", "param"),
    [case[1:] for case in BAD_JOB_REQUESTS],
    ids=[case[0] for case in BAD_JOB_REQUESTS],
)
def test_bad_job_requests_are_refused_and_store_nothing(
    client: TestClient,
    service_settings: Settings,
    tenant: TenantKey,
    upload: Callable[..., Any],
    read: Callable[..., list[Any]],
    publisher: RecordingPublisher,
    headers: dict[str, str],
    body: str,
    status: int,
    code: str,
    param: str,
) -> None:
    training = upload(tenant).json()["id"]
    first = client.post(
        "/v1/fine_tuning/jobs",
        headers={**tenant.headers, "Idempotency-Key": "used-once"},
        json=_job_body(training),
    )
    assert first.status_code == 200, first.text
    publisher.take()
    before = _leftovers(read, service_settings)
    response = client.post(
        "/v1/fine_tuning/jobs",
        headers={**tenant.headers, **headers, "Content-Type": "application/json"},
        content=body.replace("{training}", training),
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert error["message"]
    assert _leftovers(read, service_settings) == before
    assert publisher.messages == []


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    content=st.one_of(
        st.binary(max_size=2048),
        st.lists(
            st.one_of(
                st.binary(max_size=200),
                st.sampled_from(
                    [GOOD, b"{}", b"[]", b"null", b'{"messages": []}', b"NaN", b'{"prompt": 1}']
                ),
            ),
            max_size=8,
        ).map(b"\n".join),
    )
)
def test_arbitrary_uploads_never_fail_with_5xx_and_refusals_store_nothing(
    service_settings: Settings,
    tenant: TenantKey,
    upload: Callable[..., Any],
    read: Callable[..., list[Any]],
    content: bytes,
) -> None:
    before = _leftovers(read, service_settings)
    response = upload(tenant, content)
    assert response.status_code in (200, 400, 413), response.text
    if response.status_code != 200:
        assert response.json()["error"]["code"]
        assert _leftovers(read, service_settings) == before


# ---- the case list is complete and every test it names exists ------------------------


def _test_exists(node_id: str) -> bool:
    """Whether ``path::function[param id]`` names a test function and one of its ids."""
    match = re.fullmatch(r"(?P<path>[^:]+)::(?P<function>\w+)(\[(?P<param>.+)\])?", node_id)
    assert match, node_id
    source_path = REPO_ROOT / match["path"]
    if not source_path.is_file():
        return False
    source = source_path.read_text()
    functions = {
        node.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)
    }
    if match["function"] not in functions:
        return False
    return match["param"] is None or json.dumps(match["param"]) in source


def test_every_promised_case_has_a_test_that_exists() -> None:
    missing = [
        (case, node_id)
        for case, node_ids in BAD_INPUT_CASES.items()
        for node_id in node_ids
        if not _test_exists(node_id)
    ]
    assert not missing, f"cases pointing at tests that do not exist: {missing}"
    assert all(BAD_INPUT_CASES.values())


def test_the_reliability_notes_list_every_case() -> None:
    notes = (REPO_ROOT / "docs" / "reliability.md").read_text()
    absent = [case for case in BAD_INPUT_CASES if f"| {case} |" not in notes]
    assert not absent, f"docs/reliability.md does not list: {absent}"
