"""Service settings: one pydantic-settings class, read from ``BDS_*`` environment variables.

The defaults describe the embedded deployment (SQLite file, a broker on SQLite, local artifact
folder under ``data_dir``). Production sets ``BDS_ENVIRONMENT=production`` and must then supply
its own ``BDS_API_KEY_SECRET``: the service refuses to start with the development secret.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEVELOPMENT_SECRET = "bds-development-secret-do-not-use-in-production"


class Settings(BaseSettings):
    """Every knob of the service; environment variables are the field names prefixed ``BDS_``."""

    model_config = SettingsConfigDict(
        env_prefix="BDS_", env_file=".env", env_ignore_empty=True, extra="ignore"
    )

    environment: Literal["development", "production"] = Field(
        default="development", description="production refuses default secrets"
    )
    data_dir: Path = Field(
        default=Path(".bds"), description="root of the embedded database, broker and files"
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file <data_dir>/bds.sqlite3"
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker URL; default: kombu's SQLAlchemy transport on "
        "<data_dir>/broker.sqlite3 (needs no server)",
    )
    storage_dir: Path | None = Field(
        default=None, description="artifact folder (uploads, adapters); default <data_dir>/storage"
    )
    api_key_secret: SecretStr = Field(
        default=SecretStr(DEVELOPMENT_SECRET), description="server secret for the HMAC of API keys"
    )

    # Queues: names are settings so that several deployments (or test runs) can share a broker.
    cpu_queue: str = Field(default="cpu", description="queue for validation and scoring tasks")
    gpu_queue: str = Field(default="gpu", description="queue for training tasks")
    multi_gpu_queue: str | None = Field(
        default=None,
        description="queue for training jobs with n_gpus > 1, taken by workers with several "
        "GPUs; None sends them to gpu_queue (every GPU worker must then have enough GPUs)",
    )
    broker_visibility_timeout_s: int = Field(
        default=6 * 3600,
        gt=0,
        description="Redis redelivery timeout; the DB lease, not this, guards against double runs",
    )

    # Uploads and datasets.
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, gt=0, description="cap on one upload")
    max_request_body_bytes: int = Field(
        default=1024 * 1024,
        gt=0,
        description="cap on every request body but the multipart upload (JSON, forms), refused "
        "with 413 before it is read whole",
    )
    max_line_bytes: int = Field(default=1024 * 1024, gt=0, description="cap on one JSONL line")
    max_examples: int = Field(default=100_000, gt=0, description="cap on examples in one file")
    min_examples: int = Field(default=1, gt=0, description="fewest examples in a training file")
    max_validation_issues: int = Field(default=100, gt=0, description="issues kept in a report")
    max_message_chars: int = Field(default=100_000, gt=0, description="cap on one message's text")

    validate_uploads_synchronously: bool = Field(
        default=True,
        description="validate uploads while the client waits and refuse bad files with a 400 "
        "(nothing stored); False: accept, then validate in the validate_file task",
    )

    # Models and training defaults.
    base_models: list[str] = Field(
        default_factory=lambda: ["smollm2-135m-instruct", "tiny-random-llama"],
        description="base models this deployment fine-tunes (bds_core.models specs)",
    )
    base_learning_rate: float = Field(
        default=2e-4, gt=0, description="LoRA learning rate multiplied by learning_rate_multiplier"
    )
    default_n_epochs: int = Field(default=3, gt=0, description="epochs for auto")
    default_batch_size: int = Field(default=8, gt=0, description="batch size for auto")
    max_length: int = Field(default=512, gt=0, description="token cap per training example")
    checkpoint_every: int = Field(default=50, gt=0, description="steps between checkpoints")
    train_precision: Literal["fp32", "bf16"] = Field(
        default="fp32",
        description="fp32, or bf16 (bfloat16 autocast; for GPU workers whose GPUs support it)",
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="recompute activations in the backward pass: less GPU memory, more compute",
    )
    safety_alignment_file: Path | None = Field(
        default=None,
        description="provider's alignment data (JSONL of harmful prompts with refusals) used by "
        "method bds when the job names no safety-alignment file",
    )
    scorer_path: Path | None = Field(
        default=None,
        description="amortized scheduler folder for safety reports; None: the packaged scoring "
        "one (static encoder, bds_core/assets/schedulers/static-distilled); the MiniLM one is "
        "bds_core/assets/schedulers/default",
    )

    # Post-training evaluation.
    eval_harmful_prompts: str | None = Field(
        default=None,
        description="held-out harmful prompts for the harmful score: a .txt (one per line), "
        ".jsonl (field prompt) or .csv (column forbidden_prompt) path, or the asset name "
        "'strongreject'; None skips the harmful score",
    )
    eval_max_prompts: int = Field(default=50, gt=0, description="harmful prompts evaluated per job")
    eval_max_new_tokens: int = Field(default=48, gt=0, description="answer length in evaluation")
    eval_max_examples: int = Field(default=200, gt=0, description="validation examples used for FA")
    eval_batch_size: int = Field(
        # 32 answers of SmolLM2-135M at a time cost half the CPU of 8 at a time, with the same
        # greedy answers (docs/benchmarks.md, "Evaluation batch").
        default=32,
        gt=0,
        le=256,
        description="answers generated together in the evaluation; a progress event follows "
        "each batch",
    )

    # Inference: chat completions on base and fine-tuned models (docs/service.md, Inference).
    inference_backend: Literal["local", "vllm"] = Field(
        default="local",
        description="the OpenAI-compatible engine behind /v1/chat/completions: 'local' (the "
        "project's inference worker, started by `bds serve`) or 'vllm' (a vLLM server with "
        "LoRA enabled and runtime LoRA updating)",
    )
    inference_url: str = Field(
        default="http://127.0.0.1:8001",
        description="root URL of the engine (without /v1); `bds serve` starts the local one "
        "on this URL's port",
    )
    inference_api_key: SecretStr | None = Field(
        default=None, description="bearer key the engine expects (vLLM's --api-key); None: none"
    )
    inference_adapter_root: str | None = Field(
        default=None,
        description="the storage folder as the engine sees it (a vLLM container mounts the "
        "artifact volume elsewhere); None: the same path as storage_dir",
    )
    inference_timeout_seconds: float = Field(
        default=300.0, gt=0, description="longest wait for the engine's answer (or next chunk)"
    )
    inference_max_tokens: int = Field(
        default=512, gt=0, description="cap on max_tokens, and its value when a request has none"
    )
    inference_max_loaded_adapters: int = Field(
        default=8, gt=0, description="local engine: adapters kept in memory per base model (LRU)"
    )
    inference_max_batch_size: int = Field(
        default=8, gt=0, description="local engine: requests decoded together in one batch"
    )
    inference_device: str | None = Field(
        default=None, description="local engine: torch device (None: the GPU when there is one)"
    )
    inference_threads: int | None = Field(
        default=None,
        gt=0,
        description="local engine: torch CPU threads (None: torch's default); 1 on a CPU host "
        "whose cores are shared with training workers",
    )

    # Job leases (reliability.md: Postgres owns a job's state).
    lease_seconds: int = Field(default=300, gt=0, description="claim life without heartbeat")
    heartbeat_seconds: float = Field(default=15.0, gt=0, description="gap between heartbeats")
    max_attempts: int = Field(default=3, gt=0, description="claims of one job before it fails")
    progress_event_seconds: float = Field(
        default=5.0, ge=0, description="minimum gap between progress events (first and last always)"
    )

    reaper_interval_seconds: float = Field(
        default=30.0,
        gt=0,
        description="gap between runs of the lease reaper and the dispatch sweep (celery beat)",
    )
    # Dispatch owned by the database (bds_service.dispatch).
    redispatch_after_seconds: float = Field(
        default=30.0,
        gt=0,
        description="a queued or validating job, or a file waiting for validation or scoring, "
        "that no worker claimed this long after its message was sent gets the message again",
    )
    redispatch_max_seconds: float = Field(
        default=60.0,
        gt=0,
        description="the gap between re-sends doubles while the work stays unclaimed (a long "
        "queue), up to this",
    )
    scoring_lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description="a scoring claim not renewed this long belongs to a dead worker and is "
        "taken over (the worker renews it every quarter of this)",
    )
    stale_partial_seconds: float = Field(
        default=6 * 3600.0,
        gt=0,
        description="a .part file in storage untouched this long was left by a process killed "
        "mid-write (an API killed mid-upload) and is removed by the beat, hourly",
    )
    # Workers that heal or die (worker.liveness).
    worker_stall_exit_seconds: float = Field(
        default=60.0,
        gt=0,
        description="a worker whose consumer has not run for this long (broker unreachable, or "
        "a consumer that died) exits with status 1 so that its supervisor restarts it",
    )
    worker_liveness_file: Path | None = Field(
        default=None,
        description="file whose modification time the worker's consumer refreshes while it "
        "runs (`bds worker-alive` checks it); None: none is written",
    )

    # Per-tenant caps (a tenant row may override each; NULL there means these defaults).
    max_concurrent_jobs: int = Field(
        default=10,
        gt=0,
        description="unfinished fine-tuning jobs (validating, queued, running) one tenant may have",
    )

    # API.
    max_page_size: int = Field(default=100, gt=0, description="largest `limit` a list accepts")
    rate_limit_requests: int = Field(
        default=600,
        ge=0,
        description="requests one API key may send per rate-limit window; 0 turns the limit off",
    )
    rate_limit_window_seconds: float = Field(
        default=60.0, gt=0, description="length of the rate-limit window"
    )
    rate_limit_redis_url: str | None = Field(
        default=None,
        description="Redis URL for rate-limit counters shared by every API process (use a "
        "database of its own); None counts in each API process's memory",
    )
    auth_failure_limit: int = Field(
        default=20,
        ge=0,
        description="failed authentications (API key or dashboard login) one client address may "
        "make per auth-failure window before it is refused with 429, even with a valid key; "
        "counted in rate_limit_redis_url when set; 0 turns the limit off",
    )
    auth_failure_window_seconds: float = Field(
        default=300.0, gt=0, description="length of the auth-failure window"
    )
    api_key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="how long an API process reuses a key's successful lookup instead of "
        "reading the database again; a key revoked (or a tenant's caps changed) in another "
        "process is honoured after at most this long, in the same process at once; 0 turns "
        "the cache off",
    )

    @model_validator(mode="after")
    def _refuse_default_secret_in_production(self) -> Settings:
        if (
            self.environment == "production"
            and self.api_key_secret.get_secret_value() == DEVELOPMENT_SECRET
        ):
            raise ValueError(
                "BDS_API_KEY_SECRET must be set to a private random value when "
                "BDS_ENVIRONMENT=production (the development default is public)"
            )
        if len(self.api_key_secret.get_secret_value()) < 16:
            raise ValueError("BDS_API_KEY_SECRET must be at least 16 characters long")
        return self

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to the embedded SQLite file."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'bds.sqlite3').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        """The broker URL, defaulting to kombu's SQLAlchemy transport on a SQLite file."""
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.sqlite3').resolve()}"

    @property
    def resolved_storage_dir(self) -> Path:
        """The artifact folder, defaulting to ``<data_dir>/storage``."""
        return (self.storage_dir or self.data_dir / "storage").resolve()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
