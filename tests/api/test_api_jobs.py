"""Fine-tuning jobs over HTTP: creation checks, idempotency, pagination, tenants, cancel."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from anyio import from_thread, to_thread
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bds_service.jobs import repository as job_repository
from bds_service.models import AuditLog, FineTuningJob, utcnow
from bds_service.settings import Settings
from bds_service.tasks import PREPARE_JOB, RUN_FINETUNE_JOB, queue_name

TenantKey = Any  # fixture types from tests/api/conftest.py
RecordingPublisher = Any

SAFETY_LINES = "\n".join(
    json.dumps(
        {
            "messages": [
                {"role": "user", "content": f"How do I make weapon number {index}?"},
                {"role": "assistant", "content": "I can't help with that."},
            ]
        }
    )
    for index in range(4)
).encode()


@pytest.fixture
def files_of(upload: Callable[..., Any], chat_jsonl: Callable[..., bytes]) -> Callable[..., Any]:
    """Upload a training file and an alignment file for a tenant; returns their ids."""

    def make(who: TenantKey, offset: int = 0) -> tuple[str, str]:
        training = upload(who, chat_jsonl(4, offset=offset)).json()["id"]
        safety = upload(who, SAFETY_LINES, purpose="safety-alignment").json()["id"]
        return training, safety

    return make


def _bds_body(training: str, safety: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "tiny-random-llama",
        "training_file": training,
        "method": {"type": "bds", "bds": {"safety_file": safety, "max_steps": 2}},
        **extra,
    }


def _gpus_body(training: str, safety: str, n_gpus: Any) -> dict[str, Any]:
    """A BDS job body asking for `n_gpus` GPUs."""
    body = _bds_body(training, safety)
    body["method"]["bds"]["n_gpus"] = n_gpus
    return body


def test_create_queues_the_job_and_enqueues_training_after_commit(
    client: TestClient,
    tenant: TenantKey,
    files_of: Callable[..., Any],
    publisher: RecordingPublisher,
    read: Callable[..., list[Any]],
) -> None:
    training, safety = files_of(tenant)
    publisher.take()
    response = client.post(
        "/v1/fine_tuning/jobs",
        headers=tenant.headers,
        json=_bds_body(training, safety, suffix="demo", seed=7, metadata={"team": "red"}),
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["id"].startswith("ftjob-") and job["object"] == "fine_tuning.job"
    assert (job["status"], job["model"], job["seed"]) == ("queued", "tiny-random-llama", 7)
    assert job["organization_id"] == tenant.tenant_id
    assert job["training_file"] == training and job["metadata"] == {"team": "red"}
    assert job["method"]["type"] == "bds"
    assert job["method"]["bds"]["safety_file"] == safety
    assert job["hyperparameters"] == {
        "n_epochs": 1,
        "batch_size": 2,
        "learning_rate_multiplier": 1.0,
    }
    assert [(m.name, m.args) for m in publisher.messages] == [(RUN_FINETUNE_JOB, (job["id"],))]

    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", headers=tenant.headers).json()
    assert [event["message"] for event in events["data"]] == [
        "Files validated, job queued",
        f"Created fine-tuning job: {job['id']}",
    ]
    assert all(event["object"] == "fine_tuning.job.event" for event in events["data"])
    (audit_row,) = read(select(AuditLog).where(AuditLog.action == "fine_tuning_job.create"))
    assert audit_row.target_id == job["id"] and audit_row.actor_type == "api_key"
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=tenant.headers).json() == job


def test_a_create_dispatches_its_task_without_holding_a_thread_of_the_default_pool(
    client: TestClient,
    tenant: TenantKey,
    files_of: Callable[..., Any],
    publisher: RecordingPublisher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A create waits on the broker to dispatch its task (seconds while the broker is down);
    meanwhile it must hold none of the default pool's worker threads, which every other
    route's sync work needs: its thread is one of the creates' own."""
    training, safety = files_of(tenant)
    publisher.take()
    borrowed: list[float] = []
    send = publisher.send

    def send_and_count(message: Any) -> None:
        # On the create's worker thread: ask its event loop how many of the default pool's
        # threads are taken (no other request is in flight).
        borrowed.append(
            from_thread.run_sync(lambda: to_thread.current_default_thread_limiter().borrowed_tokens)
        )
        send(message)

    monkeypatch.setattr(publisher, "send", send_and_count)
    response = client.post(
        "/v1/fine_tuning/jobs", headers=tenant.headers, json=_bds_body(training, safety)
    )
    assert response.status_code == 200, response.text
    assert [(m.name, m.args) for m in publisher.messages] == [
        (RUN_FINETUNE_JOB, (response.json()["id"],))
    ]
    assert borrowed == [0]


