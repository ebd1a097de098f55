"""Scoring candidates side by side: throughput and detection with the shipped scheduler's head.

Encoders timed in turns in one process (so machine noise hits all alike), the embedding cache
off, on synthetic examples of --min-tokens to --max-tokens encoder tokens:
- `minilm-l6-v2`: the shipped default (float32, six transformer layers);
- `minilm-l6-v2-int8`: the same model with its linear layers quantised to int8 by PyTorch's
  dynamic quantisation (weights int8, activations quantised on the fly);
- `minilm-static`: MiniLM's token vectors mean-pooled, no transformer layers.
Detection (AUROC, recall at 5% false positives against the files' hidden labels, read only
here) is measured for the encoders the shipped head can read: the float32 model it was
pretrained on and its int8 copy (the static encoder needs a scheduler pretrained on it).

    .venv/bin/python scripts/bench_encoders.py --threads 1 --files data/bench/harmful_holdout.jsonl \
        data/bench/spell-number_eval.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scoring import synthetic_examples

from bds_core.data import load_examples
from bds_core.encoders import example_text, minilm_static_encoder
from bds_core.eval import auroc, recall_at_fpr
from bds_core.scoring.scorer import Scorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--min-tokens", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--files", type=Path, nargs="*", default=[])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    scorer = Scorer.load(use_cache=False)
    fp32 = scorer.encoder
    int8 = copy.copy(fp32)
    int8.model = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(fp32.model), {torch.nn.Linear}, dtype=torch.qint8
    )
    static = minilm_static_encoder()
    encoders = {"minilm-l6-v2": fp32, "minilm-l6-v2-int8": int8, "minilm-static": static}

    examples = synthetic_examples(args.n, args.min_tokens, args.max_tokens, seed=0)
    texts = [example_text(ex) for ex in examples]
    lengths = fp32.token_counts(texts)
    rates: dict[str, list[float]] = {name: [] for name in encoders}
    for encoder in encoders.values():
        encoder.encode(texts[:32])  # warm-up
    for repeat in range(args.repeats):
        names = list(encoders)
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            encoders[name].encode(texts)
            rates[name].append(len(texts) / (time.perf_counter() - started))
            print(f"repeat {repeat + 1} {name}: {rates[name][-1]:.1f} examples/s", flush=True)

    detection: dict[str, dict[str, float]] = {}
    if args.files:
        evaluated = [ex for path in args.files for ex in load_examples(path)]
        labels = [(ex.metadata or {}).get("label") == "harmful" for ex in evaluated]
        eval_texts = [example_text(ex) for ex in evaluated]
        embedded = {}
        for name in ("minilm-l6-v2", "minilm-l6-v2-int8"):
            embeddings = encoders[name].encode(eval_texts)
            embedded[name] = embeddings
            with torch.inference_mode():
                logits = scorer.scheduler.head(embeddings).float()
            harm = scorer.scheduler.calibration.harm_scores(logits)
            flags = (harm >= scorer.scheduler.calibration.threshold).tolist()
            scores = (-logits).tolist()
            detection[name] = {
                "auroc": auroc(scores, labels),
                "recall_at_5pct_fpr": recall_at_fpr(scores, labels, 0.05),
                "flagged_harmful": sum(f and lab for f, lab in zip(flags, labels, strict=True)),
                "flagged_benign": sum(f and not lab for f, lab in zip(flags, labels, strict=True)),
                "n_harmful": sum(labels),
                "n_benign": len(labels) - sum(labels),
            }
        cosine = torch.nn.functional.cosine_similarity(
            embedded["minilm-l6-v2"], embedded["minilm-l6-v2-int8"]
        )
        detection["int8_vs_fp32_cosine"] = {
            "min": float(cosine.min()),
            "mean": float(cosine.mean()),
        }

    result = {
        "examples_per_second_median": {k: round(statistics.median(v), 1) for k, v in rates.items()},
        "all_runs": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "n_examples": len(texts),
        "encoder_tokens_mean": round(statistics.mean(lengths), 1),
        "encoder_tokens_min_max": [min(lengths), max(lengths)],
        "threads": args.threads,
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "detection": detection,
        "files": [str(p) for p in args.files],
    }
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
