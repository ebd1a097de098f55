"""The BDS trainer on a tiny random LLaMA: behaviour of bds, sft and mix, checkpoints, outputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from bds_core.data import encode_example, load_examples
from bds_core.models import LoraSettings, load_model
from bds_core.schedulers import SchedulerSettings
from bds_core.training import ProgressEvent, TrainConfig, TrainerCallback, train
from bds_core.training.checkpoint import list_checkpoints
from bds_core.training.trainer import BDSTrainer

from .conftest import ToyData

ConfigFactory = Callable[..., TrainConfig]


class Recorder(TrainerCallback):
    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []
        self.resumed: list[int] = []
        self.checkpoints: list[int] = []

    def on_step(self, event: ProgressEvent) -> None:
        self.events.append(event)

    def on_resume(self, step: int, path: Path) -> None:
        self.resumed.append(step)

    def on_checkpoint(self, step: int, path: Path) -> None:
        self.checkpoints.append(step)


def _weights(path: Path) -> list[float]:
    return [json.loads(line)["weight"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    ("budget", "min_auroc"),
    [
        # The defaults before issue 17: an alignment row per customer row, losses after the
        # model step. Measured AUROC 0.958 (fp32 and bf16).
        ({"safety_batch_size": 4, "loss_timing": "after"}, 0.9),
        # Today's defaults: 1 alignment row at batch 4, the step's own losses. Measured 0.900
        # (fp32 and bf16; 0.908 with 4 alignment rows): `before` reads losses one step
        # stale. 6 harmful x 20 benign pairs: one pair swapped is 0.008.
        ({"safety_batch_size": None, "loss_timing": "before"}, 0.88),
    ],
    ids=["old-budget-after", "default-budget-before"],
)
def test_conflicting_examples_end_with_lower_weights(
    make_config: ConfigFactory, toy_data: ToyData, budget: dict[str, Any], min_auroc: float
) -> None:
    config = make_config(
        max_steps=40,
        safety_batch_size=budget["safety_batch_size"],
        scheduler=SchedulerSettings(
            learning_rate=0.2, reference="initial", loss_timing=budget["loss_timing"]
        ),
    )
    result = train(config)
    assert result.weights_file is not None
    rows = [json.loads(line) for line in result.weights_file.read_text().splitlines()]
    harmful = [r["weight"] for r in rows if r["line"] in toy_data.harmful_lines]
    benign = [r["weight"] for r in rows if r["line"] not in toy_data.harmful_lines]
    assert max(harmful) < min(benign) or sum(harmful) / len(harmful) < 0.8 * sum(benign) / len(
        benign
    )
    assert result.metrics["weight_stats"]["auroc"] >= min_auroc
    assert sum(r["weight"] for r in rows) == pytest.approx(toy_data.n_train, rel=1e-3)


def test_sft_trains_on_customer_data_only_with_unit_weights(make_config: ConfigFactory) -> None:
    recorder = Recorder()
    result = train(make_config(method="sft", safety_file=None), callbacks=[recorder])
    assert all(event.safety_loss is None for event in recorder.events)
    assert result.weights_file is not None
    assert set(_weights(result.weights_file)) == {1.0}
    assert result.metrics["num_safety_examples"] == 0


def test_a_selection_trains_on_the_kept_examples_and_reports_the_rest_with_weight_zero(
    make_config: ConfigFactory, toy_data: ToyData
) -> None:
    """What the benchmark's `filter` baseline relies on: sft on a subset, every row reported."""
    harmful = set(toy_data.harmful_lines)
    config = make_config(method="filter", safety_file=None)
    with pytest.raises(ValueError, match="select_examples"):
        BDSTrainer(config)
    result = train(
        config, select_examples=lambda rows: [ex for ex in rows if ex.line not in harmful]
    )
    assert result.weights_file is not None
    rows = [json.loads(line) for line in result.weights_file.read_text().splitlines()]
    assert len(rows) == toy_data.n_train
    assert {row["line"] for row in rows if row["weight"] == 0.0} == harmful
    assert result.metrics["num_dropped_examples"] == len(harmful)
    assert result.metrics["num_train_examples"] == toy_data.n_train - len(harmful)


def test_trained_tokens_count_every_row_of_every_step(
    make_config: ConfigFactory, toy_data: ToyData
) -> None:
    """One pass of sft visits each example once: the trained tokens are exactly the dataset's
    tokens without padding (what the job reports as ``trained_tokens``)."""
    config = make_config(method="sft", safety_file=None, batch_size=2, max_steps=None, epochs=1)
    tokenizer = load_model(config.model, device="cpu").tokenizer
    expected = sum(
        len(encode_example(example, tokenizer, config.max_length).input_ids)
        for example in load_examples(toy_data.train_file)
    )
    result = train(config)
    assert result.steps * 2 == toy_data.n_train
    assert result.metrics["trained_tokens"] == expected
    assert sum(record["tokens"] for record in result.metrics["history"]) == expected