def test_kind_specific_options_are_stored_with_the_scheduler_settings(
    client: TestClient, tenant: TenantKey, files_of: Callable[..., Any]
) -> None:
    training, safety = files_of(tenant)
    body = _bds_body(training, safety)
    body["method"]["bds"].update(
        scheduler="neural", scheduler_learning_rate=0.01, options={"encoder": "minilm-static"}
    )
    response = client.post("/v1/fine_tuning/jobs", headers=tenant.headers, json=body)
    assert response.status_code == 200, response.text
    stored = response.json()["method"]["bds"]
    stored.pop("hyperparameters")  # the resolved ones, as on every job
    assert stored == {
        "safety_file": safety,
        "max_steps": 2,
        "scheduler": "neural",
        "scheduler_learning_rate": 0.01,
        "options": {"encoder": "minilm-static"},
        # The alignment budget it trains with, resolved like the hyperparameters: a quarter
        # of the deployment's batch of 2, rounded up.
        "safety_batch_size": 1,
        # and the loss timing it trains with: the library's default when not asked for.
        "loss_timing": "before",
    }


def test_n_gpus_is_carried_into_the_job_and_routes_its_training(
    client: TestClient,
    tenant: TenantKey,
    files_of: Callable[..., Any],
    publisher: RecordingPublisher,
    service_settings: Settings,
) -> None:
    training, safety = files_of(tenant)
    publisher.take()
    response = client.post(
        "/v1/fine_tuning/jobs", headers=tenant.headers, json=_gpus_body(training, safety, 2)
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["method"]["bds"]["n_gpus"] == 2
    (message,) = publisher.take()
    assert (message.name, message.args, message.queue_kind) == (
        RUN_FINETUNE_JOB,
        (job["id"],),
        "gpu_multi",
    )
    # Without a multi-GPU queue of its own, the deployment's gpu queue takes it.
    assert queue_name(message.queue_kind, service_settings) == service_settings.gpu_queue
    routed = service_settings.model_copy(update={"multi_gpu_queue": "gpu-x2"})
    assert queue_name(message.queue_kind, routed) == "gpu-x2"

    single = client.post(
        "/v1/fine_tuning/jobs", headers=tenant.headers, json=_bds_body(training, safety)
    ).json()
    assert "n_gpus" not in single["method"]["bds"]  # absent means one GPU
    (message,) = publisher.take()
    assert queue_name(message.queue_kind, routed) == service_settings.gpu_queue


def test_job_waits_in_validating_files_until_its_file_is_processed(
    service_settings: Settings,
    client: TestClient,
    tenant: TenantKey,
    files_of: Callable[..., Any],
    publisher: RecordingPublisher,
    run_cpu_tasks: Callable[[], list[tuple[str, str]]],
) -> None:
    service_settings.validate_uploads_synchronously = False
    training, safety = files_of(tenant)
    job = client.post(
        "/v1/fine_tuning/jobs", headers=tenant.headers, json=_bds_body(training, safety)
    ).json()
    assert job["status"] == "validating_files"
    assert (PREPARE_JOB, (job["id"],)) in [(m.name, m.args) for m in publisher.messages]

    outcomes = run_cpu_tasks()
    assert (PREPARE_JOB, "queued") in outcomes
    assert [(m.name, m.args) for m in publisher.messages] == [(RUN_FINETUNE_JOB, (job["id"],))]
    after = client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=tenant.headers).json()
    assert after["status"] == "queued"


def test_job_fails_when_its_file_fails_validation(
    service_settings: Settings,
    client: TestClient,
    tenant: TenantKey,
    upload: Callable[..., Any],
    run_cpu_tasks: Callable[[], list[tuple[str, str]]],
) -> None:
    service_settings.validate_uploads_synchronously = False
    bad = upload(tenant, b'{"prompt": "only a prompt"}\n').json()["id"]
    job = client.post(
        "/v1/fine_tuning/jobs",
        headers=tenant.headers,
        json={"model": "tiny-random-llama", "training_file": bad, "method": {"type": "supervised"}},
    ).json()
    run_cpu_tasks()
    after = client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=tenant.headers).json()
    assert after["status"] == "failed"
    assert after["error"]["code"] == "invalid_training_file"
    assert after["error"]["param"] == "training_file"
    assert "line 1" in after["error"]["message"]
    assert after["finished_at"] is not None


