"""Approve or block a dataset, set its training policy, and enforce both when a job is created.

The provider reviews each file's safety report and decides:

- ``approved`` or ``blocked``: a blocked file cannot be used by a new fine-tuning job, in any
  role (training, validation or alignment data); the create request gets a 403 naming it.
- a policy for training data: ``downweight`` (jobs must train with BDS, which lowers the
  weight of harmful-looking examples instead of dropping them), ``drop_flagged`` (jobs train
  without the examples the safety report flags; see :mod:`.training`) or ``reject`` (jobs are
  refused while the safety report flags any example).

Every change writes an audit row in the same transaction. Jobs created before a change keep
running; the policy in force when a job starts training is the one it follows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

from sqlalchemy.orm import Session

from bds_service import audit
from bds_service.audit import Actor
from bds_service.dataset_reviews.repository import (
    DatasetReviewRepository,
    ReviewedFile,
    reviewed_files,
)
from bds_service.errors import ConflictError, InvalidRequestError, PermissionDeniedError
from bds_service.files.states import FilePurpose, SafetyStatus
from bds_service.models import DatasetReview, File, utcnow

Decision = Literal["approved", "blocked"]
Policy = Literal["downweight", "drop_flagged", "reject"]
APPROVED: Decision = "approved"
BLOCKED: Decision = "blocked"
DOWNWEIGHT: Policy = "downweight"
DROP_FLAGGED: Policy = "drop_flagged"
REJECT: Policy = "reject"
DECISIONS: tuple[str, ...] = get_args(Decision)
POLICIES: tuple[str, ...] = get_args(Policy)
POLICY_DESCRIPTIONS: dict[str, str] = {
    DOWNWEIGHT: "train with BDS: harmful-looking examples lose weight instead of being dropped",
    DROP_FLAGGED: "train without the examples the safety report flags",
    REJECT: "refuse jobs while the safety report flags any example",
}
MAX_NOTE_CHARS = 2000


def _review_for_update(session: Session, file: File) -> DatasetReview:
    review = DatasetReviewRepository(session, file.tenant_id).for_file(file.id)
    if review is None:
        review = DatasetReview(file_id=file.id, tenant_id=file.tenant_id)
        session.add(review)
    return review


def _check_live(file: File) -> None:
    if file.deleted_at is not None:
        raise ConflictError(
            f"file {file.id} was deleted; a deleted file cannot be reviewed",
            code="file_deleted",
            param="file_id",
        )


def set_decision(
    session: Session,
    file: File,
    decision: str | None,
    actor: Actor,
    *,
    note: str | None = None,
) -> DatasetReview:
    """Approve or block ``file`` (None clears the decision); audited as ``dataset.<decision>``."""
    if decision is not None and decision not in DECISIONS:
        raise InvalidRequestError(
            f"decision {decision!r} is not one of {', '.join(DECISIONS)} (or empty to clear it)",
            code="invalid_decision",
            param="decision",
        )
    if note is not None and len(note) > MAX_NOTE_CHARS:
        raise InvalidRequestError(
            f"note is {len(note)} characters long; at most {MAX_NOTE_CHARS} are kept",
            code="invalid_note",
            param="note",
        )
    _check_live(file)
    review = _review_for_update(session, file)
    before = review.decision
    review.decision = decision
    if note is not None:
        review.note = note.strip() or None
    review.updated_at = utcnow()
    review.updated_by = actor.actor_id
    actions: dict[str | None, str] = {APPROVED: "dataset.approve", BLOCKED: "dataset.block"}
    action = actions.get(decision, "dataset.review.clear")
    audit.record(
        session,
        actor,
        action,
        target_type="file",
        target_id=file.id,
        tenant_id=file.tenant_id,
        details={"from": before, "to": decision, "note": review.note},
    )
    return review


def set_policy(session: Session, file: File, policy: str | None, actor: Actor) -> DatasetReview:
    """Set the training policy of a fine-tune file (None: no policy); audited."""
    if policy is not None and policy not in POLICIES:
        raise InvalidRequestError(
            f"policy {policy!r} is not one of {', '.join(POLICIES)} (or empty for none)",
            code="invalid_policy",
            param="policy",
        )
    _check_live(file)
    if policy is not None and file.purpose != FilePurpose.FINE_TUNE:
        raise InvalidRequestError(
            f"file {file.id} has purpose {str(file.purpose)!r}; training policies apply to "
            f"{FilePurpose.FINE_TUNE.value!r} files only",
            code="invalid_policy",
            param="policy",
        )
    review = _review_for_update(session, file)
    before = review.policy
    review.policy = policy
    review.updated_at = utcnow()
    review.updated_by = actor.actor_id
    audit.record(
        session,
        actor,
        "dataset.policy.set",
        target_type="file",
        target_id=file.id,
        tenant_id=file.tenant_id,
        details={"from": before, "to": policy},
    )
    return review


def flagged_lines(file: File) -> set[int]:
    """Source lines of the examples the file's safety report flags (empty without a report)."""
    report: dict[str, Any] = file.safety_report or {}
    return {int(row["line"]) for row in report.get("examples", []) if row.get("flagged")}


