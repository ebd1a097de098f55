"""How fast the benchmark's greedy evaluation runs at several batch sizes, and whether the
answers change (docs/benchmarks.md, "Evaluation batch").

    .venv/bin/python scripts/eval_batch_speed.py --model-dir ~/.cache/bds/bench-aligned/m0-... \
        --data data/bench --batch-sizes 8,16,32

Generates the answers of the first ``--per-set`` everyday and harmful evaluation prompts once per
batch size on one torch thread and prints CPU and wall seconds, and how many answers differ from
those of the first batch size.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer


def main(
    model_dir: Annotated[Path, typer.Option(help="a saved model folder (M0 of the benchmark)")],
    data: Annotated[Path, typer.Option(help="folder written by `bds bench build-data`")],
    batch_sizes: Annotated[str, typer.Option(help="comma-separated batch sizes")] = "8,16,32",
    per_set: Annotated[int, typer.Option(help="prompts taken from each set")] = 32,
    max_new_tokens: Annotated[int, typer.Option(help="new tokens per answer")] = 64,
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bds_core.data import load_examples
    from bds_core.eval.generation import generate_answers

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompts: list[str] = []
    for name in ("eval_everyday_prompts.jsonl", "eval_harmful_prompts.jsonl"):
        examples = load_examples(data / name)[:per_set]
        prompts += [example.messages[0].content for example in examples]
    reference: list[str] | None = None
    for size in (int(part) for part in batch_sizes.split(",")):
        cpu, wall = time.process_time(), time.perf_counter()
        answers = generate_answers(model, tokenizer, prompts, max_new_tokens, size)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        if reference is None:
            reference, verdict = answers, "reference"
        else:
            differ = sum(a != b for a, b in zip(answers, reference, strict=True))
            verdict = "identical" if differ == 0 else f"{differ} differ"
        typer.echo(f"batch {size}: {cpu:.1f} CPU s, {wall:.1f} wall s, answers {verdict}")


if __name__ == "__main__":
    typer.run(main)
