"""A training message for a job that no worker may claim costs one read, not a training run.

The dispatch sweep sends copies, cancelled jobs leave their message behind: each copy reaches
the gpu worker. Such a message must return at once, without importing the training stack
(which took the gpu worker about 8 s per message).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from bds_service.models import FineTuningJob, utcnow
from bds_service.settings import Settings

PROBE = """
import json, sys
from worker import tasks
outcomes = [tasks.run_finetune_job.run(job_id) for job_id in sys.argv[1:]]
print(json.dumps({"outcomes": outcomes, "runner": "bds_service.jobs.runner" in sys.modules}))
"""


@pytest.fixture
def db_url(pg_url: str) -> str:
    return pg_url


def test_messages_of_jobs_nobody_may_claim_return_without_loading_the_trainer(
    session: Session,
    service_settings: Settings,
    tmp_path: Path,
    add_tenant_with_file: Callable[..., str],
) -> None:
    tenant_id = add_tenant_with_file(session, "file-t", "t.jsonl")
    later = utcnow().replace(year=utcnow().year + 1)
    for job_id, status, values in (
        ("ftjob-cancelled", "cancelled", {}),
        ("ftjob-succeeded", "succeeded", {}),
        ("ftjob-held", "running", {"lease_owner": "alive", "lease_expires_at": later}),
    ):
        session.add(
            FineTuningJob(
                id=job_id,
                tenant_id=tenant_id,
                model="tiny-random-llama",
                training_file_id="file-t",
                status=status,
                hyperparameters={},
                method={"type": "supervised"},
                seed=0,
                **values,
            )
        )
    session.commit()
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BDS_")},
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "BDS_DATABASE_URL": service_settings.resolved_database_url,
        "BDS_BROKER_URL": service_settings.resolved_broker_url,
        "BDS_DATA_DIR": str(tmp_path),
        "BDS_API_KEY_SECRET": service_settings.api_key_secret.get_secret_value(),
    }
    jobs = ["ftjob-cancelled", "ftjob-succeeded", "ftjob-held", "ftjob-missing"]
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *jobs],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer == {"outcomes": ["cancelled", "succeeded", "held", "missing"], "runner": False}