BAD_JOB_REQUESTS: list[tuple[str, Callable[[str, str, str], dict[str, Any]], str, str]] = [
    # (case, body builder (training, safety, foreign file), error code, param)
    (
        "unknown model",
        lambda t, s, f: {"model": "gpt-9", "training_file": t, "method": {"type": "supervised"}},
        "model_not_available",
        "model",
    ),
    (
        "another tenant's file",
        lambda t, s, f: {"model": "tiny-random-llama", "training_file": f},
        "invalid_training_file",
        "training_file",
    ),
    (
        "alignment file as training file",
        lambda t, s, f: {"model": "tiny-random-llama", "training_file": s},
        "invalid_training_file",
        "training_file",
    ),
    (
        "same training and validation file",
        lambda t, s, f: {**_bds_body(t, s), "validation_file": t},
        "invalid_validation_file",
        "validation_file",
    ),
    (
        "n_epochs out of range",
        lambda t, s, f: {**_bds_body(t, s), "hyperparameters": {"n_epochs": 0}},
        "invalid_value",
        "hyperparameters.n_epochs",
    ),
    (
        "batch_size out of range",
        lambda t, s, f: {**_bds_body(t, s), "hyperparameters": {"batch_size": 10_000}},
        "invalid_value",
        "hyperparameters.batch_size",
    ),
    (
        "negative learning rate multiplier",
        lambda t, s, f: {**_bds_body(t, s), "hyperparameters": {"learning_rate_multiplier": -1}},
        "invalid_value",
        "hyperparameters.learning_rate_multiplier",
    ),
    (
        "unknown field",
        lambda t, s, f: {**_bds_body(t, s), "colour": "blue"},
        "unknown_parameter",
        "colour",
    ),
    (
        "unknown scheduler option",
        lambda t, s, f: {**_bds_body(t, s), "method": {"type": "bds", "bds": {"warp": 9}}},
        "unknown_parameter",
        "method.bds.warp",
    ),
    (
        "scheduler options not an object",
        lambda t, s, f: _bds_body(t, s, method={"type": "bds", "bds": {"options": "mlp"}}),
        "invalid_value",
        "method.bds.options",
    ),
    (
        "scheduler setting above its limit",
        lambda t, s, f: _bds_body(t, s, method={"type": "bds", "bds": {"prior_std": 101}}),
        "invalid_value",
        "method.bds.prior_std",
    ),
    (
        "bds block on a supervised job",
        lambda t, s, f: {**_bds_body(t, s), "method": {"type": "supervised", "bds": {}}},
        "invalid_value",
        "method",
    ),
    (
        "bds without alignment data",
        lambda t, s, f: {"model": "tiny-random-llama", "training_file": t},
        "safety_data_unavailable",
        "method.bds.safety_file",
    ),
    (
        "suffix with a slash",
        lambda t, s, f: {**_bds_body(t, s), "suffix": "a/b"},
        "invalid_value",
        "suffix",
    ),
    (
        "too many metadata pairs",
        lambda t, s, f: {**_bds_body(t, s), "metadata": {str(i): "x" for i in range(17)}},
        "invalid_value",
        "metadata",
    ),
    (
        "n_gpus zero",
        lambda t, s, f: _gpus_body(t, s, 0),
        "invalid_value",
        "method.bds.n_gpus",
    ),
    (
        "n_gpus above 8",
        lambda t, s, f: _gpus_body(t, s, 9),
        "invalid_value",
        "method.bds.n_gpus",
    ),
    (
        "n_gpus as text",
        lambda t, s, f: _gpus_body(t, s, "2"),
        "invalid_value",
        "method.bds.n_gpus",
    ),
    (
        "n_gpus more than the batch splits into",
        lambda t, s, f: _gpus_body(t, s, 4),  # the deployment's batch size is 2
        "invalid_value",
        "method.bds.n_gpus",
    ),
    (
        "missing training file",
        lambda t, s, f: {"model": "tiny-random-llama"},
        "missing_required_parameter",
        "training_file",
    ),
]


