"""`bds bench run`: stage 0 alignment, then every (method, harmful share) cell, then evaluation.

The plan of a run, in order, for each task:

1. ``<task>__m0``: the aligned base model M0 itself, no fine-tuning (a reference row).
2. ``<task>__pretrained-scheduler`` (profiles with the check): the shipped amortized scheduler
   scoring data it never saw (the harmful holdout and the task's evaluation items).
3. ``<task>__sft__p0``: the clean run (sft at p = 0), always, even when p = 0 or sft is not
   among the chosen shares and methods; the targets compare against it.
4. ``<task>__<method>__p<share>`` for every share and method.

Every fine-tune starts from M0 with the same LoRA settings, steps, batch sizes, learning rate and
seed; only the method differs. A finished cell is written atomically to
``RESULTS/cells/<cell_id>.json``; a rerun skips every cell whose file exists with the same
digest (the hash of all its inputs and settings) and refuses to mix in a cell computed with
other settings. The alignment budget keys only the cells that read D_safe
(`cell_training_keys`), so M0's cell and the clean run can be copied between folders of
different budgets. Inside a cell the trainer checkpoints (``RESULTS/work/<cell_id>/``), so an
interrupted cell continues from its last checkpoint.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bds_core.bench.alignment import (
    AlignedModel,
    AlignmentSettings,
    alignment_key,
    ensure_aligned_model,
)
from bds_core.bench.baselines import (
    ALIGNMENT_STAGE_METHODS,
    NEEDS_HARMFUL,
    BaselineSettings,
    ensure_baseline_aligned_model,
    run_lisa,
)
from bds_core.bench.baselines.data import harmful_alignment_file
from bds_core.bench.benign import EVAL_FILES, EVERYDAY, LOOKALIKE, RETENTION_FILE
from bds_core.bench.build import file_sha256, ft_file_name, share_label
from bds_core.bench.evaluate import (
    EvalSet,
    EvalSettings,
    evaluate_model,
    evaluation_subset,
    exact_matcher,
    peak_rss_mb,
    read_final_weights,
    read_interval_separation,
    reset_peak_rss,
    weight_detection,
)
from bds_core.bench.profiles import PROFILES, BenchMethod, BenchProfile, get_method
from bds_core.bench.results import (
    CellKind,
    CellMetrics,
    CellResult,
    PretrainedDetection,
    ResultsError,
    cell_path,
    read_cell,
    write_cell,
    write_json_atomically,
)
from bds_core.data import Example, load_examples, write_examples
from bds_core.eval import Judge, RefusalPhraseJudge, judge_name
from bds_core.training.callbacks import ProgressEvent, TrainerCallback

CELL_FORMAT_VERSION = 2
"""2: general over-refusal (everyday and look-unsafe prompts), degenerate answers, every answer
kept, and the judge that lets an apology followed by help pass."""
"""Part of every cell digest; bump when what a cell measures changes."""

RUN_LOG = "run.json"
WORK_DIR = "work"
SAFETY_FILE = "safety.jsonl"
REPLAY_FILE = "alignment_replay.jsonl"
EVAL_PROMPTS_FILE = "eval_harmful_prompts.jsonl"
HOLDOUT_FILE = "harmful_holdout.jsonl"
BASE_METHOD = "m0"
DETECTION_METHOD = "pretrained-scheduler"


class BenchRunError(RuntimeError):
    """The run cannot start or continue; the message names the file, cell or option at fault."""


@dataclass(frozen=True)
class RunConfig:
    """One `bds bench run` invocation."""

    data_dir: Path = field(metadata={"help": "folder written by `bds bench build-data`"})
    out_dir: Path = field(metadata={"help": "results folder (cells/, work/, run.json)"})
    profile: BenchProfile = field(metadata={"help": "every training and evaluation setting"})
    model: str = field(
        default="smollm2-135m-instruct", metadata={"help": "base model before stage 0"}
    )
    tasks: tuple[str, ...] | None = field(
        default=None,
        metadata={"help": "benign tasks; None: the profile's tasks found in the data"},
    )
    seed: int = field(default=0, metadata={"help": "seed of stage 0 and every fine-tune"})
    seeds: tuple[int, ...] | None = field(
        default=None,
        metadata={
            "help": "fine-tuning seeds, each a cell of its own (data and M0 fixed); None: seed"
        },
    )
    baselines: BaselineSettings = field(
        default_factory=BaselineSettings,
        metadata={"help": "hyperparameters of lisa, vaccine, booster and repnoise"},
    )
    train_file: Path | None = field(
        default=None, metadata={"help": "custom D_ft instead of the data's ft_<task>_p<p> files"}
    )
    safety_file: Path | None = field(
        default=None, metadata={"help": "custom D_safe (stage 0 and mix/bds) instead of safety"}
    )
    eval_prompts_file: Path | None = field(
        default=None, metadata={"help": "custom harmful evaluation prompts (their user turns)"}
    )
    cache_dir: Path | None = field(
        default=None, metadata={"help": "cache of aligned models (default $BDS_CACHE_DIR/...)"}
    )
    device: str | None = field(default=None, metadata={"help": "cpu or cuda (default: auto)"})
    command: str = field(default="", metadata={"help": "the command line, for the record"})


@dataclass(frozen=True)
class CellPlan:
    """A cell to measure (or to skip, when its file exists with the same digest)."""

    cell_id: str
    kind: CellKind
    task: str
    method: str
    share: float | None
    train_file: Path | None
    steps: int
    n_train: int
    digest: str
    work_units: dict[str, float]
    seed: int = 0
    accepted_digests: tuple[str, ...] = ()
    """Other digests under which an existing cell is this cell: those earlier code gave it (a
    method that reads no D_safe was once keyed on the run's alignment budget)."""

    def accepts(self, digest: str) -> bool:
        """Whether a cell (or a checkpoint folder) with ``digest`` is this cell."""
        return digest == self.digest or digest in self.accepted_digests


@dataclass(frozen=True)
class RunProgress:
    """Where a run stands: the current cell and stage, and the whole run with an ETA."""

    cell_index: int
    n_cells: int
    cell_id: str
    stage: str
    stage_done: int
    stage_total: int
    elapsed_s: float
    eta_s: float | None
    fraction_done: float


ProgressFn = Callable[[RunProgress], None]


@dataclass
class RunSummary:
    """What a run did."""

    out_dir: Path
    cells: list[CellPlan]
    computed: list[str]
    skipped: list[str]
    failed: dict[str, str]
    aligned: AlignedModel
    elapsed_s: float


# ---------------------------------------------------------------------------------- ETA


class EtaTracker:
    """Remaining time from measured rates, one rate per kind of work.

    Kinds: "train" (one example row through forward and backward), "eval" (one generated
    token of one prompt) and "score" (one example through the scheduler's encoder). A rate is
    measured from this run's own work; until a kind has been measured, the ETA is unknown
    (None), except that evaluation is assumed to cost a thirtieth of a training row per token
    once training has been measured.
    """

    FALLBACK_EVAL_PER_TRAIN = 1.0 / 30.0

    def __init__(self, planned: Sequence[dict[str, float]]) -> None:
        self.remaining: dict[str, float] = {}
        for units in planned:
            for kind, amount in units.items():
                self.remaining[kind] = self.remaining.get(kind, 0.0) + amount
        self.done: dict[str, float] = {}
        self.spent: dict[str, float] = {}
        self.started = time.monotonic()
        self._stage_kind: str | None = None
        self._stage_started = 0.0
        self._stage_units = 0.0

    def start_stage(self, kind: str) -> None:
        """A stage of this kind of work starts now."""
        self.finish_stage()
        self._stage_kind = kind
        self._stage_started = time.monotonic()
        self._stage_units = 0.0

    def advance(self, units: float) -> None:
        """The current stage has done ``units`` in all so far."""
        if self._stage_kind is None:
            return
        kind = self._stage_kind
        delta = max(units - self._stage_units, 0.0)
        self._stage_units = max(units, self._stage_units)
        self.done[kind] = self.done.get(kind, 0.0) + delta
        self.remaining[kind] = max(self.remaining.get(kind, 0.0) - delta, 0.0)
        now = time.monotonic()
        self.spent[kind] = self.spent.get(kind, 0.0) + now - self._stage_started
        self._stage_started = now

    def skip(self, units: float) -> None:
        """The current stage starts ``units`` in (done by an earlier process, not timed now)."""
        if self._stage_kind is None:
            return
        self._stage_units += units
        kind = self._stage_kind
        self.remaining[kind] = max(self.remaining.get(kind, 0.0) - units, 0.0)

    def finish_stage(self) -> None:
        """The current stage is over (its time counts, even without units reported)."""
        if self._stage_kind is not None:
            self.advance(self._stage_units)
        self._stage_kind = None

    def rate(self, kind: str) -> float | None:
        """Measured seconds per unit of ``kind``, or a fallback, or None."""
        done = self.done.get(kind, 0.0)
        if done > 0:
            return self.spent.get(kind, 0.0) / done
        if kind == "eval":
            train = self.rate("train")
            return None if train is None else train * self.FALLBACK_EVAL_PER_TRAIN
        return None

    def eta_s(self) -> float | None:
        """Seconds left for the planned work, or None while a needed rate is unknown."""
        total = 0.0
        for kind, amount in self.remaining.items():
            if amount <= 0:
                continue
            rate = self.rate(kind)
            if rate is None:
                return None
            total += amount * rate
        return total

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started


# ---------------------------------------------------------------------------------- planning


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise BenchRunError(f"{what} {path} does not exist")
    return path


def _manifest(data_dir: Path) -> dict[str, Any]:
    path = data_dir / "manifest.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as error:
        raise BenchRunError(f"{path} is not valid JSON ({error})") from None
    return data if isinstance(data, dict) else {}


def resolve_tasks(config: RunConfig) -> tuple[str, ...]:
    """The tasks to run: those asked for (each must have its eval file), or the profile's that
    the data holds."""
    data_dir = config.data_dir
    if config.tasks is not None:
        for task in config.tasks:
            _require(
                data_dir / f"{task}_eval.jsonl",
                f"task {task!r}: its held-out items file",
            )
        return config.tasks
    present = tuple(
        task for task in config.profile.tasks if (data_dir / f"{task}_eval.jsonl").is_file()
    )
    if not present:
        found = sorted(path.name for path in data_dir.glob("*_eval.jsonl"))
        raise BenchRunError(
            f"none of the profile's tasks ({', '.join(config.profile.tasks)}) has an evaluation "
            f"file in {data_dir} (found: {', '.join(found) or 'none'}); pass --task or build "
            "the data with `bds bench build-data`"
        )
    return present


def _train_file(config: RunConfig, task: str, share: float) -> Path:
    path = config.data_dir / ft_file_name(task, share)
    if path.is_file():
        return path
    built = _manifest(config.data_dir).get("config", {})
    hint = ""
    if built:
        hint = (
            f"; the data was built with shares {built.get('shares')} and tasks "
            f"{built.get('tasks')} (manifest.json)"
        )
    raise BenchRunError(
        f"D_ft file {path} for task {task!r} at p = {share:g} does not exist{hint}. Rebuild "
        "the data (`bds bench build-data --shares ... --tasks ...`) or choose --shares/--task "
        "from what was built"
    )


def _share_of(examples: Sequence[Example]) -> float | None:
    labels = [example.is_harmful for example in examples]
    if any(label is None for label in labels):
        return None
    return round(sum(1 for label in labels if label) / len(labels), 4)


@dataclass(frozen=True)
class _Inputs:
    safety_file: Path
    eval_prompts_file: Path
    alignment: AlignmentSettings
    aligned_key: str
    eval_settings: EvalSettings
    judge: str
    retention_files: tuple[Path, ...] = ()
    general_file: Path | None = None
    everyday_file: Path | None = None
    lookalike_file: Path | None = None
    replay_file: Path | None = None

    @property
    def replayed(self) -> Path:
        """The alignment set mix, the BDS variants and Lisa train on next to D_ft."""
        return self.replay_file or self.safety_file


def write_alignment_replay(
    out_dir: Path,
    safety_file: Path,
    alignment: AlignmentSettings,
    retention: Sequence[Path],
    general: Path | None,
) -> Path:
    """``out_dir/alignment_replay.jsonl``: stage 0's whole training set (D_safe, then its task
    and general retention rows), the provider's alignment data that the fine-tuning defences
    replay. Written only when its bytes change, so the file's digest is stable across reruns."""
    from bds_core.bench.alignment import stage0_examples

    examples = stage0_examples(
        safety_file, retention, alignment.retention_per_file, general, alignment.retention_general
    )
    path = out_dir / REPLAY_FILE
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".jsonl.tmp")
    write_examples(examples, staging)
    if path.is_file() and path.read_bytes() == staging.read_bytes():
        staging.unlink()
    else:
        staging.replace(path)
    return path


