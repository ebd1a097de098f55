"""docs/service.md says what a new user needs, and its examples work as written.

The training-data examples go through the real validator, the non-docker production steps name
every setting a multi-host deployment needs, and the safety-report snippet of the curl flow is
run with bash, curl and jq against a server whose report is still pending at first, as it is
right after an upload.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from bds_core.data.validation import FORMATS, validate_file

SERVICE_DOC = Path(__file__).resolve().parents[1] / "docs" / "service.md"


def _section(title: str) -> str:
    text = SERVICE_DOC.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_training_data_section_has_one_valid_example_per_format_and_the_limits(
    tmp_path: Path,
) -> None:
    section = _section("Training data")
    blocks = re.findall(r"```json\n(.*?)\n```", section, re.S)
    formats = []
    for number, block in enumerate(blocks):
        path = tmp_path / f"example-{number}.jsonl"
        path.write_text(block + "\n", encoding="utf-8")
        examples, report = validate_file(path)
        assert report.ok and len(examples) == 1, (block, report.to_dict()["issues"])
        formats.append(report.format)
    assert sorted(formats) == sorted(FORMATS)
    for setting in (
        "BDS_MAX_UPLOAD_BYTES",
        "BDS_MAX_EXAMPLES",
        "BDS_MAX_LINE_BYTES",
        "BDS_MAX_MESSAGE_CHARS",
        "BDS_MAX_LENGTH",
    ):
        assert setting in section, setting
    assert "passes over the training file" in section


def test_production_steps_without_docker_name_every_shared_setting() -> None:
    section = _section("Production without docker, step by step")
    for setting in (
        "BDS_ENVIRONMENT=production",
        "BDS_API_KEY_SECRET",
        "BDS_DATABASE_URL",
        "BDS_BROKER_URL",
        "BDS_STORAGE_DIR",
        "BDS_SAFETY_ALIGNMENT_FILE",
        "BDS_EVAL_HARMFUL_PROMPTS",
    ):
        assert setting in section, setting
    for command in ("bds migrate", "bds serve --no-workers", "--beat", "--queues gpu"):
        assert command in section, command
    words = " ".join(section.split())
    assert "one filesystem" in words and "mounted at the same path on every host" in words


class _PendingThenReady(BaseHTTPRequestHandler):
    """A safety report that is pending, then running, then succeeded."""

    answers: ClassVar[tuple[str, ...]] = ("pending", "running", "succeeded")
    calls: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        index = min(len(self.calls), len(self.answers) - 1)
        self.calls.append(self.path)
        status = self.answers[index]
        report = (
            {"harmful_share_estimate": 0.25, "n_flagged": 1, "top_flagged": []}
            if status == "succeeded"
            else None
        )
        body = json.dumps({"status": status, "report": report}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def report_server() -> Iterator[str]:
    _PendingThenReady.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PendingThenReady)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(timeout=10)


def test_the_safety_report_example_waits_for_the_report(report_server: str) -> None:
    if not all(shutil.which(tool) for tool in ("bash", "curl", "jq")):
        pytest.skip("needs bash, curl and jq")
    flow = _section("The flow with curl")
    start = flow.index("# The dataset's safety report")
    end = flow.index("# A BDS job.")
    snippet = flow[start:end].replace("sleep 2", "sleep 0.1")
    script = f'BASE={report_server}\nAUTH="Authorization: Bearer test"\nTRAIN=file-x\n{snippet}'
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "safety report: succeeded" in done.stdout
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    assert summary == {"status": "succeeded", "share": 0.25, "flagged": 1, "top": []}
    # Asked three times while it was pending or running, then once more to read it.
    assert _PendingThenReady.calls == ["/v1/files/file-x/safety_report"] * 4