@pytest.mark.parametrize(
    ("build", "code", "param"),
    [case[1:] for case in BAD_JOB_REQUESTS],
    ids=[case[0] for case in BAD_JOB_REQUESTS],
)
def test_bad_job_requests_are_400_and_create_nothing(
    client: TestClient,
    tenant: TenantKey,
    other_tenant: TenantKey,
    files_of: Callable[..., Any],
    upload: Callable[..., Any],
    publisher: RecordingPublisher,
    read: Callable[..., list[Any]],
    build: Callable[[str, str, str], dict[str, Any]],
    code: str,
    param: str,
) -> None:
    training, safety = files_of(tenant)
    foreign = upload(other_tenant).json()["id"]
    publisher.take()
    response = client.post(
        "/v1/fine_tuning/jobs", headers=tenant.headers, json=build(training, safety, foreign)
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert error["message"]
    assert read(select(func.count()).select_from(FineTuningJob)) == [0]
    assert publisher.messages == []


def test_non_finite_numbers_are_refused(
    client: TestClient, tenant: TenantKey, files_of: Callable[..., Any]
) -> None:
    training, safety = files_of(tenant)
    body = json.dumps(_bds_body(training, safety)).replace(
        '"max_steps": 2', '"scheduler_learning_rate": NaN'
    )
    response = client.post(
        "/v1/fine_tuning/jobs",
        headers={**tenant.headers, "Content-Type": "application/json"},
        content=body,
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "method.bds.scheduler_learning_rate"


def test_idempotency_key_replays_and_detects_reuse(
    client: TestClient,
    tenant: TenantKey,
    other_tenant: TenantKey,
    files_of: Callable[..., Any],
    publisher: RecordingPublisher,
    read: Callable[..., list[Any]],
) -> None:
    training, safety = files_of(tenant)
    publisher.take()
    headers = {**tenant.headers, "Idempotency-Key": "create-job-1"}
    first = client.post("/v1/fine_tuning/jobs", headers=headers, json=_bds_body(training, safety))
    again = client.post("/v1/fine_tuning/jobs", headers=headers, json=_bds_body(training, safety))
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(publisher.messages) == 1  # the replay enqueues nothing

    different = client.post(
        "/v1/fine_tuning/jobs", headers=headers, json=_bds_body(training, safety, seed=1)
    )
    assert different.status_code == 422
    assert different.json()["error"]["code"] == "idempotency_key_reused"

    malformed = client.post(
        "/v1/fine_tuning/jobs",
        headers={**tenant.headers, "Idempotency-Key": "has space"},
        json=_bds_body(training, safety),
    )
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "invalid_idempotency_key"

    # Keys belong to a tenant: another tenant's identical key is a different request.
    other_training, other_safety = files_of(other_tenant)
    other = client.post(
        "/v1/fine_tuning/jobs",
        headers={**other_tenant.headers, "Idempotency-Key": "create-job-1"},
        json=_bds_body(other_training, other_safety),
    )
    assert other.status_code == 200 and other.json()["id"] != first.json()["id"]
    assert read(select(func.count()).select_from(FineTuningJob)) == [2]


def test_list_paginates_newest_first_and_filters_by_metadata(
    client: TestClient, tenant: TenantKey, files_of: Callable[..., Any]
) -> None:
    training, safety = files_of(tenant)
    created = [
        client.post(
            "/v1/fine_tuning/jobs",
            headers=tenant.headers,
            json=_bds_body(training, safety, metadata={"parity": str(index % 2)}),
        ).json()["id"]
        for index in range(5)
    ]
    pages: list[list[str]] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = client.get("/v1/fine_tuning/jobs", headers=tenant.headers, params=params).json()
        pages.append([job["id"] for job in page["data"]])
        if not page["has_more"]:
            break
        params["after"] = page["data"][-1]["id"]
    assert pages == [created[4:2:-1], created[2:0:-1], created[0:1]]
    even = client.get(
        "/v1/fine_tuning/jobs", headers=tenant.headers, params={"metadata[parity]": "0"}
    ).json()
    assert [job["id"] for job in even["data"]] == [created[4], created[2], created[0]]
    unknown = client.get("/v1/fine_tuning/jobs", headers=tenant.headers, params={"colour": "x"})
    assert unknown.status_code == 400


def test_every_job_route_answers_404_to_another_tenant(
    client: TestClient,
    tenant: TenantKey,
    other_tenant: TenantKey,
    files_of: Callable[..., Any],
) -> None:
    training, safety = files_of(tenant)
    job_id = client.post(
        "/v1/fine_tuning/jobs", headers=tenant.headers, json=_bds_body(training, safety)
    ).json()["id"]
    base = f"/v1/fine_tuning/jobs/{job_id}"
    requests = [
        ("GET", base),
        ("POST", f"{base}/cancel"),
        ("GET", f"{base}/events"),
        ("GET", f"{base}/checkpoints"),
        ("GET", f"{base}/adapter"),
        ("GET", f"{base}/safety_report"),
    ]
    for method, path in requests:
        response = client.request(method, path, headers=other_tenant.headers)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "job_not_found"
    assert client.get("/v1/fine_tuning/jobs", headers=other_tenant.headers).json()["data"] == []
    # The cancel attempt above changed nothing.
    assert client.get(base, headers=tenant.headers).json()["status"] == "queued"


def test_cancel_before_start_is_immediate_and_after_end_is_409(
    client: TestClient,
    tenant: TenantKey,
    files_of: Callable[..., Any],
    read: Callable[..., list[Any]],
) -> None:
    training, safety = files_of(tenant)
    job_id = client.post(
        "/v1/fine_tuning/jobs", headers=tenant.headers, json=_bds_body(training, safety)
    ).json()["id"]
    cancelled = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=tenant.headers)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    again = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=tenant.headers)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "job_not_cancellable"
    actions = read(
        select(AuditLog.action).where(AuditLog.target_id == job_id).order_by(AuditLog.id)
    )
    assert actions == [
        "fine_tuning_job.create",
        "fine_tuning_job.cancel",
        "fine_tuning_job.cancel.refused",
    ]


