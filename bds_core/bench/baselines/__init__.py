"""The defences the BDS paper compares with, implemented from their own papers.

- `lisa` (arXiv 2405.18641): fine-tuning stage, alternating alignment and user steps with a
  proximal term.
- `vaccine` (arXiv 2402.01109): perturbation-aware alignment, then sft.
- `booster` (arXiv 2409.01586): alignment that attenuates the harmful perturbation, then sft.
- `repnoise` (arXiv 2405.14577): representation noising at alignment, then sft.

`stage` builds the alignment-stage defences' M0 variants and runs Lisa; `data` names the
harmful alignment split and checks it is disjoint from the attack and the evaluation.
"""

from bds_core.bench.baselines.stage import (
    ALIGNMENT_STAGE_METHODS,
    NEEDS_HARMFUL,
    BaselineSettings,
    ensure_baseline_aligned_model,
    run_lisa,
)

__all__ = [
    "ALIGNMENT_STAGE_METHODS",
    "NEEDS_HARMFUL",
    "BaselineSettings",
    "ensure_baseline_aligned_model",
    "run_lisa",
]
