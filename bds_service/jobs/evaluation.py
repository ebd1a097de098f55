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


def evaluate_adapter(
    *,
    model_spec: str,
    adapter_dir: Path,
    validation_file: Path | None,
    settings: Settings,
) -> dict[str, Any]:
    """HS before and after training, and FA after it; parts that are not configured are None."""
    import torch
    from peft import PeftModel

    from bds_core.data import load_examples
    from bds_core.eval import (
        GenerativeModel,
        RefusalPhraseJudge,
        exact_match_accuracy,
        harmful_score,
    )
    from bds_core.eval.judges import judge_name
    from bds_core.models import load_model

    judge = RefusalPhraseJudge()
    prompts = (
        load_harmful_prompts(Path(settings.eval_harmful_prompts), settings.eval_max_prompts)
        if settings.eval_harmful_prompts
        else None
    )
    report: dict[str, Any] = {
        "judge": judge_name(judge),
        "harmful_prompts_file": Path(settings.eval_harmful_prompts).name
        if settings.eval_harmful_prompts
        else None,
        "n_harmful_prompts": len(prompts) if prompts else 0,
        "harmful_score_before": None,
        "harmful_score_after": None,
        "finetune_accuracy": None,
        "n_validation_examples": 0,
        "sample_answers_after": [],
    }
    if not prompts and validation_file is None:
        report["note"] = "no held-out harmful prompts configured and no validation file"
        return report

    loaded = load_model(model_spec)
    base_model = cast(GenerativeModel, loaded.model)
    with torch.no_grad():
        if prompts:
            before = harmful_score(
                base_model, loaded.tokenizer, prompts, judge, settings.eval_max_new_tokens
            )
            report["harmful_score_before"] = before.percent
        tuned = PeftModel.from_pretrained(loaded.model, str(adapter_dir))
        tuned.eval()
        if prompts:
            after = harmful_score(
                tuned, loaded.tokenizer, prompts, judge, settings.eval_max_new_tokens
            )
            report["harmful_score_after"] = after.percent
            report["sample_answers_after"] = [
                {"prompt": prompt[:200], "answer": answer[:300], "refused": refused}
                for prompt, answer, refused in list(
                    zip(prompts, after.answers, after.refusals, strict=False)
                )[:5]
            ]
        if validation_file is not None:
            examples = load_examples(validation_file)[: settings.eval_max_examples]
            report["n_validation_examples"] = len(examples)
            report["finetune_accuracy"] = exact_match_accuracy(
                tuned, loaded.tokenizer, examples, settings.eval_max_new_tokens
            )
    return report
