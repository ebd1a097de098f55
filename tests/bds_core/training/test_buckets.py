"""Length bucketing and the BDS step's passes: same losses and gradients as separate passes."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from bds_core.schedulers import SchedulerSettings
from bds_core.training import BDSTrainer, TrainConfig
from bds_core.training.buckets import padded_tokens, plan_buckets
from bds_core.training.sampling import EpochSampler


def _brute_force_cost(lengths: Sequence[int], max_tokens: int | None, overhead: int) -> float:
    """Least cost over every contiguous split of the sorted rows (the reference answer)."""
    ordered = sorted(lengths)
    n = len(ordered)
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=n - 1):
        groups, start = [], 0
        for k, cut in enumerate(cuts, start=1):
            if cut:
                groups.append(ordered[start:k])
                start = k
        groups.append(ordered[start:])
        if max_tokens is not None and any(
            len(g) > 1 and len(g) * max(g) > max_tokens for g in groups
        ):
            continue
        best = min(best, sum(len(g) * max(g) + overhead for g in groups))
    return best


@pytest.mark.parametrize("max_tokens", [None, 40, 200])
@pytest.mark.parametrize("overhead", [0, 8, 48])
def test_plan_is_a_partition_with_the_least_padding_within_the_cap(
    max_tokens: int | None, overhead: int
) -> None:
    rng = random.Random(overhead * 1000 + (max_tokens or 0))
    for _ in range(20):
        lengths = [rng.randint(3, 60) for _ in range(rng.randint(1, 9))]
        groups = plan_buckets(lengths, max_tokens=max_tokens, pass_overhead=overhead)
        assert sorted(k for g in groups for k in g) == list(range(len(lengths)))
        for group in groups:
            padded = len(group) * max(lengths[k] for k in group)
            assert max_tokens is None or len(group) == 1 or padded <= max_tokens
        cost = padded_tokens(lengths, groups) + overhead * len(groups)
        assert cost == _brute_force_cost(lengths, max_tokens, overhead)


def test_plan_splits_rows_of_very_different_lengths_and_keeps_similar_ones_together() -> None:
    lengths = [100, 10, 11, 98, 12, 99]
    groups = plan_buckets(lengths, pass_overhead=48)
    assert sorted(map(sorted, groups)) == [[0, 3, 5], [1, 2, 4]]
    assert plan_buckets([20, 21, 22], pass_overhead=48) == [[0, 1, 2]]
    assert plan_buckets([]) == []
    with pytest.raises(ValueError, match="max_tokens must be positive"):
        plan_buckets([3], max_tokens=0)


def _chat(prompt: str, answer: str) -> str:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return json.dumps({"messages": messages})


@pytest.fixture
def varied_data(tmp_path: Path) -> tuple[Path, Path]:
    """Customer and alignment rows of very different lengths (so bucketing has work to do)."""
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "epsilon",
        "zeta",
        "eta",
        "theta",
        "iota",
        "kappa",
        "lambda",
        "mu",
    ]
    train = [
        _chat(
            f"Item {i}: repeat {words[i % 12]}.", " ".join(words[: 1 + (i * 5) % 12] * (1 + i % 3))
        )
        for i in range(8)
    ]
    safety = [_chat(f"Harmful request {j}?", "No." + " I refuse." * (1 + 3 * j)) for j in range(4)]
    train_file, safety_file = tmp_path / "train.jsonl", tmp_path / "safety.jsonl"
    train_file.write_text("\n".join(train) + "\n")
    safety_file.write_text("\n".join(safety) + "\n")
    return train_file, safety_file


def _trainer(data: tuple[Path, Path], tmp_path: Path, **overrides: object) -> BDSTrainer:
    settings: dict[str, object] = {
        "model": "tiny-random-llama",
        "train_file": data[0],
        "safety_file": data[1],
        "out_dir": tmp_path / "run",
        "method": "bds",
        "learning_rate": 1e-2,
        "batch_size": 8,
        "safety_batch_size": 4,
        "max_steps": 4,
        "max_length": 96,
        "checkpoint_every": 0,
        "device": "cpu",
        "seed": 3,
    }
    settings.update(overrides)
    trainer = BDSTrainer(TrainConfig(**settings))  # type: ignore[arg-type]
    trainer.setup()
    # Move the LoRA B matrices off zero so every LoRA parameter has a gradient.
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for param in trainer.adapter_params["default"]:
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return trainer


def _grads(trainer: BDSTrainer) -> list[torch.Tensor]:
    return [
        p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
        for p in trainer.adapter_params["default"]
    ]


@pytest.mark.parametrize(
    ("bucketing", "max_batch_tokens"),
    [(True, None), (True, 40), (False, None)],
    ids=["bucketed", "bucketed-capped", "one-padded-pass"],
)
def test_step_passes_give_the_losses_and_gradients_of_separate_passes(
    varied_data: tuple[Path, Path],
    tmp_path: Path,
    bucketing: bool,
    max_batch_tokens: int | None,
) -> None:
    """Customer and alignment rows through the step's passes (bucketed or one padded pass)
    give the same per-example losses and the same gradient as one unpadded pass per row."""
    trainer = _trainer(
        varied_data, tmp_path, length_bucketing=bucketing, max_batch_tokens=max_batch_tokens
    )
    train_idx = torch.arange(8)
    safety_idx = torch.arange(4)
    weights = torch.tensor([0.5, 1.5, 1.0, 2.0, 0.2, 0.8, 1.2, 0.8])
    lengths = [len(trainer.train_encoded[i].input_ids) for i in range(8)] + [
        len(trainer.safety_encoded[j].input_ids) for j in range(4)
    ]
    assert max(lengths) >= 2 * min(lengths)
    if bucketing:
        assert len(plan_buckets(lengths, max_batch_tokens)) > 1

    trainer.model.train()
    trainer.optimizer.zero_grad(set_to_none=True)
    train_losses, safety_losses = trainer.row_losses.backward(train_idx, weights, safety_idx, 8, 4)
    assert safety_losses is not None
    fused = _grads(trainer)

    trainer.optimizer.zero_grad(set_to_none=True)
    separate_train, separate_safety = [], []
    for i in range(8):
        loss = trainer.row_losses.rows([trainer.train_encoded[i]])
        (weights[i] * loss.sum() / 8).backward()
        separate_train.append(loss.detach())
    for j in range(4):
        loss = trainer.row_losses.rows([trainer.safety_encoded[j]])
        (loss.sum() / 4).backward()
        separate_safety.append(loss.detach())
    separate = _grads(trainer)

    assert torch.allclose(train_losses, torch.cat(separate_train), rtol=1e-4, atol=1e-5)
    assert torch.allclose(safety_losses, torch.cat(separate_safety), rtol=1e-4, atol=1e-5)
    assert any(g.abs().sum() > 0 for g in fused)
    for a, b in zip(fused, separate, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("timing", ["before", "after"])
def test_loss_timing_before_hands_the_step_own_losses_to_the_scheduler(
    varied_data: tuple[Path, Path], tmp_path: Path, timing: str
) -> None:
    """The default timing feeds the scheduler the per-example losses of the model step's own
    forward pass (the parameters before the update), with no extra pass; `after` recomputes
    them at the updated parameters."""
    trainer = _trainer(
        varied_data,
        tmp_path,
        batch_size=4,
        scheduler=SchedulerSettings(reference="none", loss_timing=timing),  # type: ignore[arg-type]
    )
    assert trainer.scheduler is not None
    sampler = trainer.train_sampler
    peek = EpochSampler(sampler.num_examples, sampler.batch_size, sampler.seed)
    peek.load_state_dict(sampler.state_dict())
    batch = peek.next_batch()
    with torch.no_grad():
        trainer.model.train()
        expected_before = trainer.row_losses.batch(batch, None)[0]
    seen: list[torch.Tensor] = []
    original = trainer.scheduler.scheduler_loss

    def recording(
        indices: torch.Tensor,
        losses: torch.Tensor,
        reference: torch.Tensor,
        shard: Any = None,
    ) -> torch.Tensor:
        seen.append(losses.detach().clone())
        return original(indices, losses, reference, shard=shard)

    trainer.scheduler.scheduler_loss = recording  # type: ignore[method-assign]
    trainer._train_step()
    with torch.no_grad():
        expected_after = trainer.row_losses.batch(batch, None)[0]
    assert len(seen) == 1
    expected = expected_before if timing == "before" else expected_after
    other = expected_after if timing == "before" else expected_before
    assert torch.allclose(seen[0], expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(seen[0], other, rtol=1e-4, atol=1e-5)
    assert ("loss_after" in trainer.phase_seconds) == (timing == "after")


@pytest.mark.parametrize("method", ["bds", "mix"])
def test_alignment_budget_every_k_steps(
    varied_data: tuple[Path, Path], tmp_path: Path, method: str
) -> None:
    """With safety_every 3, steps 1, 4, 7 carry an alignment batch and the others do not;
    the alignment sampler advances only on those steps."""
    from bds_core.training import train

    config = TrainConfig(
        model="tiny-random-llama",
        train_file=varied_data[0],
        safety_file=varied_data[1],
        out_dir=tmp_path / method,
        method=method,
        batch_size=2,
        safety_batch_size=2,
        safety_every=3,
        max_steps=7,
        max_length=96,
        checkpoint_every=0,
        device="cpu",
    )
    result = train(config)
    with_safety = [r["step"] for r in result.metrics["history"] if r["safety_loss"] is not None]
    assert with_safety == [1, 4, 7]
    every_step = train(replace(config, safety_every=1, out_dir=tmp_path / "every"))
    tokens = [r["tokens"] for r in result.metrics["history"]]
    tokens_every = [r["tokens"] for r in every_step.metrics["history"]]
    # Same customer batches; alignment rows only on the budgeted steps.
    assert tokens[0] == tokens_every[0] and tokens[1] < tokens_every[1]


def test_budget_and_pass_settings_are_validated_and_fingerprinted(tmp_path: Path) -> None:
    base = {"model": "m", "train_file": tmp_path / "t.jsonl", "out_dir": tmp_path, "method": "sft"}
    with pytest.raises(ValueError, match="safety_every must be a positive"):
        TrainConfig(**base, safety_every=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_batch_tokens must be at least 8"):
        TrainConfig(**base, max_batch_tokens=4)  # type: ignore[arg-type]
    plain = TrainConfig(**base).resume_fingerprint("d")  # type: ignore[arg-type]
    # How the passes are cut does not change what a step computes: checkpoints stay resumable.
    assert (
        TrainConfig(**base, length_bucketing=False, max_batch_tokens=64).resume_fingerprint(  # type: ignore[arg-type]
            "d"
        )
        == plain
    )
    assert TrainConfig(**base, safety_every=2).resume_fingerprint("d") != plain  # type: ignore[arg-type]