def test_mix_adds_the_alignment_batch_with_unit_weights(make_config: ConfigFactory) -> None:
    recorder = Recorder()
    result = train(make_config(method="mix"), callbacks=[recorder])
    assert all(event.safety_loss is not None for event in recorder.events)
    assert all(
        event.loss == pytest.approx(event.task_loss + (event.safety_loss or 0))
        for event in recorder.events
    )
    assert result.weights_file is not None
    assert set(_weights(result.weights_file)) == {1.0}


def test_bds_with_a_frozen_scheduler_is_mix(make_config: ConfigFactory, tmp_path: Path) -> None:
    """With weights that never move, the BDS model step is exactly the mix step."""
    mix = Recorder()
    train(make_config(method="mix", out_dir=tmp_path / "mix"), callbacks=[mix])
    bds = Recorder()
    frozen = SchedulerSettings(learning_rate=1e-12, reference="none")
    train(make_config(out_dir=tmp_path / "bds", scheduler=frozen), callbacks=[bds])
    assert [e.loss for e in bds.events] == pytest.approx([e.loss for e in mix.events], rel=1e-4)


def test_gradient_accumulation_does_not_rescale_the_step(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    whole, split = Recorder(), Recorder()
    train(make_config(out_dir=tmp_path / "a"), callbacks=[whole])
    train(make_config(out_dir=tmp_path / "b", gradient_accumulation_steps=2), callbacks=[split])
    assert [e.loss for e in split.events] == pytest.approx([e.loss for e in whole.events], rel=1e-4)


def test_without_sgld_runs_are_deterministic(make_config: ConfigFactory, tmp_path: Path) -> None:
    a = train(make_config(out_dir=tmp_path / "a"))
    b = train(make_config(out_dir=tmp_path / "b"))
    assert a.weights_file is not None and b.weights_file is not None
    assert _weights(a.weights_file) == _weights(b.weights_file)


def test_sgld_sampling_depends_on_the_seed(make_config: ConfigFactory, tmp_path: Path) -> None:
    sgld = SchedulerSettings(sgld=True, sgld_temperature=1.0, record_last=4)
    runs = {
        name: train(make_config(out_dir=tmp_path / name, seed=seed, scheduler=sgld))
        for name, seed in (("a", 1), ("b", 1), ("c", 2))
    }
    weights = {name: _weights(run.weights_file) for name, run in runs.items() if run.weights_file}
    assert weights["a"] == weights["b"]
    assert weights["a"] != weights["c"]
    assert runs["a"].weights_file is not None
    rows = [json.loads(line) for line in runs["a"].weights_file.read_text().splitlines()]
    assert any(row["weight_std"] > 0 for row in rows)
    # 6 steps, half of them burn-in: 3 kept samples give each example's mean and interval.
    for row in rows:
        assert row["uncertainty"] == "posterior" and row["n_samples"] == 3
        assert row["interval_level"] == 0.9
        assert row["weight_low"] <= row["weight_mean"] <= row["weight_high"]
        assert row["weight"] == row["weight_mean"]
    uncertainty = runs["a"].metrics["weight_uncertainty"]
    assert uncertainty["kind"] == "posterior" and uncertainty["n_samples"] == 3
    assert 0.0 <= uncertainty["interval_coverage"] <= 1.0


def test_without_sampling_the_spread_is_named_optimisation_spread(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    bds = train(make_config(out_dir=tmp_path / "bds"))
    sft = train(make_config(out_dir=tmp_path / "sft", method="sft"))
    assert bds.weights_file is not None and sft.weights_file is not None
    for row in (json.loads(line) for line in bds.weights_file.read_text().splitlines()):
        assert row["uncertainty"] == "optimisation" and "weight_spread" in row
        assert "weight_std" not in row and "weight_low" not in row
    for row in (json.loads(line) for line in sft.weights_file.read_text().splitlines()):
        assert row["uncertainty"] == "none" and row["weight"] == 1.0
    assert bds.metrics["weight_uncertainty"] == {"kind": "optimisation"}


def test_no_grad_loss_passes_run_in_eval_mode_and_restore_it(
    make_config: ConfigFactory,
) -> None:
    """With LoRA dropout, a loss pass in train mode would differ between two calls (and the
    cached reference would keep the noise)."""
    trainer = BDSTrainer(make_config(lora=LoraSettings(dropout=0.5)))
    trainer.setup()
    indices = torch.arange(8)
    for mode in (True, False):
        trainer.model.train(mode)
        first = trainer.row_losses.customer_no_grad(indices)
        second = trainer.row_losses.customer_no_grad(indices)
        assert torch.equal(first, second)
        assert trainer.model.training is mode
    trainer.model.train()
    with trainer.model.disable_adapter():
        base = trainer.row_losses.customer_no_grad(indices)
    with torch.no_grad():
        trainer.model.eval()
        with trainer.model.disable_adapter():
            expected = trainer.row_losses.batch(indices, None)[0]
    assert torch.allclose(base, expected)


@pytest.mark.parametrize(
    "scheduler",
    [
        SchedulerSettings(reference="initial", loss_timing="after"),
        SchedulerSettings(reference="agnostic", loss_timing="after"),
    ],
    ids=["initial-after", "agnostic-after"],
)
def test_every_no_grad_pass_of_a_run_is_in_eval_mode(
    make_config: ConfigFactory, scheduler: SchedulerSettings
) -> None:
    """Through the trainer itself, not one helper: every forward pass without gradients (the
    `initial` reference with the adapters off, the agnostic adapter's and the main adapter's
    losses after their steps) sees the model in eval mode, every pass with gradients in train
    mode. LoRA dropout and dropout in the base model's attention make a train-mode pass noisy,
    so the cached `initial` reference must equal a fresh eval-mode pass."""
    trainer = BDSTrainer(
        make_config(max_steps=3, lora=LoraSettings(dropout=0.5), scheduler=scheduler)
    )
    trainer.setup()
    decoder = trainer.row_losses.decoder
    for layer in decoder.layers:
        layer.self_attn.attention_dropout = 0.5
    passes: list[tuple[bool, bool]] = []
    decoder.register_forward_pre_hook(
        lambda module, args, kwargs: passes.append((torch.is_grad_enabled(), module.training)),
        with_kwargs=True,
    )
    trainer.train()
    no_grad_modes = [training for grad, training in passes if not grad]
    grad_modes = [training for grad, training in passes if grad]
    assert no_grad_modes and not any(no_grad_modes), passes
    assert grad_modes and all(grad_modes), passes
    if scheduler.reference == "initial":
        known = torch.nonzero(trainer.reference.known).flatten()
        assert len(known) > 0
        trainer.model.eval()
        with torch.no_grad(), trainer.model.disable_adapter():
            expected = trainer.row_losses.batch(known, None)[0].cpu()
        assert torch.allclose(trainer.reference.cache[known], expected, atol=1e-5)
        # The same pass in train mode differs: the dropout is live, so the check can fail.
        trainer.model.train()
        with torch.no_grad(), trainer.model.disable_adapter():
            noisy = trainer.row_losses.batch(known, None)[0].cpu()
        assert not torch.allclose(noisy, expected, atol=1e-5)


def test_a_row_without_answer_tokens_is_refused_with_line_and_reason(
    make_config: ConfigFactory, toy_data: ToyData
) -> None:
    """Such a row would have loss 0 and, with reference none, gain weight from every other
    row: it never reaches training (validation names its line and why)."""
    lines = toy_data.train_file.read_text().splitlines()
    lines[4] = json.dumps(
        {
            "messages": [
                {"role": "user", "content": "Say nothing."},
                {"role": "assistant", "content": "   "},
            ]
        }
    )
    toy_data.train_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"line 5.*must not be empty.*empty_content"):
        train(make_config())


@pytest.mark.parametrize(
    "scheduler",
    [
        SchedulerSettings(reference="initial", loss_timing="after"),
        SchedulerSettings(reference="agnostic", loss_timing="before", update="global"),
        SchedulerSettings(reference="none", transform="sigmoid", sgld=True),
    ],
    ids=["initial-after", "agnostic-before-global", "none-sigmoid-sgld"],
)
def test_resume_continues_exactly(
    make_config: ConfigFactory, tmp_path: Path, scheduler: SchedulerSettings
) -> None:
    straight = Recorder()
    full = train(
        make_config(out_dir=tmp_path / "full", max_steps=6, scheduler=scheduler),
        callbacks=[straight],
    )

    # Interrupt after 3 steps (cancellation writes a checkpoint), then run again to resume.
    cancel_after_three = make_config(out_dir=tmp_path / "resumed", max_steps=6, scheduler=scheduler)
    first = Recorder()
    interrupted = train(
        cancel_after_three, callbacks=[first], should_cancel=lambda: len(first.events) >= 3
    )
    assert interrupted.cancelled and interrupted.steps == 3
    second = Recorder()
    resumed = train(cancel_after_three, callbacks=[second])
    steps_seen = [e.step for e in second.events]
    assert second.resumed == [3] and steps_seen == [4, 5, 6]
    assert [e.loss for e in first.events + second.events] == pytest.approx(
        [e.loss for e in straight.events], abs=1e-6
    )
    assert resumed.weights_file is not None and full.weights_file is not None
    assert _weights(resumed.weights_file) == pytest.approx(_weights(full.weights_file), abs=1e-6)
    assert resumed.metrics["trained_tokens"] == full.metrics["trained_tokens"] > 0


def test_resume_skips_a_corrupted_checkpoint(make_config: ConfigFactory) -> None:
    config = make_config(max_steps=6, checkpoint_every=2, keep_checkpoints=3)
    recorder = Recorder()
    train(config, callbacks=[recorder], should_cancel=lambda: len(recorder.events) >= 5)
    assert recorder.checkpoints == [2, 4, 5]
    root = config.out_dir / "checkpoints"
    newest = list_checkpoints(root)[0]
    (newest / "lora_state.safetensors").write_bytes(b"torn write")
    again = Recorder()
    train(config, callbacks=[again])
    assert again.resumed == [4]


def test_resume_refuses_a_checkpoint_of_other_settings(make_config: ConfigFactory) -> None:
    recorder = Recorder()
    train(make_config(), callbacks=[recorder], should_cancel=lambda: len(recorder.events) >= 2)
    with pytest.raises(ValueError, match="other settings or data"):
        train(make_config(learning_rate=3e-2))


def test_outputs_load_with_peft_and_cover_every_example(
    make_config: ConfigFactory, toy_data: ToyData
) -> None:
    from peft import PeftModel

    from bds_core.models import load_model

    result = train(make_config())
    assert (
        result.adapter_dir is not None
        and result.weights_file is not None
        and result.metrics_file is not None
    )
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    base = load_model("tiny-random-llama").model
    model = PeftModel.from_pretrained(base, str(result.adapter_dir))
    assert any("lora_A" in name for name, _ in model.named_parameters())
    rows = [json.loads(line) for line in result.weights_file.read_text().splitlines()]
    assert len(rows) == toy_data.n_train and len({r["id"] for r in rows}) == toy_data.n_train
    metrics = json.loads(result.metrics_file.read_text())
    assert metrics["steps"] == 6 and metrics["peak_rss_mb"] > 0 and len(metrics["history"]) == 6


def test_progress_events_report_eta_and_weight_statistics(make_config: ConfigFactory) -> None:
    recorder = Recorder()
    train(make_config(), callbacks=[recorder])
    assert [e.step for e in recorder.events] == list(range(1, 7))
    last = recorder.events[-1]
    assert last.percent == 100.0 and last.eta_s == 0.0
    assert {"mean", "std", "ess_ratio", "entropy_ratio"} <= set(last.weight_stats)
    assert all(torch.isfinite(torch.tensor(e.loss)) for e in recorder.events)


def test_config_errors_name_the_field(toy_data: ToyData, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a safety_file"):
        TrainConfig(
            model="tiny-random-llama",
            train_file=toy_data.train_file,
            out_dir=tmp_path,
            method="bds",
        )
    with pytest.raises(ValueError, match="method must be one of"):
        TrainConfig(model="m", train_file=toy_data.train_file, out_dir=tmp_path, method="dpo")
    with pytest.raises(ValueError, match="batch_size must be positive"):
        TrainConfig(
            model="m", train_file=toy_data.train_file, out_dir=tmp_path, method="sft", batch_size=0
        )


def test_n_epochs_counts_passes_over_the_training_file_and_the_alignment_data_cycles(
    make_config: ConfigFactory, toy_data: ToyData, tmp_path: Path
) -> None:
    """A 4-example training file and 6 alignment examples: one epoch at batch 2 is 2 steps
    (not 3, a pass over the longer alignment set); three epochs are 6 steps, and the
    alignment batches of 2 rows (set explicitly: the default would be 1) cycle through their
    data (12 draws of 6 examples)."""
    short = tmp_path / "short.jsonl"
    short.write_text("".join(toy_data.train_file.read_text().splitlines(keepends=True)[:4]))
    recorder = Recorder()
    one = train(
        make_config(
            train_file=short,
            batch_size=2,
            safety_batch_size=2,
            max_steps=None,
            epochs=1,
            out_dir=tmp_path / "a",
        ),
        callbacks=[recorder],
    )
    assert one.steps == 2 and recorder.events[-1].total_steps == 2
    trainer = BDSTrainer(
        make_config(
            train_file=short,
            batch_size=2,
            safety_batch_size=2,
            max_steps=None,
            epochs=3,
            out_dir=tmp_path / "b",
        )
    )
    trainer.setup()
    assert trainer.train().steps == 6
    assert trainer.train_sampler.passes == 3
    assert trainer.safety_sampler is not None and trainer.safety_sampler.passes == 2
