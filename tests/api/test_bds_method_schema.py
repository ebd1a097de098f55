"""``method.bds`` is built from SchedulerSettings: same names, types, defaults, limits, choices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from api.schemas.jobs import NOT_OFFERED
from bds_core.schedulers import scheduler_setting_fields
from bds_service.jobs.runner import JobPlan, build_train_config
from bds_service.settings import Settings

JSON_TYPES = {str: "string", float: "number", int: "integer", bool: "boolean", dict: "object"}
JSON_LIMITS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}

# The scheduler members of method.bds before they were generated: they stay (a new setting
# is added beside them).
PUBLISHED = {
    "scheduler", "transform", "update", "reference", "loss_timing", "scheduler_learning_rate",
    "entropy_weight", "sgld", "sgld_temperature", "sgld_burn_in", "prior_std",
}  # fmt: skip


def _method_bds_properties(client: TestClient) -> dict[str, Any]:
    schema = client.get("/openapi.json").json()
    properties: dict[str, Any] = schema["components"]["schemas"]["BdsMethodIn"]["properties"]
    return properties


def test_every_offered_setting_has_its_type_default_limits_choices_and_help(
    client: TestClient,
) -> None:
    properties = _method_bds_properties(client)
    for setting in scheduler_setting_fields():
        if setting.name in NOT_OFFERED:
            assert setting.flat_name not in properties
            continue
        member = properties[setting.flat_name]
        if setting.name == "kind":  # the kind is always stored, its default included
            value, default = member, setting.default
        else:  # absent: the library's default applies when the job trains
            value, null = member["anyOf"]
            assert null == {"type": "null"}
            default = None
        assert member.get("default") == default, setting.name  # FastAPI leaves out a null
        assert member["description"] == setting.help, setting.name
        assert value["type"] == JSON_TYPES[setting.value_type], setting.name
        assert value.get("enum") == (list(setting.choices) if setting.choices else None)
        limits = {JSON_LIMITS[bound]: getattr(setting, bound) for bound in JSON_LIMITS}
        for key, limit in limits.items():
            assert value.get(key) == limit, (setting.name, key)


def test_the_published_members_stay_and_options_is_added(client: TestClient) -> None:
    properties = _method_bds_properties(client)
    offered = {s.flat_name for s in scheduler_setting_fields() if s.name not in NOT_OFFERED}
    assert PUBLISHED | {"options"} <= offered <= set(properties)
    assert properties["scheduler"]["enum"] == ["scalar", "neural"]


def test_a_stored_method_bds_becomes_the_scheduler_settings(
    tmp_path: Path, service_settings: Settings
) -> None:
    stored = {
        "safety_file": "file-x",
        "max_steps": 2,
        "scheduler": "neural",
        "scheduler_learning_rate": 0.02,
        "sgld": True,
        "options": {"encoder": "minilm-static", "head": "linear"},
    }
    plan = JobPlan(
        job_id="ftjob-1",
        tenant_id="t",
        tenant_name="t",
        model="tiny-random-llama",
        method_type="bds",
        hyperparameters={"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 1.0},
        bds=stored,
        seed=0,
        attempt=1,
        train_file=tmp_path / "train.jsonl",
        validation_file=None,
        safety_file=tmp_path / "safety.jsonl",
        run_dir=tmp_path / "run",
        run_key="runs/ftjob-1",
        fine_tuned_model="ft:tiny",
    )
    scheduler = build_train_config(plan, service_settings).scheduler
    assert (scheduler.kind, scheduler.learning_rate, scheduler.sgld) == ("neural", 0.02, True)
    assert scheduler.options == {"encoder": "minilm-static", "head": "linear"}
    assert scheduler.reference == "initial"  # not given: the library's default