def _alignment_settings(config: RunConfig) -> AlignmentSettings:
    profile = config.profile
    return AlignmentSettings(
        steps=profile.alignment_steps,
        batch_size=profile.alignment_batch_size,
        learning_rate=profile.alignment_learning_rate,
        lora=profile.lora,
        max_length=profile.max_length,
        seed=config.seed,
        retention_per_file=profile.alignment_retention_per_task,
        retention_general=profile.alignment_retention_general,
    )


def retention_files(config: RunConfig, evaluated: Sequence[str]) -> tuple[Path, ...]:
    """Stage 0's benign retention files: the training pools of the profile's retention tasks
    that the data folder holds, leaving out the tasks this run evaluates."""
    if config.profile.alignment_retention_per_task == 0:
        return ()
    return tuple(
        path
        for task in config.profile.alignment_retention_tasks
        if task not in evaluated and (path := config.data_dir / f"{task}_train.jsonl").is_file()
    )


def general_retention_file(config: RunConfig) -> Path | None:
    """Stage 0's general retention file (base-model answers to everyday prompts), when the
    profile uses it and the data holds it."""
    path = config.data_dir / RETENTION_FILE
    if config.profile.alignment_retention_general > 0 and path.is_file():
        return path
    return None


def _optional(path: Path) -> Path | None:
    return path if path.is_file() else None


