"""The JSON schema of the safety report, and validation of report documents against it.

`bds_core/assets/schemas/safety_report.schema.json` is generated from the pydantic models in
`report.py`; regenerate it after changing them with `python -m bds_core.scoring.schema` (a test
fails while it is stale).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bds_core.scoring.report import SCHEMA_VERSION, SafetyReport

SCHEMA_FILE = (
    Path(__file__).resolve().parent.parent / "assets" / "schemas" / "safety_report.schema.json"
)
SCHEMA_ID = f"https://bds.local/schemas/safety_report/{SCHEMA_VERSION}.json"


class ReportValidationError(ValueError):
    """A document is not a valid safety report; the message lists the problems by field."""


def report_json_schema() -> dict[str, Any]:
    """The JSON schema (draft 2020-12) of `SafetyReport.to_dict()`."""
    schema = SafetyReport.model_json_schema(mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
    }


def load_report_schema() -> dict[str, Any]:
    """The schema file shipped with the package."""
    data: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
    return data


def validate_report(data: dict[str, Any]) -> SafetyReport:
    """Parse and validate a report document; raise ReportValidationError naming each bad field."""
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise ReportValidationError(
            f"unsupported safety report schema_version {version!r}; "
            f"this library reads {SCHEMA_VERSION!r}"
        )
    try:
        return SafetyReport.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc']) or '(root)'}: {issue['msg']}"
            for issue in error.errors()
        )
        raise ReportValidationError(f"invalid safety report: {problems}") from error


def write_schema_file(path: Path = SCHEMA_FILE) -> Path:
    """(Re)generate the schema file from the models."""
    path.write_text(json.dumps(report_json_schema(), indent=2, sort_keys=True) + "\n")
    return path


if __name__ == "__main__":
    print(write_schema_file())
