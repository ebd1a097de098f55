"""The deployment files agree with the code: compose services, commands and settings names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr, ValidationError

from bds_service.cli import _parse_queue_kinds, admin_app, service_app
from bds_service.settings import DEVELOPMENT_SECRET, Settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return loaded


def _setting_names() -> set[str]:
    return {f"BDS_{name.upper()}" for name in Settings.model_fields}


def test_compose_has_the_production_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {
        "postgres",
        "redis",
        "migrate",
        "api",
        "worker-cpu",
        "worker-gpu",
        "worker-gpu-multi",
        "inference",
        "vllm",
    }
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker-cpu", "worker-gpu"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name
    (device,) = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "cu" in services["worker-gpu"]["build"]["args"]["TORCH_INDEX_URL"]


def test_compose_shows_a_multi_gpu_worker_that_starts_only_on_request(
    compose: dict[str, Any],
) -> None:
    """`docker compose up` stays as it was; `--profile multi-gpu` adds a worker that reserves
    several GPUs and takes the multi-GPU queue (and the gpu queue)."""
    multi = compose["services"]["worker-gpu-multi"]
    assert multi["profiles"] == ["multi-gpu"]
    vllm = compose["services"]["vllm"]
    assert all(
        "profiles" not in service or service in (multi, vllm)
        for service in compose["services"].values()
    )
    (device,) = multi["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] > 1
    assert multi["command"][3:5] == ["worker", "--queues"]
    assert _parse_queue_kinds(multi["command"][5]) == ["gpu_multi", "gpu"]
    assert multi["command"][6:8] == ["--concurrency", "1"]
    assert multi["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert compose["x-bds-environment"]["BDS_MULTI_GPU_QUEUE"] == "${BDS_MULTI_GPU_QUEUE:-}"


def test_compose_runs_the_inference_worker_and_offers_vllm_with_runtime_lora_loading(
    compose: dict[str, Any],
) -> None:
    """The API forwards chat completions to the local inference worker by default; the vllm
    profile starts vLLM with LoRA enabled and the artifact volume where the adapters are."""
    services, environment = compose["services"], compose["x-bds-environment"]
    inference = services["inference"]
    assert inference["command"][:3] == ["python", "-m", "worker.inference"]
    port = inference["command"][inference["command"].index("--port") + 1]
    assert environment["BDS_INFERENCE_URL"] == f"${{BDS_INFERENCE_URL:-http://inference:{port}}}"
    assert environment["BDS_INFERENCE_BACKEND"] == "${BDS_INFERENCE_BACKEND:-local}"
    vllm = services["vllm"]
    assert vllm["profiles"] == ["vllm"]
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "--enable-lora" in vllm["command"]
    served = next(arg for arg in vllm["command"] if arg.startswith("--served-model-name="))
    assert (
        "smollm2-135m-instruct" in served
        and "smollm2-135m-instruct" in environment["BDS_BASE_MODELS"]
    )
    # Adapters are registered by their storage path: vLLM must see the volume at that path.
    storage = environment["BDS_STORAGE_DIR"]
    (artifacts,) = [volume for volume in vllm["volumes"] if volume.startswith("artifacts:")]
    assert storage.startswith(artifacts.split(":")[1] + "/")


def test_compose_commands_are_commands_of_the_service_cli(compose: dict[str, Any]) -> None:
    known = {
        command.name or command.callback.__name__ for command in service_app.registered_commands
    }
    assert {"serve", "worker", "migrate"} <= known
    assert {"create-tenant", "create-key"} <= {c.name for c in admin_app.registered_commands}
    services = compose["services"]
    assert services["worker-gpu"]["command"][3:6] == ["worker", "--queues", "gpu"]
    assert services["worker-cpu"]["command"][3:6] == ["worker", "--queues", "cpu"]
    assert services["worker-cpu"]["command"].count("--beat") == 1  # one reaper per site
    assert "--beat" not in services["worker-gpu"]["command"]
    assert services["migrate"]["command"][3] == "migrate"
    assert services["api"]["command"][2:4] == ["uvicorn", "api.app:app"]


def test_the_api_trusts_forwarded_addresses_only_from_configured_proxies(
    compose: dict[str, Any],
) -> None:
    # The failed-authentication limit counts per client address; uvicorn takes that address
    # from X-Forwarded-For only for the proxies in FORWARDED_ALLOW_IPS.
    api_environment = compose["services"]["api"]["environment"]
    assert api_environment["FORWARDED_ALLOW_IPS"] == "${FORWARDED_ALLOW_IPS:-127.0.0.1,::1}"
    shared = compose["x-bds-environment"]
    assert {k: v for k, v in api_environment.items() if k != "FORWARDED_ALLOW_IPS"} == shared


def test_every_bds_variable_in_the_deployment_files_is_a_setting(
    compose: dict[str, Any],
) -> None:
    environment = compose["x-bds-environment"]
    unknown = set(environment) - _setting_names()
    assert not unknown, f"compose sets variables no setting reads: {sorted(unknown)}"
    dockerfile = (REPO / "Dockerfile").read_text()
    # BDS_CACHE_DIR belongs to bds_core's model cache, not to the service settings.
    mentioned = set(re.findall(r"\b(BDS_[A-Z_]+)=", dockerfile)) - {"BDS_CACHE_DIR"}
    assert mentioned <= _setting_names()
    assert environment["BDS_ENVIRONMENT"] == "production"
    assert environment["BDS_API_KEY_SECRET"].startswith("${BDS_API_KEY_SECRET:?")


def test_production_refuses_the_development_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _setting_names():
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValidationError, match="BDS_API_KEY_SECRET"):
        Settings(environment="production")
    with pytest.raises(ValidationError, match="at least 16"):
        Settings(api_key_secret=SecretStr("short"))
    assert Settings(environment="production", api_key_secret=SecretStr("x" * 32))
    assert Settings().api_key_secret.get_secret_value() == DEVELOPMENT_SECRET


def test_every_worker_has_a_liveness_check_and_is_restarted_when_it_exits(
    compose: dict[str, Any],
) -> None:
    """A stalled worker exits with status 1 (worker.liveness); the restart policy starts it
    again, and the health check reads the liveness file the worker writes."""
    workers = {name: s for name, s in compose["services"].items() if name.startswith("worker")}
    assert set(workers) == {"worker-cpu", "worker-gpu", "worker-gpu-multi"}
    for name, service in workers.items():
        assert service["restart"] == "unless-stopped", name
        liveness_file = service["environment"]["BDS_WORKER_LIVENESS_FILE"]
        test = service["healthcheck"]["test"]
        assert test[1:] == [
            "python",
            "-m",
            "bds_service.cli",
            "worker-alive",
            "--file",
            liveness_file,
        ]
        assert set(service["environment"]) - {"BDS_WORKER_LIVENESS_FILE"} <= _setting_names()


def test_the_api_runs_several_processes_sharing_their_rate_limits(
    compose: dict[str, Any],
) -> None:
    command = compose["services"]["api"]["command"]
    assert command[command.index("--workers") + 1] == "${BDS_API_WORKERS:-4}"
    shared = compose["x-bds-environment"]
    assert shared["BDS_RATE_LIMIT_REDIS_URL"] != shared["BDS_BROKER_URL"]
