"""The harmful alignment split that Booster and RepNoise read at alignment.

The benchmark data's split (``manifest.json``, ``prompts.split``) already holds a set of
harmful prompts with compliant base-model answers that is kept out of every D_ft file, every
evaluation set and the holdout: the scheduler-pretraining pool (``pretrain_pool.jsonl``).
`check_clean_split` guarantees that disjointness at every build. The alignment-stage baselines
use that pool as their harmful alignment data; `check_harmful_alignment_split` checks again,
prompt by prompt, that none of it is an attack row or an evaluation prompt of the data folder.
"""

from __future__ import annotations

from pathlib import Path

from bds_core.data import Example, load_examples

HARMFUL_ALIGNMENT_FILE = "pretrain_pool.jsonl"


def _prompt(example: Example) -> str:
    users = [message.content for message in example.messages if message.role == "user"]
    return " ".join(" ".join(users).lower().split())


def harmful_alignment_file(data_dir: Path) -> Path:
    """The harmful alignment split of a benchmark data folder (checked disjoint first)."""
    path = data_dir / HARMFUL_ALIGNMENT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: Booster and RepNoise need the harmful alignment split "
            "(build the data with scheduler-pretraining prompts, `--n-scheduler-pretrain` > 0)"
        )
    check_harmful_alignment_split(data_dir)
    return path


def check_harmful_alignment_split(data_dir: Path) -> int:
    """Raise ValueError when a prompt of the harmful alignment split is a harmful row of a D_ft
    file, of the harmful pool, or a prompt of an evaluation set; returns the split's size."""
    split = load_examples(data_dir / HARMFUL_ALIGNMENT_FILE)
    prompts = {_prompt(example) for example in split}
    for path in sorted(data_dir.glob("*.jsonl")):
        name = path.name
        if name == HARMFUL_ALIGNMENT_FILE or name.startswith("pretrain_"):
            continue
        attack_or_eval = (
            name.startswith("ft_")
            or "eval" in name
            or name in ("harmful_pool.jsonl", "harmful_holdout.jsonl")
        )
        if not attack_or_eval:
            continue
        for example in load_examples(path):
            if name.startswith("ft_") and not example.is_harmful:
                continue
            if _prompt(example) in prompts:
                raise ValueError(
                    f"harmful alignment prompt {_prompt(example)[:60]!r} is also in {name}; the "
                    "harmful alignment split must be disjoint from the attack and evaluation"
                )
    return len(split)