def reviewed_files_for_new_job(
    session: Session, tenant_id: str, file_ids: Sequence[str]
) -> dict[str, ReviewedFile]:
    """The tenant's live files among ``file_ids``, by id, share-locked, each with the
    provider's review (and its safety report where the review's policy needs it), for
    :func:`check_files_for_new_job`."""
    return reviewed_files(session, tenant_id, file_ids, reports_for=(DROP_FLAGGED, REJECT))


def _param_of(file: ReviewedFile, training_file_id: str) -> str:
    if file.id == training_file_id:
        return "training_file"
    return (
        "method.bds.safety_file"
        if file.purpose == FilePurpose.SAFETY_ALIGNMENT
        else "validation_file"
    )


def _report_ready(file: ReviewedFile, param: str, policy: str) -> dict[str, Any]:
    if file.safety_status != SafetyStatus.SUCCEEDED or not file.safety_report:
        state = file.safety_status or "not started"
        raise ConflictError(
            f"{param} {file.id} has the provider's policy {policy!r}, which needs its safety "
            f"report, and the report is {state}; retry when GET /v1/files/{file.id}/"
            "safety_report says succeeded",
            code="safety_report_not_ready",
            param=param,
        )
    return file.safety_report


def check_files_for_new_job(
    files: Sequence[ReviewedFile], *, training_file_id: str, method_type: str
) -> None:
    """Refuse a new job whose files the provider blocked, or whose training file's policy it
    breaks; every refusal names the file and says what would be accepted."""
    for file in files:
        param = _param_of(file, training_file_id)
        if file.decision == BLOCKED:
            raise PermissionDeniedError(
                f"{param} {file.id} was blocked by the provider after reviewing its safety "
                "report; it cannot be used for new fine-tuning jobs (upload different data, "
                "or ask the provider to review it again)",
                code="file_blocked",
                param=param,
            )
        if file.id != training_file_id or file.policy is None:
            continue
        if file.policy == DOWNWEIGHT and method_type != "bds":
            raise InvalidRequestError(
                f"training_file {file.id} has the provider's policy 'downweight': jobs on it "
                "must use method bds, which lowers the weight of harmful-looking examples",
                code="dataset_policy_requires_bds",
                param="method",
            )
        if file.policy == DROP_FLAGGED:
            report = _report_ready(file, param, file.policy)
            if report.get("n_examples") and report.get("n_flagged") == report.get("n_examples"):
                raise InvalidRequestError(
                    f"training_file {file.id} has the provider's policy 'drop_flagged' and its "
                    f"safety report flags all {report['n_examples']} examples: nothing would "
                    "be left to train on",
                    code="dataset_policy_drops_all_examples",
                    param=param,
                )
        if file.policy == REJECT:
            report = _report_ready(file, param, file.policy)
            if report.get("n_flagged"):
                raise PermissionDeniedError(
                    f"training_file {file.id} has the provider's policy 'reject' and its safety "
                    f"report flags {report['n_flagged']} of {report.get('n_examples')} "
                    "examples; remove them (see the report) and upload the file again",
                    code="dataset_rejected_by_policy",
                    param=param,
                )