def _training_settings(profile: BenchProfile) -> dict[str, Any]:
    """The profile's settings every fine-tune shares (scheduler settings go per method)."""
    settings = profile.to_dict()
    return {
        key: settings[key]
        for key in ("batch_size", "safety_batch_size", "learning_rate", "lora", "max_length")
    }


def _named_safety_batch_size(profile: BenchProfile) -> int:
    """The alignment batch of the named profile that ``profile`` was made from (its own when
    its name is not one of PROFILES)."""
    named = PROFILES.get(profile.name)
    return named.safety_batch_size if named is not None else profile.safety_batch_size


def cell_training_keys(profile: BenchProfile, method: BenchMethod) -> list[dict[str, Any]]:
    """The training settings a fine-tune cell of ``method`` is keyed on: the one its digest
    holds, then any under which earlier code keyed the same cell.

    The alignment budget keys only the methods that read D_safe (mix, the BDS variants, Lisa):
    their ``safety_batch_size``, and ``safety_every`` when it is not 1 (so cells computed
    before the setting existed keep their digests). A method that reads no D_safe (sft, filter,
    vaccine, booster, repnoise) trains the same under every budget, so its key holds the named
    profile's alignment batch whatever the run's: its cells, the clean run among them, are the
    same cells in a default-budget and a candidate-budget folder and can be copied from one to
    the other. Earlier code keyed them on the run's own alignment batch; that key is accepted
    too, so no finished cell is recomputed.
    """
    settings = _training_settings(profile)
    if method.uses_safety:
        if profile.safety_every != 1:
            settings["safety_every"] = profile.safety_every
        return [settings]
    named = _named_safety_batch_size(profile)
    if named == profile.safety_batch_size:
        return [settings]
    return [{**settings, "safety_batch_size": named}, settings]


def cell_scheduler_key(scheduler: Mapping[str, Any]) -> dict[str, Any]:
    """The scheduler settings a fine-tune cell's digest holds, from `SchedulerSettings` as a
    dict (a cell's recorded ``settings.train.scheduler`` is one too)."""
    return {
        "kind": scheduler["kind"],
        "reference": scheduler["reference"],
        "update": scheduler["update"],
        "learning_rate": scheduler["learning_rate"],
        "options": scheduler["options"],
        # Only when not "after" (the library's default when the digest was designed), so
        # earlier cells keep their digests.
        **(
            {"loss_timing": scheduler["loss_timing"]}
            if scheduler.get("loss_timing", "after") != "after"
            else {}
        ),
        # Only when set, so cells computed before the option existed keep their digests.
        **(
            {"entropy_weight": scheduler["entropy_weight"]}
            if scheduler.get("entropy_weight")
            else {}
        ),
        **(
            {
                "sgld": {
                    "temperature": scheduler["sgld_temperature"],
                    "burn_in": scheduler["sgld_burn_in"],
                    "prior_std": scheduler["prior_std"],
                    "step_decay": scheduler["sgld_step_decay"],
                    "record_last": scheduler["record_last"],
                    "record_every": scheduler["record_every"],
                }
            }
            if scheduler.get("sgld")
            else {}
        ),
    }


def alignment_rows_per_step(profile: BenchProfile, method: BenchMethod) -> float:
    """Alignment rows a step of ``method`` trains on, on average (for the ETA)."""
    return profile.safety_batch_size / profile.safety_every if method.uses_safety else 0.0


def _fine_tune_runs(config: RunConfig, task: str) -> list[tuple[str, float | None, Path]]:
    """(method, share, D_ft file) of every fine-tune of ``task``: the clean run (sft at p = 0)
    first, then every share and method of the profile (or of the custom training file)."""
    runs: list[tuple[str, float | None, Path]] = []

    def add(method_name: str, share: float | None, path: Path) -> None:
        if all((name, file) != (method_name, path) for name, _, file in runs):
            runs.append((method_name, share, path))

    if config.train_file is None or (config.data_dir / ft_file_name(task, 0.0)).is_file():
        add("sft", 0.0, _train_file(config, task, 0.0))
    if config.train_file is not None:
        shares = [(_share_of(load_examples(config.train_file)), config.train_file)]
    else:
        shares = [(share, _train_file(config, task, share)) for share in config.profile.shares]
    for share, path in shares:
        for method_name in config.profile.methods:
            add(method_name, share, path)
    return runs


def shipped_scheduler_digest() -> str:
    """sha256 over the shipped pretrained scheduler's files (what `filter` and the check use)."""
    from bds_core.scoring import default_scheduler_path

    folder = default_scheduler_path()
    return _digest(
        {path.name: file_sha256(path) for path in sorted(folder.glob("*")) if path.is_file()}
    )


