"""Runs a list of training runs in each torchrun process (used by test_distributed.py).

    python -m torch.distributed.run --standalone --nproc-per-node 2 distributed_driver.py PLAN

PLAN is a JSON file: {"runs": [...]}, each run either
- {"cli": [arguments of `bds train`]}: the CLI command, as `torchrun -m bds_core.cli` runs it, or
- {"config": TrainConfig dict, "cancel_after": k or null, "capture": path, "copy_to": path}:
  a BDSTrainer run stopped after k steps if asked; rank 0 saves its exact outcome
  (`capture_outcome`) to `capture` and copies the run folder to `copy_to` when given.
The first run creates the process group from torchrun's environment; later runs reuse it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from bds_core.training import TrainConfig
from bds_core.training.checkpoint import lora_state
from bds_core.training.trainer import BDSTrainer


class CancelAfter:
    """should_cancel: yes once `steps` steps have run (it is asked before every step)."""

    def __init__(self, steps: int | None) -> None:
        self.steps = steps
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.steps is not None and self.asked > self.steps


def run_and_capture(config: TrainConfig, cancel_after: int | None = None) -> dict[str, Any]:
    """Train (resuming from OUT's checkpoint if any) and return the exact outcome."""
    trainer = BDSTrainer(config, should_cancel=CancelAfter(cancel_after))
    trainer.setup()
    result = trainer.train()
    return {
        "rank": trainer.parallel.rank,
        "world_size": trainer.parallel.world_size,
        "steps": result.steps,
        "cancelled": result.cancelled,
        "resumed_from_step": result.resumed_from_step,
        "losses": torch.tensor([record["loss"] for record in trainer.history], dtype=torch.float64),
        "weights": trainer.current_weights().double(),
        "lora": {name: value.double() for name, value in lora_state(trainer.model).items()},
    }


def main(plan_path: str) -> int:
    plan = json.loads(Path(plan_path).read_text())
    torch.set_num_threads(1)
    for run in plan["runs"]:
        if "cli" in run:
            from bds_core.cli import train_app

            train_app(["train", *run["cli"]], standalone_mode=False)
            continue
        outcome = run_and_capture(TrainConfig.from_dict(run["config"]), run.get("cancel_after"))
        if outcome["rank"] == 0:
            torch.save(outcome, run["capture"])
            if run.get("copy_to"):
                shutil.copytree(run["config"]["out_dir"], run["copy_to"])
        torch.distributed.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
