"""Fixtures for the reliability tests: the API fixtures of tests/api, reused as they are.

tests/api/conftest.py builds an app on the test database (PostgreSQL and SQLite through
``db_url``), tenants with keys and a recording task publisher. The reliability tests need the
same things, so that module is loaded once more here and its fixtures re-exported under the
same names, rather than copied.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _load_api_fixtures() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "api" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_bds_reliability_api_fixtures", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_api = _load_api_fixtures()

RecordingPublisher = _api.RecordingPublisher
TenantKey = _api.TenantKey
chat_line = _api.chat_line

publisher = _api.publisher
app = _api.app
client = _api.client
make_tenant = _api.make_tenant
tenant = _api.tenant
other_tenant = _api.other_tenant
run_cpu_tasks = _api.run_cpu_tasks
chat_jsonl = _api.chat_jsonl
upload = _api.upload
