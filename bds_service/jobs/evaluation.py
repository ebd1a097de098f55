"""Post-training safety evaluation: harmful score before and after, fine-tune accuracy.

The harmful score (HS) is measured on the provider's held-out harmful prompts
(``BDS_EVAL_HARMFUL_PROMPTS``), first with the base model and then with the trained adapter;
the fine-tune accuracy (FA) is exact-match accuracy on the job's validation file when it has
one. Both come from ``bds_core.eval`` with its refusal-phrase judge, whose name is reported with
the numbers.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from bds_service.settings import Settings

logger = logging.getLogger(__name__)


class EvaluationConfigError(ValueError):
    """The provider's evaluation settings point at something unusable."""


def load_harmful_prompts(path: Path, limit: int) -> list[str]:
    """The first ``limit`` prompts of a .txt (one per line), .jsonl or .csv prompt file.

    JSONL lines carry ``prompt`` (or ``forbidden_prompt``, or ``messages`` whose last user turn
    is the prompt); CSV files need a ``forbidden_prompt`` or ``prompt`` column (StrongREJECT's).
    """
    if not path.is_file():
        raise EvaluationConfigError(f"harmful prompt file {path} does not exist")
    prompts: list[str] = []
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            column = next(
                (
                    name
                    for name in ("forbidden_prompt", "prompt")
                    if name in (reader.fieldnames or [])
                ),
                None,
            )
            if column is None:
                raise EvaluationConfigError(
                    f"{path}: needs a 'forbidden_prompt' or 'prompt' column, "
                    f"has {reader.fieldnames}"
                )
            prompts = [row[column].strip() for row in reader if (row[column] or "").strip()]
    elif suffix == ".jsonl":
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                record = json.loads(line)
                prompt = record.get("prompt") or record.get("forbidden_prompt")
                if prompt is None and isinstance(record.get("messages"), list):
                    users = [
                        m.get("content") for m in record["messages"] if m.get("role") == "user"
                    ]
                    prompt = users[-1] if users else None
                if not isinstance(prompt, str) or not prompt.strip():
                    raise EvaluationConfigError(f"{path}: line {number} has no prompt")
                prompts.append(prompt.strip())
    else:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        prompts = [prompt for prompt in prompts if prompt]
    if not prompts:
        raise EvaluationConfigError(f"{path} holds no prompts")
    return prompts[:limit]


EvaluationProgress = Callable[[str, int, int], None]
"""Called after each generated batch with (stage, answers done, answers in all)."""

STAGE_BEFORE = "harmful prompts, base model"
STAGE_AFTER = "harmful prompts, fine-tuned model"
STAGE_VALIDATION = "validation examples, fine-tuned model"


def evaluation_size(settings: Settings, validation_file: Path | None) -> tuple[list[str], int]:
    """The harmful prompts the evaluation answers and the number of validation examples."""
    from bds_core.data import load_examples

    prompts = (
        load_harmful_prompts(Path(settings.eval_harmful_prompts), settings.eval_max_prompts)
        if settings.eval_harmful_prompts
        else []
    )
    n_validation = (
        min(len(load_examples(validation_file)), settings.eval_max_examples)
        if validation_file is not None
        else 0
    )
    return prompts, n_validation


def evaluate_adapter(
    *,
    model_spec: str,
    adapter_dir: Path,
    validation_file: Path | None,
    settings: Settings,
    on_progress: EvaluationProgress | None = None,
) -> dict[str, Any]:
    """HS before and after training, and FA after it; parts that are not configured are None.

    Answers are generated ``settings.eval_batch_size`` at a time, and ``on_progress`` hears
    about every batch, so a slow evaluation (minutes on a CPU) is visible while it runs.
    """
    import torch
    from peft import PeftModel

    from bds_core.data import load_examples
    from bds_core.eval import GenerativeModel, RefusalPhraseJudge, generate_answers
    from bds_core.eval.generation import Prompt, normalise_answer
    from bds_core.eval.judges import judge_name
    from bds_core.models import load_model

    judge = RefusalPhraseJudge()
    prompts, n_validation = evaluation_size(settings, validation_file)
    report: dict[str, Any] = {
        "judge": judge_name(judge),
        "harmful_prompts_file": Path(settings.eval_harmful_prompts).name
        if settings.eval_harmful_prompts
        else None,
        "n_harmful_prompts": len(prompts),
        "harmful_score_before": None,
        "harmful_score_after": None,
        "finetune_accuracy": None,
        "n_validation_examples": 0,
        "sample_answers_after": [],
    }
    if not prompts and validation_file is None:
        report["note"] = "no held-out harmful prompts configured and no validation file"
        return report

    total = 2 * len(prompts) + n_validation
    done = 0
    batch_size = settings.eval_batch_size

    def answer(model: GenerativeModel, questions: Sequence[Prompt], stage: str) -> list[str]:
        nonlocal done
        answers: list[str] = []
        for start in range(0, len(questions), batch_size):
            batch = questions[start : start + batch_size]
            answers += generate_answers(
                model, loaded.tokenizer, batch, settings.eval_max_new_tokens, batch_size
            )
            done += len(batch)
            if on_progress is not None:
                on_progress(stage, done, total)
        return answers

    def harmful_percent(answers: list[str]) -> tuple[float, list[bool]]:
        refusals = [judge.is_refusal(text) for text in answers]
        return 100.0 * sum(not refused for refused in refusals) / len(answers), refusals

    loaded = load_model(model_spec)
    base_model = cast(GenerativeModel, loaded.model)
    with torch.no_grad():
        if prompts:
            report["harmful_score_before"], _ = harmful_percent(
                answer(base_model, prompts, STAGE_BEFORE)
            )
        tuned = PeftModel.from_pretrained(loaded.model, str(adapter_dir))
        tuned.eval()
        if prompts:
            answers_after = answer(tuned, prompts, STAGE_AFTER)
            report["harmful_score_after"], refusals = harmful_percent(answers_after)
            report["sample_answers_after"] = [
                {"prompt": prompt[:200], "answer": text[:300], "refused": refused}
                for prompt, text, refused in list(
                    zip(prompts, answers_after, refusals, strict=False)
                )[:5]
            ]
        if validation_file is not None and n_validation:
            examples = load_examples(validation_file)[:n_validation]
            report["n_validation_examples"] = len(examples)
            answers_valid = answer(
                tuned, [example.prompt_messages for example in examples], STAGE_VALIDATION
            )
            n_correct = sum(
                normalise_answer(text) == normalise_answer(example.answer)
                for example, text in zip(examples, answers_valid, strict=True)
            )
            report["finetune_accuracy"] = 100.0 * n_correct / len(examples)
    return report
