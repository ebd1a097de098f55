"""`make demo`'s script, run end to end on the tiny random model: every step, and a clean stop.

The demo starts the real embedded service (`bds serve`: SQLite database and broker, the API and
both Celery workers as subprocesses), so this test covers the same path a new user runs, with
the "tiny" profile's sizes (a few examples, two training steps).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from rich.console import Console

from bds_service.settings import Settings

DEMO_PATH = Path(__file__).resolve().parents[1] / "scripts" / "demo.py"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo() -> ModuleType:
    """scripts/demo.py imported as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bds_demo_script", DEMO_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No service settings from the developer's shell (bds_core's BDS_CACHE_DIR stays)."""
    for field in Settings.model_fields:
        monkeypatch.delenv(f"BDS_{field.upper()}", raising=False)
    yield


def _record_services(demo: ModuleType, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Collect every EmbeddedService the demo starts, to check how it was stopped."""
    services: list[Any] = []
    original_start = demo.EmbeddedService.start

    def recording_start(self: Any) -> None:
        services.append(self)
        original_start(self)

    monkeypatch.setattr(demo.EmbeddedService, "start", recording_start)
    return services


def test_demo_runs_every_step_and_stops_the_service(
    demo: ModuleType, tmp_path: Path, clean_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = _record_services(demo, monkeypatch)
    output = io.StringIO()
    summary = demo.run_demo(
        demo.PROFILES["tiny"], tmp_path / "demo", console=Console(file=output, width=120)
    )
    text = output.getvalue()

    # What a user reads: the safety report step (a report or the reason there is none),
    # progress lines with loss, ETA and weights, the evaluation and the adapter's place.
    assert "Dataset safety report" in text
    assert "step 2/2" in text and "ETA" in text and "weights mean" in text
    assert "Checkpoint saved at step 1" in text
    assert "harmful score before -> after" in text and "fine-tune accuracy" in text
    for key in ("hs_before", "hs_after", "fa", "mean_weight_harmful", "mean_weight_benign"):
        assert isinstance(summary[key], float), (key, text)
    adapter = Path(summary["adapter"])
    assert (adapter / "adapter_config.json").is_file()

    # It ends by talking to the fine-tuned model through chat completions.
    assert "Use the fine-tuned model" in text and "harmful prompt:" in text
    assert summary["chat_model"].startswith("ft:tiny-random-llama:")
    assert summary["chat_harmful_prompt"] in text and summary["chat_task_prompt"] in text
    for key in ("chat_harmful_answer", "chat_harmful_answer_base", "chat_task_answer"):
        assert isinstance(summary[key], str), (key, text)
    assert (adapter / "adapter_model.safetensors").is_file()

    # The service was stopped cleanly: serve exited 0 and nothing of its group is left.
    (service,) = services
    assert service.process.returncode == 0, service.log_tail()
    assert service.group_is_gone()


def test_a_failed_step_reports_the_error_body_and_leaves_no_process(
    demo: ModuleType, tmp_path: Path, clean_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A model this deployment does not serve: the job request is refused with a 400.
    profile = dataclasses.replace(demo.PROFILES["tiny"], model="no-such-model")
    monkeypatch.setattr(demo.Demo, "pull_model", lambda self: None)  # nothing to pull
    services = _record_services(demo, monkeypatch)
    output = io.StringIO()
    with pytest.raises(demo.DemoError) as failure:
        demo.run_demo(profile, tmp_path / "demo", console=Console(file=output, width=120))

    message = str(failure.value)
    assert "answered 400" in message and "model_not_available" in message
    assert "no-such-model" in message  # the server's error body, verbatim
    assert "service stopped" in output.getvalue()
    (service,) = services
    assert service.process.returncode is not None
    assert service.group_is_gone()
