"""A safety head for the static encoder, distilled from the BDS-pretrained scheduler (label-free).

The BDS-pretrained scheduler (`bds_core/assets/schedulers/default`) reads all-MiniLM-L6-v2
embeddings (six transformer layers, about 57 examples/s on 2 cores). This fits the same MLP head
on `minilm-static` embeddings (MiniLM's token vectors mean-pooled, 100x cheaper) to reproduce
the teacher's logits on the teacher's own pretraining files, then fits the score calibration on
the student's logits exactly as `bds scheduler pretrain` does. No label is read to train or
calibrate: the targets are the teacher's logits. Labels are read only to evaluate on --eval
files (AUROC, recall at 5% FPR). The --train files are compared by sha256 with the ones named
in the teacher's provenance, and the result is saved with the student.

    .venv/bin/python scripts/distill_static_head.py --threads 1 --augment 4 \
        --train data/bench/pretrain_arithmetic.jsonl data/bench/pretrain_sort-words.jsonl \
        data/bench/pretrain_sentiment.jsonl \
        --eval data/bench/harmful_holdout.jsonl data/bench/spell-number_eval.jsonl \
        --out runs/static-distilled
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

import torch

from bds_core.data import Example, load_examples
from bds_core.encoders import embed_texts, example_text, minilm_static_encoder
from bds_core.eval import auroc, recall_at_fpr
from bds_core.schedulers.neural import SafetyHead, ScoreCalibration, save_scheduler
from bds_core.scoring.scorer import Scorer, default_scheduler_path


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def augmented_texts(examples: list[Example], copies: int, rng: random.Random) -> list[str]:
    """`copies` label-free variants of each example, for the teacher to label with its logits.

    The pretraining files hold whole answers of four styles; the variants show the student how
    the teacher scores text that is not exactly that: the answer cut short after a random number
    of words, or the prompt of one example paired with the answer of another (in turn).
    """
    variants = []
    for copy in range(copies):
        for example in examples:
            *context, answer = [
                {"role": message.role, "content": message.content} for message in example.messages
            ]
            if copy % 2 == 0:
                words = answer["content"].split()
                keep = rng.randint(1, max(1, len(words) - 1))
                answer = {**answer, "content": " ".join(words[:keep])}
            else:
                other = rng.choice(examples).messages[-1]
                answer = {"role": other.role, "content": other.content}
            variants.append(example_text(Example.create([*context, answer])))
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=Path, nargs="+", required=True)
    parser.add_argument("--eval", type=Path, nargs="*", default=[])
    parser.add_argument("--per-file", type=int, default=None, help="first N examples per file")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--also-eval",
        type=Path,
        nargs="*",
        default=[],
        help="benign files scored one by one against the --eval harmful rows (over-flagging)",
    )
    parser.add_argument(
        "--augment",
        type=int,
        default=4,
        help="label-free variants per training example (answers cut short, prompts and answers "
        "re-paired), scored by the teacher and added to the distillation set",
    )
    parser.add_argument("--out", type=Path, default=None, help="save the distilled scheduler")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    teacher = Scorer.load(default_scheduler_path(), use_cache=True)
    teacher_folder = teacher.scheduler.path
    teacher_files_sha256 = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(teacher_folder.glob("*"))
        if path.is_file()
    }
    train_sha256 = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in args.train}
    teacher_train_sha256 = sorted(
        run["train_file_sha256"] for run in teacher.scheduler.provenance.get("runs", [])
    )
    # Distilling on other data than the teacher's own pretraining files is allowed, but said.
    same_as_teacher = sorted(train_sha256.values()) == teacher_train_sha256
    if not same_as_teacher:
        print(
            "warning: the --train files are not the teacher's pretraining files "
            f"(teacher: {teacher.scheduler.provenance.get('config', {}).get('train_files')})"
        )
    static = minilm_static_encoder()
    train_examples = [ex for path in args.train for ex in load_examples(path)[: args.per_file]]
    train_texts = [example_text(ex) for ex in train_examples]
    variant_texts = augmented_texts(train_examples, args.augment, random.Random(args.seed))
    fit_texts = train_texts + variant_texts
    with torch.inference_mode():
        teacher_logits = teacher.scheduler.head(
            embed_texts(teacher.encoder, fit_texts, teacher.cache)
        ).float()
    student_inputs = static.encode(fit_texts)
    mean, scale = student_inputs.mean(0), student_inputs.std(0).clamp_min(1e-6)
    head = SafetyHead(student_inputs.shape[1], "mlp", 128, input_mean=mean, input_scale=scale)
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=1e-4)
    target = teacher_logits.detach().clone()
    for _ in range(args.steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(head(student_inputs).float(), target)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        all_student_logits = head(student_inputs).float()
    # Calibrated on the pretraining examples themselves, as `bds scheduler pretrain` does.
    n_train = len(train_texts)
    student_logits, train_target = all_student_logits[:n_train], target[:n_train]
    calibration = ScoreCalibration.fit(student_logits)
    fit = {
        "n_train": n_train,
        "mse": float(torch.nn.functional.mse_loss(student_logits, train_target)),
        "pearson": float(torch.corrcoef(torch.stack([student_logits, train_target]))[0, 1]),
    }
    if variant_texts:
        variant_logits, variant_target = all_student_logits[n_train:], target[n_train:]
        fit["n_variants"] = len(variant_texts)
        fit["variants_mse"] = float(torch.nn.functional.mse_loss(variant_logits, variant_target))
        fit["variants_pearson"] = float(
            torch.corrcoef(torch.stack([variant_logits, variant_target]))[0, 1]
        )

    def evaluate(paths: list[Path]) -> dict[str, object]:
        examples = [ex for path in paths for ex in load_examples(path)]
        labels = [(ex.metadata or {}).get("label") == "harmful" for ex in examples]
        with torch.no_grad():
            logits = head(static.encode([example_text(ex) for ex in examples])).float()
        flags = (calibration.harm_scores(logits) >= calibration.threshold).tolist()
        scores = (-logits).tolist()
        return {
            "files": [str(p) for p in paths],
            "n_harmful": sum(labels),
            "n_benign": len(labels) - sum(labels),
            "auroc": auroc(scores, labels),
            "recall_at_5pct_fpr": recall_at_fpr(scores, labels, 0.05),
            "flagged_harmful": sum(f and lab for f, lab in zip(flags, labels, strict=True)),
            "flagged_benign": sum(f and not lab for f, lab in zip(flags, labels, strict=True)),
        }

    evaluation = evaluate(args.eval) if args.eval else {}
    harmful_eval = [p for p in args.eval if "harmful" in p.name]
    more = {str(path): evaluate([*harmful_eval, path]) for path in args.also_eval}
    if args.out is not None:
        save_scheduler(
            args.out,
            head,
            static.info,
            calibration,
            provenance={
                "method": "distilled from the shipped scheduler's head logits",
                "label_free": True,
                "teacher": _relative(teacher_folder),
                "teacher_head_sha256": teacher_files_sha256["head.safetensors"],
                "teacher_files_sha256": teacher_files_sha256,
                "teacher_created_at": teacher.scheduler.provenance.get("created_at"),
                "train_sha256": train_sha256,
                "train_files_are_teacher_pretraining_files": same_as_teacher,
                "teacher_encoder": teacher.encoder.info.to_dict(),
                "train_files": [str(p) for p in args.train],
                "per_file": args.per_file,
                "augment": args.augment,
                "steps": args.steps,
                "seed": args.seed,
                "fit": fit,
                "command": "scripts/distill_static_head.py",
            },
        )

    result = {
        "fit": fit,
        "evaluation": evaluation,
        "per_benign_file": more,
        "train_files": [str(p) for p in args.train],
    }
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
