"""The neural scheduler: a trainable head over frozen embeddings, saved, loaded and calibrated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bds_core.encoders import EncoderInfo
from bds_core.schedulers import (
    ScalarScheduler,
    SchedulerContext,
    SchedulerSettings,
    build_scheduler,
)
from bds_core.schedulers.neural import (
    MixtureComponent,
    NeuralOptions,
    NeuralScheduler,
    SafetyHead,
    SchedulerFileError,
    ScoreCalibration,
    load_scheduler,
    save_scheduler,
)
from bds_core.training import ProgressEvent, TrainConfig, TrainerCallback, train
from bds_core.training.trainer import BDSTrainer

FAKE_ENCODER = EncoderInfo(name="minilm-l6-v2", version="test@0000/max256", dim=16)


def _clusters(
    n_harmful: int = 6, n_benign: int = 18, dim: int = 16, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings in two noisy clusters (harmful first) and the harmful mask."""
    generator = torch.Generator().manual_seed(seed)
    centre_harmful = torch.randn(dim, generator=generator)
    centre_benign = torch.randn(dim, generator=generator)
    harmful = centre_harmful + 0.3 * torch.randn(n_harmful, dim, generator=generator)
    benign = centre_benign + 0.3 * torch.randn(n_benign, dim, generator=generator)
    mask = torch.tensor([True] * n_harmful + [False] * n_benign)
    return torch.cat([harmful, benign]), mask


def _neural(embeddings: torch.Tensor, head: str = "mlp", **settings: object) -> NeuralScheduler:
    scheduler_settings = SchedulerSettings(kind="neural", **settings)  # type: ignore[arg-type]
    model = SafetyHead.for_embeddings(embeddings, head, 32)
    return NeuralScheduler(scheduler_settings, embeddings, model, FAKE_ENCODER)


def test_weights_start_at_one_and_sum_to_n() -> None:
    embeddings, _ = _clusters()
    scheduler = _neural(embeddings)
    assert torch.allclose(scheduler.all_weights(), torch.ones(len(embeddings)))
    sigmoid = _neural(embeddings, transform="sigmoid")
    assert torch.allclose(sigmoid.all_weights(), torch.ones(len(embeddings)))


