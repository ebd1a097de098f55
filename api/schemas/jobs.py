"""Fine-tuning job requests and objects, shaped like OpenAI's so its SDK works unchanged.

BDS adds ``method: {"type": "bds", "bds": {...}}``: the scheduler settings of bds-method.md
(built from bds_core's ``SchedulerSettings``) and an optional alignment file. Everything else follows ``fine_tuning.job``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from api.schemas.common import RequestModel
from bds_core.schedulers import scheduler_setting_fields
from bds_core.setting_fields import SettingField
from bds_service.jobs.service import MAX_GPUS_PER_JOB, MAX_SEED, JobSpec
from bds_service.models import FineTuningJob, JobCheckpoint, JobEvent, unix_seconds

Auto = Literal["auto"]
FileId = Annotated[str, Field(min_length=1, max_length=64)]


class HyperparametersIn(RequestModel):
    """Training length, batch and learning rate; ``auto`` takes the deployment's default."""

    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] = "auto"
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] = "auto"
    learning_rate_multiplier: Auto | Annotated[float, Field(ge=1e-6, le=100)] = "auto"


class BdsMethodFields(RequestModel):
    """The parts of ``method.bds`` that are not scheduler settings."""

    hyperparameters: HyperparametersIn | None = None
    safety_file: FileId | None = Field(
        default=None, description="alignment data (a file of purpose safety-alignment)"
    )
    safety_batch_size: Annotated[int, Field(ge=1, le=256)] | None = Field(
        default=None,
        description="alignment examples per step; default a quarter of the batch size, rounded "
        "up to a multiple of n_gpus (the job stores the number it resolved)",
    )
    max_steps: Annotated[int, Field(ge=1, le=1_000_000)] | None = Field(
        default=None, description="stop after this many steps (overrides n_epochs)"
    )
    n_gpus: Annotated[int, Field(ge=1, le=MAX_GPUS_PER_JOB, strict=True)] | None = Field(
        default=None,
        description=f"GPUs for this one job, 1-{MAX_GPUS_PER_JOB} (data-parallel under torchrun "
        "on one worker; each step's batch is split between them). Default 1",
    )


# Scheduler settings a tenant does not set: init_path is a path on the worker, record_last
# sizes a buffer of N weights per kept sample; the rest keep the library's defaults. Every
# other SchedulerSettings field is offered in method.bds under its flat name.
NOT_OFFERED = frozenset(
    {"init_path", "record_last", "record_every", "weight_decay", "grad_clip", "sgld_step_decay"}
)


def _scheduler_field(setting: SettingField) -> tuple[Any, Any]:
    """(annotation, FieldInfo) of one scheduler setting in ``method.bds``.

    The kind is stored with every job (its default included); the other settings are stored
    only when given, and an absent one takes the library's default when the job trains.
    """
    value_type: Any = setting.value_type
    if setting.choices is not None:
        value_type = Literal[setting.choices]
    elif value_type is dict:
        value_type = dict[str, Any]
    limits = {
        bound: getattr(setting, bound)
        for bound in ("ge", "gt", "le", "lt")
        if getattr(setting, bound) is not None
    }
    if limits:
        value_type = Annotated[value_type, Field(**limits)]
    description = setting.help or None
    if setting.name == "kind":
        return value_type, Field(default=setting.default, description=description)
    return value_type | None, Field(default=None, description=description)


def _bds_method_model() -> type[BdsMethodFields]:
    offered = [s for s in scheduler_setting_fields() if s.name not in NOT_OFFERED]
    clashes = {s.flat_name for s in offered} & set(BdsMethodFields.model_fields)
    if clashes:
        raise RuntimeError(f"scheduler settings clash with method.bds fields: {sorted(clashes)}")
    definitions: dict[str, Any] = {s.flat_name: _scheduler_field(s) for s in offered}
    return create_model(
        "BdsMethodIn",
        __base__=BdsMethodFields,
        __doc__="How BDS weights the customer's examples (defaults: bds_core's SchedulerSettings).",
        __module__=__name__,
        **definitions,
    )


if TYPE_CHECKING:
    BdsMethodIn = BdsMethodFields
else:
    BdsMethodIn = _bds_method_model()


class SupervisedMethodIn(RequestModel):
    """Plain supervised fine-tuning (no data scheduler)."""

    hyperparameters: HyperparametersIn | None = None


class MethodIn(RequestModel):
    """``bds`` (the default) or ``supervised``."""

    type: Literal["bds", "supervised"]
    bds: BdsMethodIn | None = None
    supervised: SupervisedMethodIn | None = None

    @model_validator(mode="after")
    def _block_matches_type(self) -> MethodIn:
        other = "supervised" if self.type == "bds" else "bds"
        if getattr(self, other) is not None:
            raise ValueError(f"method.{other} is given but method.type is {self.type!r}")
        return self