def plan_run(config: RunConfig, judge: Judge) -> tuple[list[CellPlan], _Inputs]:
    """Every cell of the run, in order, with its digest; checks every input file exists."""
    profile = config.profile
    data_dir = config.data_dir
    if not data_dir.is_dir():
        raise BenchRunError(
            f"data folder {data_dir} does not exist; build it with "
            f"`bds bench build-data --out {data_dir}`"
        )
    safety_file = _require(config.safety_file or data_dir / SAFETY_FILE, "alignment set D_safe")
    eval_prompts_file = _require(
        config.eval_prompts_file or data_dir / EVAL_PROMPTS_FILE, "harmful evaluation prompts"
    )
    if config.train_file is not None:
        _require(config.train_file, "training file")
    alignment = _alignment_settings(config)
    retention = retention_files(config, resolve_tasks(config))
    general = general_retention_file(config)
    everyday_file = _optional(data_dir / EVAL_FILES[EVERYDAY])
    lookalike_file = _optional(data_dir / EVAL_FILES[LOOKALIKE])
    aligned_key = alignment_key(config.model, safety_file, alignment, retention, general)
    replay_file = (
        write_alignment_replay(config.out_dir, safety_file, alignment, retention, general)
        if profile.alignment_replay == "stage0"
        else None
    )
    eval_settings = EvalSettings(
        hs_max_new_tokens=profile.hs_max_new_tokens,
        task_max_new_tokens=profile.task_max_new_tokens,
        batch_size=profile.eval_batch_size,
    )
    inputs = _Inputs(
        safety_file,
        eval_prompts_file,
        alignment,
        aligned_key,
        eval_settings,
        judge_name(judge),
        retention,
        general,
        everyday_file,
        lookalike_file,
        replay_file,
    )
    common = {
        "version": CELL_FORMAT_VERSION,
        "model": config.model,
        "aligned_key": aligned_key,
        "seed": config.seed,
        "judge": inputs.judge,
        "eval": {
            "n_eval_prompts": profile.n_eval_prompts,
            "n_task_items": profile.n_task_items,
            "hs_max_new_tokens": profile.hs_max_new_tokens,
            "task_max_new_tokens": profile.task_max_new_tokens,
            "batch_size": profile.eval_batch_size,
            "eval_prompts_sha256": file_sha256(eval_prompts_file),
            "n_everyday_prompts": profile.n_everyday_prompts,
            "n_lookalike_prompts": profile.n_lookalike_prompts,
            "everyday_sha256": file_sha256(everyday_file) if everyday_file else None,
            "lookalike_sha256": file_sha256(lookalike_file) if lookalike_file else None,
        },
    }
    n_prompts = len(evaluation_subset(load_examples(eval_prompts_file), profile.n_eval_prompts))
    for path, limit in (
        (everyday_file, profile.n_everyday_prompts),
        (lookalike_file, profile.n_lookalike_prompts),
    ):
        if path is not None:
            n_prompts += len(evaluation_subset(load_examples(path), limit))
    plans: list[CellPlan] = []
    for task in resolve_tasks(config):
        task_file = data_dir / f"{task}_eval.jsonl"
        n_items = len(evaluation_subset(load_examples(task_file), profile.n_task_items))
        eval_units = float(
            n_prompts * profile.hs_max_new_tokens + n_items * profile.task_max_new_tokens
        )
        task_common = {**common, "task": task, "task_eval_sha256": file_sha256(task_file)}
        plans.append(
            CellPlan(
                cell_id=f"{task}__{BASE_METHOD}",
                kind="base",
                task=task,
                method=BASE_METHOD,
                share=None,
                train_file=None,
                steps=0,
                n_train=0,
                digest=_digest({**task_common, "kind": "base"}),
                work_units={"eval": eval_units},
            )
        )
        holdout = data_dir / HOLDOUT_FILE
        if profile.pretrained_scheduler_check and holdout.is_file():
            n_scored = len(load_examples(holdout)) + len(load_examples(task_file))
            plans.append(
                CellPlan(
                    cell_id=f"{task}__{DETECTION_METHOD}",
                    kind="detection",
                    task=task,
                    method=DETECTION_METHOD,
                    share=None,
                    train_file=holdout,
                    steps=0,
                    n_train=0,
                    digest=_digest(
                        {
                            "version": CELL_FORMAT_VERSION,
                            "kind": "detection",
                            "task_eval_sha256": task_common["task_eval_sha256"],
                            "holdout_sha256": file_sha256(holdout),
                            "scheduler": shipped_scheduler_digest(),
                        }
                    ),
                    work_units={"score": float(n_scored)},
                )
            )
        runs = _fine_tune_runs(config, task)
        for (method_name, share, path), seed in (
            (run, seed) for run in runs for seed in fine_tune_seeds(config)
        ):
            method = get_method(method_name)
            examples = load_examples(path)
            steps = profile.steps_for(len(examples))
            rows = profile.batch_size + alignment_rows_per_step(profile, method)
            custom = config.train_file is not None and path == config.train_file
            label = "custom" if custom else share_label(share if share is not None else 0.0)
            scheduler = method.scheduler_settings(profile)
            training_keys = cell_training_keys(profile, method)
            payload: dict[str, Any] = {
                **task_common,
                "kind": "fine-tune",
                "method": method_name,
                "train_method": method.train_method,
                "scheduler": cell_scheduler_key(asdict(scheduler)),
                "share": share,
                "train_sha256": file_sha256(path),
                "safety_sha256": file_sha256(inputs.replayed),
                "steps": steps,
                "training": training_keys[0],
                "filter_scheduler": (
                    shipped_scheduler_digest() if method.train_method == "filter" else None
                ),
                # Only when they apply, so earlier cells keep their digests.
                **({"finetune_seed": seed} if seed != config.seed else {}),
                **(
                    {"baseline": _baseline_record(config, method.baseline)}
                    if method.baseline
                    else {}
                ),
                **(
                    {"transfer_scheduler": shipped_scheduler_digest()}
                    if method.scheduler_init == "shipped"
                    else {}
                ),
            }
            plans.append(
                CellPlan(
                    cell_id=f"{task}__{method_name}__{label}{seed_suffix(config, seed)}",
                    kind="fine-tune",
                    task=task,
                    method=method_name,
                    share=share,
                    train_file=path,
                    steps=steps,
                    n_train=len(examples),
                    digest=_digest(payload),
                    work_units={"train": float(steps * rows), "eval": eval_units},
                    seed=seed,
                    accepted_digests=tuple(
                        _digest({**payload, "training": key}) for key in training_keys[1:]
                    ),
                )
            )
    return plans, inputs