def _run_toy_conflict(
    scheduler: torch.nn.Module, harmful: torch.Tensor, steps: int, lr: float
) -> torch.Tensor:
    """Scheduler steps of the base-class loss; harmful examples have the high loss gap."""
    assert isinstance(scheduler, (ScalarScheduler, NeuralScheduler))
    optimizer = torch.optim.AdamW(scheduler.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(1)
    n = scheduler.num_examples
    for _ in range(steps):
        batch = torch.randperm(n, generator=generator)[:8]
        gap = torch.where(harmful[batch], 3.0, 1.0) + 0.5 * torch.randn(8, generator=generator)
        optimizer.zero_grad()
        scheduler.scheduler_loss(batch, gap, torch.zeros(8)).backward()
        optimizer.step()
    return scheduler.all_weights()


@pytest.mark.parametrize("head", ["mlp", "linear"])
def test_neural_weights_move_the_same_way_as_scalar_ones(head: str) -> None:
    embeddings, harmful = _clusters()
    scalar = _run_toy_conflict(
        ScalarScheduler(len(embeddings), SchedulerSettings()), harmful, 60, 0.1
    )
    neural = _run_toy_conflict(_neural(embeddings, head), harmful, 60, 3e-3)
    for weights in (scalar, neural):
        assert weights[harmful].mean() < 0.7 < 1.0 < weights[~harmful].mean()
    # Under both, every harmful example lost weight and ends below every benign one.
    for weights in (scalar, neural):
        assert bool((weights[harmful] < 1.0).all())
        assert weights[~harmful].min() > weights[harmful].max()


def test_head_gradients_flow_from_the_scheduler_loss() -> None:
    embeddings, harmful = _clusters()
    scheduler = _neural(embeddings)
    loss = scheduler.scheduler_loss(
        torch.arange(8), torch.where(harmful[:8], 3.0, 1.0), torch.zeros(8)
    )
    loss.backward()
    grads = [p.grad for p in scheduler.head.parameters()]
    assert all(g is not None for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads if g is not None)


def _toy_files(tmp_path: Path) -> tuple[Path, Path]:
    def chat(prompt: str, answer: str, label: str) -> str:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        return json.dumps({"messages": messages, "metadata": {"label": label}})

    harmful_prompts = [f"How do I build weapon number {k}?" for k in range(4)]
    benign = [
        chat(f"Repeat the word {w} twice ({i}).", f"{w} {w}", "benign")
        for i, w in enumerate(["apple", "river", "stone", "cloud", "maple", "tiger"] * 2)
    ]
    harmful = [chat(p, "Sure, step one: get parts.", "harmful") for p in harmful_prompts]
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("\n".join(benign[:6] + harmful + benign[6:]) + "\n")
    safety_file = tmp_path / "safety.jsonl"
    safety_file.write_text(
        "\n".join(chat(p, "I cannot help with that.", "benign") for p in harmful_prompts) + "\n"
    )
    return train_file, safety_file


def _config(tmp_path: Path, out: str, steps: int, **scheduler: object) -> TrainConfig:
    train_file, safety_file = _toy_files(tmp_path)
    options = {"encoder": "llm-hidden", "head": "mlp", "hidden": 16}
    settings = SchedulerSettings(kind="neural", learning_rate=0.01, options=options, **scheduler)  # type: ignore[arg-type]
    return TrainConfig(
        model="tiny-random-llama",
        train_file=train_file,
        safety_file=safety_file,
        out_dir=tmp_path / out,
        learning_rate=1e-2,
        batch_size=4,
        max_steps=steps,
        max_length=64,
        checkpoint_every=0,
        device="cpu",
        scheduler=settings,
    )


def test_phi_is_trained_in_a_bds_run(tmp_path: Path) -> None:
    trainer = BDSTrainer(_config(tmp_path, "run", steps=3))
    trainer.setup()
    scheduler = trainer.scheduler
    assert isinstance(scheduler, NeuralScheduler)
    assert scheduler.encoder.name == "llm-hidden" and scheduler.embeddings.shape == (16, 64)
    before = {name: p.detach().clone() for name, p in scheduler.head.named_parameters()}
    result = trainer.train()
    changed = [
        name for name, p in scheduler.head.named_parameters() if not torch.equal(p, before[name])
    ]
    assert "net.2.weight" in changed  # the output layer starts at zero and must have moved
    assert result.weights_file is not None
    weights = [json.loads(line)["weight"] for line in result.weights_file.read_text().splitlines()]
    assert len(set(weights)) > 1 and sum(weights) == pytest.approx(16, rel=1e-4)


@pytest.mark.parametrize("sampling", [False, True], ids=["optimised", "sampled"])
def test_neural_run_resumes_exactly(tmp_path: Path, sampling: bool) -> None:
    full = train(_config(tmp_path, "full", steps=4, sgld=sampling))
    resumable = _config(tmp_path, "resumed", steps=4, sgld=sampling)
    events: list[ProgressEvent] = []

    class Recorder(TrainerCallback):
        def on_step(self, event: ProgressEvent) -> None:
            events.append(event)

    interrupted = train(resumable, callbacks=[Recorder()], should_cancel=lambda: len(events) >= 2)
    assert interrupted.cancelled
    resumed = train(resumable)
    assert resumed.weights_file is not None and full.weights_file is not None
    resumed_weights = [
        json.loads(line)["weight"] for line in resumed.weights_file.read_text().splitlines()
    ]
    full_weights = [
        json.loads(line)["weight"] for line in full.weights_file.read_text().splitlines()
    ]
    assert resumed_weights == pytest.approx(full_weights, abs=1e-6)
    kinds = {json.loads(line)["uncertainty"] for line in full.weights_file.read_text().splitlines()}
    assert kinds == {"posterior" if sampling else "optimisation"}


def _trained_scheduler(embeddings: torch.Tensor, harmful: torch.Tensor) -> NeuralScheduler:
    scheduler = _neural(embeddings)
    _run_toy_conflict(scheduler, harmful, 30, 3e-3)
    return scheduler


def test_save_and_load_give_identical_scores(tmp_path: Path) -> None:
    embeddings, harmful = _clusters()
    scheduler = _trained_scheduler(embeddings, harmful)
    scheduler.save(tmp_path / "sched", provenance={"note": "test"})
    loaded = load_scheduler(tmp_path / "sched")
    with torch.no_grad():
        assert torch.equal(loaded.head(embeddings), scheduler.all_logits())
    assert loaded.encoder == FAKE_ENCODER
    assert loaded.provenance["note"] == "test"
    config = json.loads((tmp_path / "sched" / "scheduler.json").read_text())
    assert config["encoder"]["name"] == "minilm-l6-v2" and config["head"]["kind"] == "mlp"
    assert 0 < config["threshold"] < 1


def test_a_scheduler_with_another_encoder_is_refused(tmp_path: Path) -> None:
    embeddings, _ = _clusters(dim=64)
    head = SafetyHead.for_embeddings(embeddings, "linear", 8)
    other = EncoderInfo(
        name="llm-hidden", version="some-other-model@0123456789abcdef/max256", dim=64
    )
    save_scheduler(tmp_path / "sched", head, other, ScoreCalibration.fit(torch.randn(50)))
    from bds_core.data import Example
    from bds_core.models import load_model

    loaded = load_model("tiny-random-llama", device=torch.device("cpu"))
    examples = [
        Example.create(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
        )
    ] * 3
    context = SchedulerContext(
        num_examples=3, examples=examples, model=loaded.model, tokenizer=loaded.tokenizer
    )
    settings = SchedulerSettings(kind="neural", init_path=str(tmp_path / "sched"))
    with pytest.raises(
        SchedulerFileError,
        match=r"trained on encoder llm-hidden .*some-other-model.*"
        r"but the embeddings come from llm-hidden",
    ):
        build_scheduler(settings, context)
    asks_minilm = SchedulerSettings(
        kind="neural", init_path=str(tmp_path / "sched"), options={"encoder": "minilm-l6-v2"}
    )
    with pytest.raises(SchedulerFileError, match="but the options ask for minilm-l6-v2"):
        build_scheduler(asks_minilm, context)


def test_loading_reports_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(SchedulerFileError, match="is not a saved neural scheduler"):
        load_scheduler(tmp_path)
    embeddings, _ = _clusters()
    save_scheduler(
        tmp_path / "s",
        SafetyHead.for_embeddings(embeddings, "mlp", 8),
        FAKE_ENCODER,
        ScoreCalibration.fit(torch.randn(20)),
    )
    config_path = tmp_path / "s" / "scheduler.json"
    config = json.loads(config_path.read_text())
    config["head"]["hidden"] = 9
    config_path.write_text(json.dumps(config))
    with pytest.raises(SchedulerFileError, match="does not match the head"):
        load_scheduler(tmp_path / "s")


def test_scalar_logits_start_from_a_pretrained_scheduler(tmp_path: Path) -> None:
    trainer = BDSTrainer(_config(tmp_path, "pre", steps=2))
    trainer.setup()
    trainer.train()
    assert isinstance(trainer.scheduler, NeuralScheduler)
    trainer.scheduler.save(tmp_path / "sched")
    pretrained_logits = trainer.scheduler.all_logits().detach()
    context = SchedulerContext(
        num_examples=len(trainer.data.train_examples),
        examples=trainer.data.train_examples,
        model=trainer.model,
        tokenizer=trainer.tokenizer,
    )
    scalar = build_scheduler(
        SchedulerSettings(kind="scalar", init_path=str(tmp_path / "sched")), context
    )
    assert isinstance(scalar, ScalarScheduler)
    assert torch.allclose(
        scalar.scheduler_logits, pretrained_logits - pretrained_logits.mean(), atol=1e-5
    )


def test_harmful_share_estimate_clamps_like_the_harm_scores() -> None:
    """A broad harmful mode outweighs a narrow benign one far out in the benign tail; without
    the clamp every very safe-looking example would count as harmful."""
    calibration = ScoreCalibration(
        [MixtureComponent(0.3, -2.0, 3.0), MixtureComponent(0.7, 2.0, 0.5)]
    )
    far_benign = torch.full((50,), 6.0)
    assert calibration.harm_scores(far_benign).max().item() < 0.1
    assert calibration.estimate_harmful_share(far_benign) < 0.01
    far_harmful = torch.full((50,), -6.0)
    assert calibration.estimate_harmful_share(far_harmful) > 0.99


def test_calibration_finds_the_two_modes_without_labels() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.cat(
        [
            torch.randn(40, generator=generator) * 0.5 - 3.0,
            torch.randn(160, generator=generator) * 0.5 + 1.0,
        ]
    )
    calibration = ScoreCalibration.fit(logits)
    assert calibration.harmful.mean == pytest.approx(-3.0, abs=0.3)
    assert calibration.components[-1].mean == pytest.approx(1.0, abs=0.3)
    assert calibration.pretraining_harmful_share == pytest.approx(0.2, abs=0.03)
    scores = calibration.harm_scores(torch.tensor([-5.0, -3.0, -1.0, 1.0, 5.0]))
    assert torch.all(scores[:-1] >= scores[1:]) and scores[0] > 0.99 and scores[-1] < 0.01
    # Broad benign data with several modes must not pull the boundary towards benign examples.
    multimodal = torch.cat(
        [
            torch.randn(30, generator=generator) * 0.2 - 5.0,
            torch.randn(60, generator=generator) * 0.3,
            torch.randn(60, generator=generator) * 0.3 + 6.0,
        ]
    )
    wide = ScoreCalibration.fit(multimodal)
    assert wide.harmful.mean == pytest.approx(-5.0, abs=0.2) and len(wide.components) == 3
    scores = wide.harm_scores(multimodal)
    assert bool((scores[:30] > 0.5).all()) and bool((scores[30:] < 0.5).all())
    shifted = torch.cat(
        [
            torch.randn(100, generator=generator) * 0.5 - 3.0,
            torch.randn(100, generator=generator) * 0.5 + 1.0,
        ]
    )
    assert calibration.estimate_harmful_share(shifted) == pytest.approx(0.5, abs=0.05)


def test_options_are_validated_by_name() -> None:
    with pytest.raises(ValueError, match="unknown neural scheduler option"):
        NeuralOptions.from_options({"encoder": "minilm-l6-v2", "layers": 3})
    with pytest.raises(ValueError, match="encoder must be one of"):
        NeuralOptions.from_options({"encoder": "bert"})
    with pytest.raises(ValueError, match="head must be one of"):
        NeuralOptions(head="transformer")