class JobCreate(RequestModel):
    """``POST /v1/fine_tuning/jobs``."""

    model: Annotated[str, Field(min_length=1, max_length=200)]
    training_file: FileId
    validation_file: FileId | None = None
    hyperparameters: HyperparametersIn | None = None
    method: MethodIn | None = None
    suffix: (
        Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")] | None
    ) = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None:
            if len(value) > 16:
                raise ValueError(f"at most 16 metadata pairs, got {len(value)}")
            too_long = [key for key in value if not 1 <= len(key) <= 64]
            if too_long:
                raise ValueError(f"metadata keys must be 1-64 characters: {too_long[0][:80]!r}")
        return value

    def _method_block(self) -> BdsMethodIn | SupervisedMethodIn | None:
        method = self.method or MethodIn(type="bds")
        return method.bds if method.type == "bds" else method.supervised

    @model_validator(mode="after")
    def _hyperparameters_in_one_place(self) -> JobCreate:
        block = self._method_block()
        if block is not None and block.hyperparameters is not None and self.hyperparameters:
            raise ValueError(
                "give hyperparameters either at the top level or in the method block, not both"
            )
        return self

    def to_spec(self) -> JobSpec:
        """The domain request; hyperparameters may sit at the top or in the method block."""
        method = self.method or MethodIn(type="bds")
        block = self._method_block()
        nested = block.hyperparameters if block is not None else None
        hyperparameters = nested or self.hyperparameters or HyperparametersIn()
        bds: dict[str, Any] = {}
        if isinstance(block, BdsMethodIn):
            bds = block.model_dump(exclude_none=True, exclude={"hyperparameters"})
        return JobSpec(
            model=self.model,
            training_file=self.training_file,
            validation_file=self.validation_file,
            method_type=method.type,
            hyperparameters=hyperparameters.model_dump(),
            bds=bds,
            suffix=self.suffix,
            seed=self.seed,
            metadata=self.metadata,
        )


class JobError(BaseModel):
    """Why a job failed."""

    code: str
    message: str
    param: str | None = None


class FineTuningJobObject(BaseModel):
    """``object: "fine_tuning.job"``."""

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str
    result_files: list[str] = Field(default_factory=list)
    seed: int
    status: Literal[
        "validating_files", "queued", "running", "cancelling", "succeeded", "failed", "cancelled"
    ]
    trained_tokens: int | None = None
    total_steps: int | None = Field(
        default=None,
        description="BDS addition: the training steps the job's settings resolved to "
        "(method.bds.max_steps, or n_epochs passes over the training file); null until "
        "training starts",
    )
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[Any] = Field(default_factory=list)
    metadata: dict[str, str] | None = None
    method: dict[str, Any]
    user_provided_suffix: str | None = None

    @classmethod
    def from_row(cls, job: FineTuningJob) -> FineTuningJobObject:
        """The API view of a job row."""
        return cls(
            id=job.id,
            created_at=unix_seconds(job.created_at) or 0,
            error=JobError(**job.error) if job.error else None,
            fine_tuned_model=job.fine_tuned_model,
            finished_at=unix_seconds(job.finished_at),
            hyperparameters=job.hyperparameters,
            model=job.model,
            organization_id=job.tenant_id,
            seed=job.seed,
            status=job.status,  # type: ignore[arg-type]
            trained_tokens=job.trained_tokens,
            total_steps=job.total_steps,
            training_file=job.training_file_id,
            validation_file=job.validation_file_id,
            estimated_finish=unix_seconds(job.estimated_finish),
            metadata=job.job_metadata,
            method=job.method,
            user_provided_suffix=job.suffix,
        )


class JobEventObject(BaseModel):
    """``object: "fine_tuning.job.event"``; metrics events carry progress in ``data``."""

    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, event: JobEvent) -> JobEventObject:
        """The API view of an event row."""
        return cls(
            id=event.id,
            created_at=unix_seconds(event.created_at) or 0,
            level=event.level,  # type: ignore[arg-type]
            message=event.message,
            type=event.event_type,  # type: ignore[arg-type]
            data=event.data,
        )


class CheckpointMetrics(BaseModel):
    """Numbers at the checkpoint's step."""

    model_config = ConfigDict(extra="allow")

    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class CheckpointObject(BaseModel):
    """``object: "fine_tuning.job.checkpoint"``."""

    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int

    @classmethod
    def from_row(cls, checkpoint: JobCheckpoint, model_name: str) -> CheckpointObject:
        """The API view of a checkpoint row; ``model_name`` is the job's output name."""
        return cls(
            id=checkpoint.id,
            created_at=unix_seconds(checkpoint.created_at) or 0,
            fine_tuned_model_checkpoint=f"{model_name}:ckpt-step-{checkpoint.step_number}",
            fine_tuning_job_id=checkpoint.job_id,
            metrics=CheckpointMetrics(**checkpoint.metrics),
            step_number=checkpoint.step_number,
        )


class JobSafetyReport(BaseModel):
    """After training: final per-example weights and the before/after safety evaluation.

    ``report`` is null until the job has succeeded.
    """

    object: Literal["fine_tuning.job.safety_report"] = "fine_tuning.job.safety_report"
    fine_tuning_job_id: str
    status: str
    report: dict[str, Any] | None = None
