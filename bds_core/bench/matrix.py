"""Issue 19's matrix: the `bds bench run` commands, in the order that finishes the most
informative cells first.

Every step is one `bds bench run` command on the long-answer task (spell-number) with the full
profile's steps. Steps whose profile settings differ (the reduced alignment budget, the stronger
attack) write to their own results folder, since a folder only holds cells computed with the
same settings (each folder also gets its own clean run, sft at p = 0). Every command is
resumable: run the list again and finished cells are skipped. The order follows the issue:

1. the reduced alignment budget (2 alignment rows a step): mix, the best BDS variant and Lisa at
   p = 0.2 and 0.5;
2. p = 0.9: sft, mix and the best BDS variant;
3. the baselines and the BDS variants not yet run, with sft, mix and the other variants, at
   p = 0.2 and 0.5;
4. p = 0.9: the best baseline (all four while the best is not known);
5. the stronger attack (twice the LoRA learning rate) at p = 0.1: sft, mix and the best variant;
6. the remaining seeds: every command above again with all the seeds (the first seed's cells
   are skipped).

"The best BDS variant" has to be named before the comparison at p = 0.2 and 0.5 is in (the
reduced budget runs first); the default, bds-neural, is the variant that met the AUROC and ESS
targets at every share in the one-seed full profile (docs/benchmarks.md). Pass another with
``--best-bds`` if the evidence changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bds_core.bench.profiles import METHODS

TASK = "spell-number"
BASELINES = ("lisa", "booster", "vaccine", "repnoise")
ALL_P02_P05 = (
    "sft",
    "mix",
    "bds",
    "bds-neural",
    "bds-agnostic",
    "bds-transfer",
    "lisa",
    "booster",
    "vaccine",
    "repnoise",
)
REDUCED_SAFETY_BATCH = 2
STRONGER_ATTACK_LEARNING_RATE = 1e-3
"""Twice the full profile's LoRA learning rate (5e-4)."""


@dataclass(frozen=True)
class MatrixStep:
    """One `bds bench run` command of the matrix."""

    label: str
    folder: str
    shares: tuple[float, ...]
    methods: tuple[str, ...]
    extra: tuple[str, ...] = ()

    def arguments(self, data: Path, out: Path, seeds: tuple[int, ...], threads: int) -> list[str]:
        """The `bds bench run` arguments of this step at ``seeds``."""
        return [
            ".venv/bin/bds", "bench", "run",
            "--data", str(data),
            "--out", str(out / self.folder),
            "--task", TASK,
            "--shares", ",".join(f"{share:g}" for share in self.shares),
            "--methods", ",".join(self.methods),
            "--seeds", ",".join(map(str, seeds)),
            "--threads", str(threads),
            *self.extra,
        ]  # fmt: skip


def matrix_steps(
    best_bds: str = "bds-neural", best_baseline: str | None = None
) -> list[MatrixStep]:
    """The matrix's steps in run order (one seed each; `matrix_commands` adds the seeds)."""
    for name, allowed in ((best_bds, "a BDS variant"), (best_baseline, "a baseline")):
        if name is None:
            continue
        known = METHODS.get(name)
        ok = known is not None and (
            known.is_bds if allowed == "a BDS variant" else bool(known.baseline)
        )
        if not ok:
            raise ValueError(f"{name!r} is not {allowed}")
    p09_baselines = (best_baseline,) if best_baseline else BASELINES
    return [
        MatrixStep(
            "reduced alignment budget (2 rows a step)",
            "budget2",
            (0.2, 0.5),
            ("mix", best_bds, "lisa"),
            ("--safety-batch-size", str(REDUCED_SAFETY_BATCH)),
        ),
        MatrixStep("p = 0.9", "main", (0.9,), ("sft", "mix", best_bds)),
        MatrixStep("baselines and every BDS variant", "main", (0.2, 0.5), ALL_P02_P05),
        MatrixStep("p = 0.9, baselines", "main", (0.9,), p09_baselines),
        MatrixStep(
            "stronger attack (2x LoRA learning rate)",
            "attack2x",
            (0.1,),
            ("sft", "mix", best_bds),
            ("--learning-rate", f"{STRONGER_ATTACK_LEARNING_RATE:g}"),
        ),
    ]


def matrix_folders(out: Path) -> list[Path]:
    """The matrix's results folders (one report each)."""
    return [out / folder for folder in dict.fromkeys(step.folder for step in matrix_steps())]


def matrix_commands(
    data: Path,
    out: Path,
    seeds: tuple[int, ...] = (0, 1, 2),
    threads: int = 2,
    best_bds: str = "bds-neural",
    best_baseline: str | None = None,
) -> list[tuple[str, list[str]]]:
    """(label, arguments) of every command in run order: each step at the first seed, then
    each step again at all seeds (the remaining seeds; finished cells are skipped)."""
    if not seeds:
        raise ValueError("the matrix needs at least one seed")
    steps = matrix_steps(best_bds, best_baseline)
    commands = [(step.label, step.arguments(data, out, seeds[:1], threads)) for step in steps]
    if len(seeds) > 1:
        commands += [
            (
                f"{step.label}, seeds {','.join(map(str, seeds))}",
                step.arguments(data, out, seeds, threads),
            )
            for step in steps
        ]
    return commands
