"""Safety reports: score a dataset with the pretrained amortized scheduler before training."""

from bds_core.scoring.report import SCHEMA_VERSION, SafetyReport
from bds_core.scoring.schema import (
    ReportValidationError,
    load_report_schema,
    report_json_schema,
    validate_report,
)
from bds_core.scoring.scorer import (
    DatasetScores,
    Scorer,
    default_scheduler_path,
    default_scoring_scheduler_path,
    filter_examples,
    get_scorer,
    score_examples,
)

__all__ = [
    "SCHEMA_VERSION",
    "DatasetScores",
    "ReportValidationError",
    "SafetyReport",
    "Scorer",
    "default_scheduler_path",
    "default_scoring_scheduler_path",
    "filter_examples",
    "get_scorer",
    "load_report_schema",
    "report_json_schema",
    "score_examples",
    "validate_report",
]
