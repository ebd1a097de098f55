"""The training side of a dataset policy: what the job runner trains on.

Only ``drop_flagged`` changes the data: the runner trains on a copy of the training file
without the lines the file's safety report flags, written into the job's folder.
The other policies and decisions are enforced when a job is created
(:func:`bds_service.dataset_reviews.service.check_files_for_new_job`).
"""

from __future__ import annotations

from pathlib import Path

from bds_service.dataset_reviews.repository import reviews_by_file
from bds_service.dataset_reviews.service import DROP_FLAGGED, flagged_lines
from bds_service.db import UnitOfWork
from bds_service.files.repository import load_file_for_task
from bds_service.files.states import SafetyStatus
from bds_service.jobs.lifecycle import add_event
from bds_service.jobs.repository import load_job_for_task

POLICY_TRAIN_FILENAME = "train.policy.jsonl"


def write_without_lines(source: Path, destination: Path, dropped: set[int]) -> int:
    """Copy a JSONL file with the given 1-based lines left blank; returns the examples kept.

    Lines are counted exactly as the validator counts them (split on ``\\n``). Dropped lines
    become empty lines, which the validator skips, so every kept example keeps its line
    number: the job's per-example weights and the file's safety report name the same lines.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(destination.name + ".part")
    kept = 0
    with source.open("rb") as reader, temporary.open("wb") as writer:
        for number, line in enumerate(reader, start=1):
            if number in dropped:
                writer.write(b"\n")
                continue
            writer.write(line)
            kept += 1 if line.strip() else 0
    temporary.replace(destination)
    return kept


def training_file_under_policy(
    uow: UnitOfWork, job_id: str, train_file: Path, work_dir: Path
) -> Path:
    """The file job ``job_id`` trains on: ``train_file``, or a copy without flagged examples
    written into ``work_dir`` (the job's folder, beside the trainer's own).

    Raises ValueError (the runner fails the job with its message) when the policy is
    ``drop_flagged`` and the safety report is missing or flags every example.
    """
    with uow() as session:
        job = load_job_for_task(session, job_id)
        if job is None:
            return train_file
        review = reviews_by_file(session, [job.training_file_id]).get(job.training_file_id)
        if review is None or review.policy != DROP_FLAGGED:
            return train_file
        file = load_file_for_task(session, job.training_file_id)
        if file is None or file.safety_status != SafetyStatus.SUCCEEDED or not file.safety_report:
            raise ValueError(
                f"the provider's policy for training file {job.training_file_id} is "
                "drop_flagged, but the file has no safety report to tell which examples to drop"
            )
        dropped = flagged_lines(file)
    destination = work_dir / POLICY_TRAIN_FILENAME
    kept = write_without_lines(train_file, destination, dropped)
    if kept == 0:
        raise ValueError(
            f"the provider's policy for training file {job.training_file_id} is drop_flagged "
            "and its safety report flags every example: nothing is left to train on"
        )
    with uow() as session:
        job = load_job_for_task(session, job_id)
        if job is not None:
            add_event(
                session,
                job,
                f"Dataset policy drop_flagged: training on {kept} examples without the "
                f"{len(dropped)} the safety report flags",
                data={"policy": DROP_FLAGGED, "dropped_lines": sorted(dropped)[:1000]},
            )
    return destination