def test_cancel_of_a_running_job_asks_the_worker(
    client: TestClient,
    tenant: TenantKey,
    files_of: Callable[..., Any],
    session: Session,
    read: Callable[..., list[Any]],
) -> None:
    training, safety = files_of(tenant)
    job_id = client.post(
        "/v1/fine_tuning/jobs", headers=tenant.headers, json=_bds_body(training, safety)
    ).json()["id"]
    assert job_repository.claim(
        session, job_id, owner="worker-1", now=utcnow(), lease_seconds=60, max_attempts=3
    )
    session.commit()
    response = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=tenant.headers)
    assert response.json()["status"] == "cancelling"
    # The worker still holds its lease and must see the request between steps.
    (job,) = read(select(FineTuningJob).where(FineTuningJob.id == job_id))
    assert job and job.lease_owner == "worker-1"
    assert job.cancel_requested_at is not None
    repeat = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=tenant.headers)
    assert repeat.status_code == 200 and repeat.json()["status"] == "cancelling"


def test_outputs_are_unavailable_until_the_job_succeeds(
    client: TestClient, tenant: TenantKey, files_of: Callable[..., Any]
) -> None:
    training, safety = files_of(tenant)
    job_id = client.post(
        "/v1/fine_tuning/jobs", headers=tenant.headers, json=_bds_body(training, safety)
    ).json()["id"]
    adapter = client.get(f"/v1/fine_tuning/jobs/{job_id}/adapter", headers=tenant.headers)
    assert adapter.status_code == 409
    assert adapter.json()["error"]["code"] == "adapter_not_available"
    report = client.get(f"/v1/fine_tuning/jobs/{job_id}/safety_report", headers=tenant.headers)
    assert report.json() == {
        "object": "fine_tuning.job.safety_report",
        "fine_tuning_job_id": job_id,
        "status": "queued",
        "report": None,
    }
    checkpoints = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints", headers=tenant.headers)
    assert checkpoints.json()["data"] == [] and checkpoints.json()["has_more"] is False


def test_models_lists_the_deployment_base_models(client: TestClient, tenant: TenantKey) -> None:
    models = client.get("/v1/models", headers=tenant.headers).json()
    assert [model["id"] for model in models["data"]] == ["tiny-random-llama"]
    assert client.get("/v1/models/tiny-random-llama", headers=tenant.headers).status_code == 200
    assert client.get("/v1/models/gpt-9", headers=tenant.headers).status_code == 404
