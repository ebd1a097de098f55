"""Scoring throughput of the amortized scheduler on this machine's CPU (a benchmark, not a test).

Measures examples per second of `Scorer.score` (tokenise, encode, head, calibration) with the
embedding cache off, so every example is encoded: the cost a fresh upload pays. The default
input is synthetic chat examples whose encoder length is spread evenly between --min-tokens
and --max-tokens (default 16-256); pass --file to time a real dataset instead.

    .venv/bin/python scripts/bench_scoring.py --threads 2
    .venv/bin/python scripts/bench_scoring.py --threads 2 --file data/bench/ft_arithmetic_p0.2.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

import torch

from bds_core.data import Example, load_examples
from bds_core.encoders import example_text
from bds_core.scoring.scorer import Scorer, default_scoring_scheduler_path

WORDS = (
    "the",
    "model",
    "answer",
    "data",
    "set",
    "train",
    "user",
    "system",
    "example",
    "safety",
    "report",
    "weight",
    "score",
    "because",
    "first",
    "second",
    "then",
    "which",
    "water",
    "city",
    "river",
    "market",
    "number",
    "people",
    "question",
    "simple",
    "explain",
)


def synthetic_examples(n: int, min_tokens: int, max_tokens: int, seed: int) -> list[Example]:
    """n chat examples whose lengths are spread evenly over [min_tokens, max_tokens] tokens."""
    rng = random.Random(seed)
    examples = []
    for index in range(n):
        target = min_tokens + (max_tokens - min_tokens) * index // max(n - 1, 1)
        prompt_words = max(2, target // 4)
        answer_words = max(2, target - prompt_words)
        prompt = " ".join(rng.choice(WORDS) for _ in range(prompt_words)) + f" ({index})?"
        answer = " ".join(rng.choice(WORDS) for _ in range(answer_words)) + "."
        examples.append(
            Example.create(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                line=index + 1,
            )
        )
    rng.shuffle(examples)
    return examples


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scheduler",
        type=Path,
        default=default_scoring_scheduler_path(),
        help="saved scheduler folder (default: the scoring one)",
    )
    parser.add_argument(
        "--file", type=Path, default=None, help="score this JSONL instead of synthetic examples"
    )
    parser.add_argument("--n", type=int, default=1000, help="synthetic examples")
    parser.add_argument("--min-tokens", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=64, help="encoder batch size")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed passes (the median is reported)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    scorer = Scorer.load(args.scheduler, use_cache=False)
    scorer.encoder.batch_size = args.batch_size
    if args.file is not None:
        examples = load_examples(args.file)
        source = str(args.file)
    else:
        examples = synthetic_examples(args.n, args.min_tokens, args.max_tokens, seed=0)
        source = f"synthetic, {args.min_tokens}-{args.max_tokens} tokens"
    lengths = scorer.encoder.token_counts([example_text(ex) for ex in examples])

    scorer.score(examples[: min(64, len(examples))])  # warm-up: allocations, lazy init
    rates, cpu_rates = [], []
    for _ in range(args.repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        scorer.score(examples)
        rates.append(len(examples) / (time.perf_counter() - started))
        cpu_rates.append(len(examples) / (time.process_time() - cpu_started))
    result = {
        "examples_per_second": round(statistics.median(rates), 1),
        "all_runs": [round(rate, 1) for rate in rates],
        # Per second of this process's CPU time (all its threads): what the wall-clock rate
        # would be with the cores to itself; on shared cores the wall-clock rate falls with load.
        "examples_per_cpu_second": round(statistics.median(cpu_rates), 1),
        "all_runs_cpu": [round(rate, 1) for rate in cpu_rates],
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "n_examples": len(examples),
        "source": source,
        "encoder": scorer.encoder.info.key,
        "encoder_tokens_mean": round(statistics.mean(lengths), 1),
        "encoder_tokens_max": max(lengths),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
