"""The default alignment budget: resolved in one place, split over processes, fingerprinted."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from bds_core.budget import resolve_safety_batch_size
from bds_core.schedulers import SchedulerSettings
from bds_core.training import TrainConfig, train

ConfigFactory = Callable[..., TrainConfig]


@pytest.mark.parametrize(
    ("batch_size", "world_size", "expected"),
    [
        (1, 1, 1),
        (2, 1, 1),
        (4, 1, 1),
        (5, 1, 2),
        (8, 1, 2),
        (8, 2, 2),
        (10, 1, 3),
        (10, 2, 4),
        (4, 2, 2),
        (16, 8, 8),
        (32, 3, 9),
    ],
)
def test_an_unset_budget_is_a_quarter_of_the_batch_rounded_up_to_the_processes(
    batch_size: int, world_size: int, expected: int
) -> None:
    resolved = resolve_safety_batch_size(batch_size, None, world_size)
    assert resolved == expected
    assert resolved % world_size == 0 and resolved >= 1


def test_a_budget_that_is_set_is_kept_and_bad_inputs_are_refused() -> None:
    assert resolve_safety_batch_size(8, 8, 2) == 8
    assert resolve_safety_batch_size(8, 3, 2) == 3  # check_split decides whether it splits
    with pytest.raises(ValueError, match="batch_size must be positive"):
        resolve_safety_batch_size(0, None)
    with pytest.raises(ValueError, match="world_size must be positive"):
        resolve_safety_batch_size(8, None, 0)


def test_the_default_budget_always_splits_over_processes_and_micro_batches(
    make_config: ConfigFactory,
) -> None:
    """Every process needs an alignment row; a micro-batch may have none (the alignment loss
    is normalised over the whole step), so gradient accumulation does not raise the budget."""
    for batch_size in range(1, 17):
        for world_size in range(1, batch_size + 1):
            for ga in (1, 2, 4):
                if batch_size < world_size * ga:
                    continue
                config = make_config(batch_size=batch_size, gradient_accumulation_steps=ga)
                config.check_split(world_size)
                assert config.resolved_safety_batch_size(world_size) % world_size == 0


def test_the_trainer_draws_the_resolved_budget(make_config: ConfigFactory) -> None:
    from bds_core.training.trainer import BDSTrainer

    trainer = BDSTrainer(make_config(batch_size=8, max_steps=1))
    trainer.setup()
    assert trainer.safety_sampler is not None and trainer.safety_sampler.batch_size == 2
    assert len(trainer.safety_sampler.next_batch()) == 2


def test_the_resume_fingerprint_hashes_the_resolved_budget_and_the_loss_timing(
    make_config: ConfigFactory,
) -> None:
    default = make_config(batch_size=8)
    # The same computation spelled out: resumable.
    explicit = make_config(batch_size=8, safety_batch_size=2)
    assert default.resume_fingerprint("d") == explicit.resume_fingerprint("d")
    assert default.resume_fingerprint("d", world_size=2) == default.resume_fingerprint("d")
    # The defaults before issue 17: a budget of batch_size, losses recomputed after the step.
    old = make_config(
        batch_size=8, safety_batch_size=8, scheduler=SchedulerSettings(loss_timing="after")
    )
    assert old.resume_fingerprint("d") != default.resume_fingerprint("d")
    assert make_config(
        batch_size=8, scheduler=SchedulerSettings(loss_timing="after")
    ).resume_fingerprint("d") != default.resume_fingerprint("d")
    assert make_config(batch_size=8, safety_batch_size=8).resume_fingerprint("d") != (
        default.resume_fingerprint("d")
    )
    # Batch 4: 1 row on one process, 2 on two: other steps, so not resumable across them.
    small = make_config(batch_size=4)
    assert small.resume_fingerprint("d", world_size=2) != small.resume_fingerprint("d")
    # sft reads no budget: its fingerprint does not depend on it.
    sft = make_config(method="sft", safety_file=None)
    assert sft.resume_fingerprint("d", world_size=2) == sft.resume_fingerprint("d")


def test_a_checkpoint_of_the_old_defaults_is_not_resumed_under_the_new_ones(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    old = make_config(
        out_dir=out,
        batch_size=4,
        safety_batch_size=4,
        max_steps=3,
        scheduler=SchedulerSettings(loss_timing="after"),
    )
    asked = iter([False, True])  # should_cancel is asked before every step: stop after one
    interrupted = train(old, should_cancel=lambda: next(asked))
    assert interrupted.cancelled and interrupted.steps == 1
    with pytest.raises(ValueError, match="written by a run with other settings"):
        train(make_config(out_dir=out, batch_size=4, max_steps=3))
    # The old settings, spelled out, still resume it.
    resumed = train(old)
    assert resumed.resumed_from_step == 1 and resumed.steps == 3


def _fingerprint_before_issue_17(config: TrainConfig, data_digest: str) -> str:
    """`TrainConfig.resume_fingerprint` as it was: the budget hashed as set (None: unset)."""
    data = config.to_dict()
    for volatile in (
        "out_dir", "checkpoint_every", "keep_checkpoints", "device", "max_steps", "epochs",
        "precision", "gradient_checkpointing", "length_bucketing", "max_batch_tokens",
    ):  # fmt: skip
        data.pop(volatile)
    if data["safety_every"] == 1:
        data.pop("safety_every")
    data["data_digest"] = data_digest
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def test_a_checkpoint_of_an_unset_budget_under_the_old_meaning_is_not_resumed(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    """An unset budget meant batch_size rows; it now means a quarter. A checkpoint written
    with the budget unset (loss timing `after` set, so only the budget's meaning changed)
    carries the old fingerprint, which hashed the unset value: it must not resume."""
    from bds_core.training.checkpoint import (
        MANIFEST,
        data_digest,
        file_sha256,
        list_checkpoints,
        verify_checkpoint,
    )

    out = tmp_path / "run"
    config = make_config(
        out_dir=out, batch_size=4, max_steps=3, scheduler=SchedulerSettings(loss_timing="after")
    )
    asked = iter([False, True])
    assert train(config, should_cancel=lambda: next(asked)).cancelled
    (checkpoint,) = list_checkpoints(out / "checkpoints")
    state_file = checkpoint / "trainer_state.json"
    state = json.loads(state_file.read_text())
    digest = data_digest([config.train_file, config.safety_file])
    assert state["fingerprint"] == config.resume_fingerprint(digest)
    state["fingerprint"] = _fingerprint_before_issue_17(config, digest)
    state_file.write_text(json.dumps(state))
    manifest_file = checkpoint / MANIFEST
    manifest = json.loads(manifest_file.read_text())
    manifest["files"]["trainer_state.json"] = file_sha256(state_file)
    manifest_file.write_text(json.dumps(manifest))
    assert verify_checkpoint(checkpoint)
    with pytest.raises(ValueError, match="written by a run with other settings"):
        train(config)