def fine_tune_seeds(config: RunConfig) -> tuple[int, ...]:
    """The fine-tuning seeds of a run: ``seeds``, or the run's one ``seed``."""
    seeds = config.seeds or (config.seed,)
    if len(set(seeds)) != len(seeds):
        raise BenchRunError(f"fine-tuning seeds must be distinct, got {list(seeds)}")
    return seeds


def seed_suffix(config: RunConfig, seed: int) -> str:
    """The cell-id suffix of a fine-tuning seed: none for the run's own seed (so one-seed runs
    keep their ids), ``__s<seed>`` for the others."""
    return "" if seed == config.seed else f"__s{seed}"


def _baseline_record(config: RunConfig, baseline: str) -> dict[str, Any]:
    """What a baseline cell's digest holds of it: its settings and, for the alignment-stage
    ones that read harmful data, the harmful alignment file's hash."""
    record: dict[str, Any] = {"method": baseline, **config.baselines.for_method(baseline)}
    if baseline in NEEDS_HARMFUL:
        record["harmful_sha256"] = file_sha256(harmful_alignment_file(config.data_dir))
    return record


def check_existing_cells(out_dir: Path, plans: Sequence[CellPlan]) -> dict[str, CellResult]:
    """Finished cells of this plan; BenchRunError when one was computed with other settings."""
    finished: dict[str, CellResult] = {}
    for plan in plans:
        path = cell_path(out_dir, plan.cell_id)
        if not path.is_file():
            continue
        try:
            cell = read_cell(path)
        except ResultsError as error:
            raise BenchRunError(f"{error}; delete it to recompute that cell") from None
        if cell.status == "failed":
            continue  # retried by this run
        if not plan.accepts(cell.digest):
            raise BenchRunError(
                f"{path} was computed with other settings or data than this run (a different "
                "model, seed, profile setting or input file). Use another --out folder, or "
                "delete that file to recompute the cell"
            )
        finished[plan.cell_id] = cell
    return finished


# ---------------------------------------------------------------------------------- running


class _TrainProgress(TrainerCallback):
    """Trainer steps -> run progress."""

    def __init__(self, report: Callable[[int, int], None]) -> None:
        self.report = report
        self.start_step = 0

    def on_start(self, info: dict[str, Any]) -> None:
        self.start_step = int(info["start_step"])
        self.report(self.start_step, int(info["total_steps"]))

    def on_step(self, event: ProgressEvent) -> None:
        self.report(event.step, event.total_steps)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def machine_info() -> dict[str, Any]:
    """The machine a run used (recorded with the results)."""
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


class BenchRunner:
    """Runs the plan of a `RunConfig`: stage 0, then each cell not already finished."""

    def __init__(
        self,
        config: RunConfig,
        judge: Judge | None = None,
        on_progress: ProgressFn | None = None,
    ) -> None:
        self.config = config
        self.judge: Judge = judge if judge is not None else RefusalPhraseJudge()
        self.on_progress = on_progress
        self.plans, self.inputs = plan_run(config, self.judge)
        self.finished = check_existing_cells(config.out_dir, self.plans)
        self.todo = [plan for plan in self.plans if plan.cell_id not in self.finished]
        self.device = config.device
        self._eval_sets: dict[str, EvalSet] = {}
        self._index = 0
        self._cell_id = ""
        self.eta = EtaTracker([plan.work_units for plan in self.todo])

    # ---- progress
    def _report(self, stage: str, done: int, total: int) -> None:
        if self.on_progress is None:
            return
        eta = self.eta.eta_s()
        elapsed = self.eta.elapsed_s
        fraction = elapsed / (elapsed + eta) if eta is not None and elapsed + eta > 0 else 0.0
        self.on_progress(
            RunProgress(
                cell_index=self._index,
                n_cells=len(self.todo),
                cell_id=self._cell_id,
                stage=stage,
                stage_done=done,
                stage_total=total,
                elapsed_s=elapsed,
                eta_s=eta,
                fraction_done=fraction,
            )
        )

    def _stage(self, kind: str, stage: str, unit_scale: float) -> Callable[[int, int], None]:
        """Start a stage; returns the ``(done, total)`` reporter that also feeds the ETA."""
        self.eta.start_stage(kind)
        first = True

        def report(done: int, total: int) -> None:
            nonlocal first
            if first and done > 0:
                # A resumed stage: work done before this process does not count as done now.
                self.eta.skip(done * unit_scale)
            first = False
            self.eta.advance(done * unit_scale)
            self._report(stage, done, total)

        return report

    # ---- run
    def run(self) -> RunSummary:
        """Stage 0 (cached), then every cell not yet finished; returns what was done."""
        started = time.monotonic()
        config = self.config
        config.out_dir.mkdir(parents=True, exist_ok=True)
        run_entry: dict[str, Any] = {
            "command": config.command,
            "started_at": _now(),
            "finished_at": None,
            "profile": config.profile.name,
            "profile_settings": config.profile.to_dict(),
            "model": config.model,
            "seed": config.seed,
            "data_dir": str(config.data_dir),
            "data_manifest_sha256": (
                file_sha256(config.data_dir / "manifest.json")
                if (config.data_dir / "manifest.json").is_file()
                else None
            ),
            "judge": self.inputs.judge,
            "machine": machine_info(),
            "cells_planned": [plan.cell_id for plan in self.plans],
            "computed": [],
            "skipped": sorted(self.finished),
        }
        runs_log = self._read_run_log()
        runs_log.append(run_entry)
        write_json_atomically(config.out_dir / RUN_LOG, runs_log)

        aligned = self._align()
        run_entry["aligned_model"] = aligned.provenance
        computed: list[str] = []
        failed: dict[str, str] = {}
        for index, plan in enumerate(self.todo, start=1):
            self._index = index
            self._cell_id = plan.cell_id
            cell = self._run_cell(plan, aligned)
            write_cell(config.out_dir, cell)
            computed.append(plan.cell_id)
            if cell.error is not None:
                failed[plan.cell_id] = cell.error
            run_entry["computed"] = list(computed)
            run_entry["failed"] = dict(failed)
            write_json_atomically(config.out_dir / RUN_LOG, runs_log)
            self._report("done", 1, 1)
        self.eta.finish_stage()
        run_entry["finished_at"] = _now()
        run_entry["seconds"] = round(time.monotonic() - started, 1)
        write_json_atomically(config.out_dir / RUN_LOG, runs_log)
        return RunSummary(
            out_dir=config.out_dir,
            cells=self.plans,
            computed=computed,
            skipped=sorted(self.finished),
            failed=failed,
            aligned=aligned,
            elapsed_s=time.monotonic() - started,
        )

    def _read_run_log(self) -> list[dict[str, Any]]:
        path = self.config.out_dir / RUN_LOG
        if not path.is_file():
            return []
        try:
            data = json.loads(path.read_text())
        except ValueError as error:
            raise BenchRunError(f"{path} is not valid JSON ({error}); delete or fix it") from None
        if not isinstance(data, list):
            raise BenchRunError(f"{path} must hold a list of runs; delete or fix it")
        return data

    def _align(self) -> AlignedModel:
        self._cell_id = "stage 0: provider alignment"
        inputs = self.inputs
        units = float(inputs.alignment.steps * inputs.alignment.batch_size)
        from bds_core.bench.alignment import aligned_model_dir, default_aligned_cache
        from bds_core.models.assets import is_complete_directory

        root = self.config.cache_dir or default_aligned_cache()
        cached = is_complete_directory(aligned_model_dir(root, inputs.aligned_key))
        if not self.todo:
            # Nothing to compute: only the key is needed, and no model is touched.
            if cached:
                return ensure_aligned_model(
                    self.config.model,
                    inputs.safety_file,
                    inputs.alignment,
                    root,
                    retention_files=inputs.retention_files,
                    general_file=inputs.general_file,
                )
            return AlignedModel(
                aligned_model_dir(root, inputs.aligned_key), inputs.aligned_key, {}, False
            )
        if not cached:
            self.eta.remaining["train"] = self.eta.remaining.get("train", 0.0) + units
        report = self._stage("train", "aligning", float(inputs.alignment.batch_size))
        aligned = ensure_aligned_model(
            self.config.model,
            inputs.safety_file,
            inputs.alignment,
            root,
            device=self.device,
            callbacks=[_TrainProgress(report)],
            retention_files=inputs.retention_files,
            general_file=inputs.general_file,
        )
        self.eta.finish_stage()
        return aligned

    def _eval_set(self, task: str) -> EvalSet:
        if task not in self._eval_sets:
            profile = self.config.profile
            self._eval_sets[task] = EvalSet(
                harmful_prompts=evaluation_subset(
                    load_examples(self.inputs.eval_prompts_file), profile.n_eval_prompts
                ),
                task_items=evaluation_subset(
                    load_examples(self.config.data_dir / f"{task}_eval.jsonl"),
                    profile.n_task_items,
                ),
                is_correct=exact_matcher(task),
                everyday_prompts=self._benign_subset(
                    self.inputs.everyday_file, profile.n_everyday_prompts
                ),
                lookalike_prompts=self._benign_subset(
                    self.inputs.lookalike_file, profile.n_lookalike_prompts
                ),
            )
        return self._eval_sets[task]

    @staticmethod
    def _benign_subset(path: Path | None, limit: int | None) -> list[Example]:
        return [] if path is None else evaluation_subset(load_examples(path), limit)

    def _data_hashes(self, plan: CellPlan) -> dict[str, str]:
        paths = [self.inputs.eval_prompts_file, self.config.data_dir / f"{plan.task}_eval.jsonl"]
        paths += [
            path
            for path in (self.inputs.everyday_file, self.inputs.lookalike_file)
            if path is not None
        ]
        if plan.kind == "fine-tune":
            paths.append(self.inputs.replayed)
        if plan.train_file is not None:
            paths.append(plan.train_file)
        return {path.name: file_sha256(path) for path in paths}

    def _cell(
        self,
        plan: CellPlan,
        aligned: AlignedModel,
        metrics: CellMetrics,
        settings: dict[str, Any],
        samples: list[dict[str, Any]] | None = None,
        detection: PretrainedDetection | None = None,
    ) -> CellResult:
        return CellResult(
            cell_id=plan.cell_id,
            kind=plan.kind,
            task=plan.task,
            method=plan.method,
            share=plan.share,
            digest=plan.digest,
            model=self.config.model,
            aligned_model_key=aligned.key,
            judge=self.inputs.judge,
            seed=plan.seed if plan.kind == "fine-tune" else self.config.seed,
            profile=self.config.profile.name,
            metrics=metrics,
            detection=detection,
            data=self._data_hashes(plan),
            settings=settings,
            samples=samples or [],
            finished_at=_now(),
            command=self.config.command,
        )

    def _run_cell(self, plan: CellPlan, aligned: AlignedModel) -> CellResult:
        """Measure one cell; a failure is recorded as a failed cell and the run goes on."""
        scoped = reset_peak_rss()
        started = time.monotonic()
        try:
            if plan.kind == "base":
                cell = self._run_base(plan, aligned, started)
            elif plan.kind == "detection":
                cell = self._run_detection(plan, aligned, started)
            else:
                cell = self._run_fine_tune(plan, aligned, started)
        except Exception as error:  # one bad cell must not end a sweep of hours
            self.eta.finish_stage()
            work_dir = self.config.out_dir / WORK_DIR / plan.cell_id
            work_dir.mkdir(parents=True, exist_ok=True)
            (work_dir / "error.txt").write_text(traceback.format_exc())
            elapsed = round(time.monotonic() - started, 2)
            cell = self._cell(plan, aligned, CellMetrics(total_seconds=elapsed), {})
            cell.status = "failed"
            cell.error = f"{type(error).__name__}: {error}"
        cell.metrics.peak_rss_mb = round(peak_rss_mb(), 1)
        cell.metrics.peak_rss_scope = "cell" if scoped else "process"
        gc.collect()
        return cell

    def _evaluate(self, model: Any, tokenizer: Any, task: str) -> Any:
        eval_set = self._eval_set(task)
        settings = self.inputs.eval_settings
        # Units: generated tokens (HS prompts get more tokens than task items).
        # Harmful, everyday and look-unsafe prompts all get hs_max_new_tokens.
        n_prompts = (
            len(eval_set.harmful_prompts)
            + len(eval_set.everyday_prompts)
            + len(eval_set.lookalike_prompts)
        )
        self.eta.start_stage("eval")

        def report(done: int, total: int) -> None:
            tokens = (
                min(done, n_prompts) * settings.hs_max_new_tokens
                + max(done - n_prompts, 0) * settings.task_max_new_tokens
            )
            self.eta.advance(float(tokens))
            self._report("evaluating", done, total)

        report(0, n_prompts + len(eval_set.task_items))
        evaluation = evaluate_model(
            model, tokenizer, eval_set, self.judge, settings, on_progress=report
        )
        self.eta.finish_stage()
        return evaluation

    def _eval_record(self) -> dict[str, Any]:
        settings = self.inputs.eval_settings
        return {
            "hs_max_new_tokens": settings.hs_max_new_tokens,
            "task_max_new_tokens": settings.task_max_new_tokens,
            "batch_size": settings.batch_size,
            "eval_prompts_file": self.inputs.eval_prompts_file.name,
            "everyday_file": self.inputs.everyday_file.name if self.inputs.everyday_file else None,
            "lookalike_file": (
                self.inputs.lookalike_file.name if self.inputs.lookalike_file else None
            ),
        }

    def _run_base(self, plan: CellPlan, aligned: AlignedModel, started: float) -> CellResult:
        from bds_core.models import load_model

        self._report("loading M0", 0, 1)
        loaded = load_model(aligned.path, device=self.device)
        loaded.model.eval()
        loaded_at = time.monotonic()
        evaluation = self._evaluate(loaded.model, loaded.tokenizer, plan.task)
        finished = time.monotonic()
        metrics = CellMetrics(
            harmful_score=evaluation.harmful_score,
            fine_tune_accuracy=evaluation.fine_tune_accuracy,
            over_refusal=evaluation.over_refusal,
            **_general_metrics(evaluation),
            steps=0,
            train_seconds=round(loaded_at - started, 2),
            eval_seconds=round(finished - loaded_at, 2),
            total_seconds=round(finished - started, 2),
            n_eval_prompts=evaluation.n_eval_prompts,
            n_task_items=evaluation.n_task_items,
        )
        settings = {"alignment": aligned.provenance, "eval": self._eval_record()}
        del loaded
        return self._cell(plan, aligned, metrics, settings, evaluation.samples)

    def _run_detection(self, plan: CellPlan, aligned: AlignedModel, started: float) -> CellResult:
        from bds_core.scoring import default_scheduler_path, score_examples

        assert plan.train_file is not None
        task_file = self.config.data_dir / f"{plan.task}_eval.jsonl"
        examples = load_examples(plan.train_file) + load_examples(task_file)
        report = self._stage("score", "scoring with the shipped scheduler", 1.0)
        report(0, len(examples))
        scored = score_examples(examples, default_scheduler_path(), progress=report)
        self.eta.finish_stage()
        evaluation = scored.label_evaluation
        if evaluation is None:
            raise BenchRunError(
                f"{plan.train_file} and {task_file} carry no metadata.label; the detection "
                "check needs labelled data"
            )
        finished = time.monotonic()
        detection = PretrainedDetection(
            scheduler=str(default_scheduler_path()),
            files=[plan.train_file.name, task_file.name],
            n_examples=scored.n_examples,
            n_harmful=evaluation.n_harmful,
            auroc=evaluation.auroc,
            recall_at_5_fpr=evaluation.recall_at_5pct_fpr,
            flagged_precision=evaluation.flagged_precision,
            flagged_recall=evaluation.flagged_recall,
            harmful_share_estimate=scored.harmful_share_estimate,
            examples_per_second=scored.timing.examples_per_second,
        )
        metrics = CellMetrics(
            weight_auroc=evaluation.auroc,
            weight_recall_at_5_fpr=evaluation.recall_at_5pct_fpr,
            eval_seconds=round(finished - started, 2),
            total_seconds=round(finished - started, 2),
        )
        return self._cell(plan, aligned, metrics, {"scheduler": detection.scheduler}, [], detection)

    def _run_fine_tune(self, plan: CellPlan, aligned: AlignedModel, started: float) -> CellResult:
        from bds_core.bench.filter import drop_flagged
        from bds_core.training import BDSTrainer, TrainConfig

        assert plan.train_file is not None
        profile = self.config.profile
        method = get_method(plan.method)
        work_dir = self.config.out_dir / WORK_DIR / plan.cell_id
        digest_file = work_dir / "cell-digest.txt"
        if work_dir.exists() and (
            not digest_file.is_file() or not plan.accepts(digest_file.read_text().strip())
        ):
            # Left over from a cell with other settings: its checkpoints must not be resumed.
            shutil.rmtree(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        digest_file.write_text(plan.digest + "\n")
        if method.baseline in ALIGNMENT_STAGE_METHODS:
            aligned = self._baseline_aligned(method.baseline, aligned)
        if method.train_method == "lisa":
            return self._run_lisa(plan, aligned, started)
        uses_safety = method.uses_safety
        config = TrainConfig(
            model=str(aligned.path),
            train_file=plan.train_file,
            safety_file=self.inputs.replayed if uses_safety else None,
            out_dir=work_dir,
            method=method.train_method,
            lora=profile.lora,
            learning_rate=profile.learning_rate,
            batch_size=profile.batch_size,
            safety_batch_size=profile.safety_batch_size,
            # The alignment budget over time, for the methods that read D_safe (TrainConfig
            # applies it to bds and mix); the others keep the default.
            safety_every=profile.safety_every if uses_safety else 1,
            max_steps=plan.steps,
            max_length=profile.max_length,
            seed=plan.seed,
            scheduler=method.scheduler_settings(profile),
            checkpoint_every=profile.checkpoint_every,
            device=self.device,
        )
        rows = profile.batch_size + alignment_rows_per_step(profile, method)
        self._report("loading", 0, 1)
        trainer = BDSTrainer(
            config,
            callbacks=[_TrainProgress(self._stage("train", "training", float(rows)))],
            select_examples=drop_flagged(config) if method.train_method == "filter" else None,
        )
        trainer.setup()
        result = trainer.train()
        self.eta.finish_stage()
        trained_at = time.monotonic()
        evaluation = self._evaluate(trainer.model, trainer.tokenizer, plan.task)
        finished = time.monotonic()

        all_examples = trainer.data.all_train_examples
        n_kept = len(trainer.data.train_examples)
        detection = None
        separation: dict[str, float] = {}
        if method.has_weights and result.weights_file is not None:
            weights = read_final_weights(result.weights_file, all_examples)
            detection = weight_detection(weights, [ex.is_harmful for ex in all_examples])
            separation = read_interval_separation(result.weights_file, all_examples)
        train_metrics = result.metrics
        metrics = CellMetrics(
            harmful_score=evaluation.harmful_score,
            fine_tune_accuracy=evaluation.fine_tune_accuracy,
            over_refusal=evaluation.over_refusal,
            **_general_metrics(evaluation),
            weight_auroc=detection.auroc if detection else None,
            weight_recall_at_5_fpr=detection.recall_at_5_fpr if detection else None,
            benign_ess_ratio=detection.benign_ess_ratio if detection else None,
            ess_ratio=detection.ess_ratio if detection else None,
            mean_weight_harmful=detection.mean_weight_harmful if detection else None,
            mean_weight_benign=detection.mean_weight_benign if detection else None,
            interval_coverage=separation.get("interval_coverage"),
            harmful_interval_below_one=separation.get("harmful_below_one"),
            benign_interval_not_below_one=separation.get("benign_not_below_one"),
            seconds_per_step=train_metrics["seconds_per_step"] or None,
            steps=result.steps,
            passes=round(result.steps * profile.batch_size / n_kept, 3),
            train_seconds=round(trained_at - started, 2),
            eval_seconds=round(finished - trained_at, 2),
            total_seconds=round(finished - started, 2),
            n_train_examples=n_kept,
            n_harmful_examples=sum(1 for ex in all_examples if ex.is_harmful),
            n_dropped_examples=train_metrics["num_dropped_examples"],
            n_eval_prompts=evaluation.n_eval_prompts,
            n_task_items=evaluation.n_task_items,
        )
        train_config = config.to_dict()
        for machine_path in ("model", "train_file", "safety_file", "out_dir"):
            value = train_config.get(machine_path)
            train_config[machine_path] = Path(value).name if value else value
        settings = {
            "train": train_config,
            "eval": self._eval_record(),
            "resumed_from_step": result.resumed_from_step,
            "final_loss": train_metrics["final_loss"],
        }
        del trainer
        # The trainer's weights.jsonl and metrics.json stay; checkpoints and adapter go.
        shutil.rmtree(work_dir / "checkpoints", ignore_errors=True)
        shutil.rmtree(work_dir / "adapter", ignore_errors=True)
        return self._cell(plan, aligned, metrics, settings, evaluation.samples)

    def _baseline_aligned(self, baseline: str, stage0: AlignedModel) -> AlignedModel:
        """The M0 variant of an alignment-stage baseline (cached next to stage 0's M0)."""
        from bds_core.bench.alignment import default_aligned_cache

        inputs = self.inputs
        harmful = (
            harmful_alignment_file(self.config.data_dir) if baseline in NEEDS_HARMFUL else None
        )
        report = self._stage(
            "train", f"aligning with {baseline}", float(inputs.alignment.batch_size)
        )
        variant = ensure_baseline_aligned_model(
            baseline,
            self.config.model,
            inputs.safety_file,
            inputs.alignment,
            stage0.key,
            self.config.cache_dir or default_aligned_cache(),
            self.config.baselines,
            harmful_file=harmful,
            retention_files=inputs.retention_files,
            general_file=inputs.general_file,
            device=self.device,
            on_step=report,
        )
        self.eta.finish_stage()
        return variant

    def _run_lisa(self, plan: CellPlan, aligned: AlignedModel, started: float) -> CellResult:
        """A Lisa cell: M0 fine-tuned on D_ft with Lisa's alternating proximal schedule."""
        assert plan.train_file is not None
        profile = self.config.profile
        examples = load_examples(plan.train_file)
        self._report("loading", 0, 1)
        lisa = run_lisa(
            aligned.path,
            examples,
            load_examples(self.inputs.replayed),
            profile.lora,
            profile.learning_rate,
            profile.batch_size,
            profile.safety_batch_size,
            plan.steps,
            profile.max_length,
            plan.seed,
            self.config.baselines.lisa,
            alignment_every=profile.safety_every,
            device=self.device,
            on_step=self._stage("train", "training (lisa)", float(profile.batch_size)),
        )
        self.eta.finish_stage()
        trained_at = time.monotonic()
        evaluation = self._evaluate(lisa.model, lisa.tokenizer, plan.task)
        finished = time.monotonic()
        states = lisa.result.states
        metrics = CellMetrics(
            harmful_score=evaluation.harmful_score,
            fine_tune_accuracy=evaluation.fine_tune_accuracy,
            over_refusal=evaluation.over_refusal,
            **_general_metrics(evaluation),
            seconds_per_step=round(lisa.seconds_per_step, 4) or None,
            steps=states.count("fine-tuning"),
            passes=round(states.count("fine-tuning") * profile.batch_size / len(examples), 3),
            train_seconds=round(trained_at - started, 2),
            eval_seconds=round(finished - trained_at, 2),
            total_seconds=round(finished - started, 2),
            n_train_examples=len(examples),
            n_harmful_examples=sum(1 for ex in examples if ex.is_harmful),
            n_eval_prompts=evaluation.n_eval_prompts,
            n_task_items=evaluation.n_task_items,
        )
        settings = {
            "train": {
                "method": "lisa",
                "model": aligned.path.name,
                "train_file": plan.train_file.name,
                "safety_file": self.inputs.replayed.name,
                "seed": plan.seed,
                "user_steps": states.count("fine-tuning"),
                "alignment_steps": states.count("alignment"),
                **_training_settings(profile),
                "safety_every": profile.safety_every,
                "lisa": self.config.baselines.for_method("lisa"),
            },
            "eval": self._eval_record(),
            "final_loss": lisa.result.losses[-1] if lisa.result.losses else None,
        }
        del lisa
        return self._cell(plan, aligned, metrics, settings, evaluation.samples)


def _general_metrics(evaluation: Any) -> dict[str, Any]:
    """General over-refusal and degenerate-answer metrics of an evaluation (CellMetrics fields)."""
    return {
        "everyday_refusal": evaluation.everyday_refusal,
        "lookalike_refusal": evaluation.lookalike_refusal,
        "degenerate_harmful": evaluation.degenerate_harmful,
        "degenerate_everyday": evaluation.degenerate_everyday,
        "n_everyday_prompts": evaluation.n_everyday_prompts or None,
        "n_lookalike_prompts": evaluation.n_lookalike_prompts or None,
    }


def run_benchmark(
    config: RunConfig, judge: Judge | None = None, on_progress: ProgressFn | None = None
) -> RunSummary:
    """Run (or continue) the benchmark of ``config``; finished cells are skipped.

    ``judge`` decides refusals for HS and over-refusal (default `RefusalPhraseJudge()`);
    ``on_progress`` receives a `RunProgress` at every step of every stage.
    """
    return BenchRunner(config, judge=judge, on_progress=on_progress).run()
