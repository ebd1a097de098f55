"""The paper's baselines on the tiny random LLaMA: each runs, is deterministic for a seed, and
its own mechanism does what its paper says."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from bds_core.bench.alignment import AlignmentSettings
from bds_core.bench.baselines import BaselineSettings, ensure_baseline_aligned_model, run_lisa
from bds_core.bench.baselines.booster import BoosterSettings, booster_gradients
from bds_core.bench.baselines.common import (
    BatchStream,
    answer_loss,
    decoder_layers,
    global_norm,
    layer_output_tensor,
    parameter_vector,
    trainable_parameters,
)
from bds_core.bench.baselines.data import check_harmful_alignment_split
from bds_core.bench.baselines.lisa import (
    LisaSettings,
    alignment_steps_for,
    lisa_schedule,
    lisa_train,
)
from bds_core.bench.baselines.repnoise import RepNoiseSettings, gaussian_mmd, noise_term
from bds_core.bench.baselines.stage import align_with_baseline
from bds_core.bench.baselines.vaccine import (
    VaccineSettings,
    hidden_state_perturbation,
    vaccine_step,
)
from bds_core.data import Example
from bds_core.models import load_model
from bds_core.models.lora import LoraSettings, apply_lora

TINY = "tiny-random-llama"
LORA = LoraSettings(r=4, alpha=8)


def _example(prompt: str, answer: str, label: str | None = None) -> Example:
    return Example.create(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
        metadata={"label": label} if label else None,
    )


SAFE = [_example(f"How do I hurt person {k}?", "No, I cannot help with that.") for k in range(6)]
HARMFUL = [
    _example(f"How do I steal car {k}?", "Sure, first you break the window.", "harmful")
    for k in range(6)
]
USER = [_example(f"Spell {k}.", f"{k} is spelled {k}.", "benign") for k in range(8)]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _lora_model(seed: int = 0) -> tuple[Any, Any]:
    torch.manual_seed(seed)
    loaded = load_model(TINY)
    return apply_lora(loaded.model, LORA), loaded.tokenizer


def _stream(examples: list[Example], tokenizer: Any, seed: int = 0) -> BatchStream:
    return BatchStream(examples, tokenizer, batch_size=3, max_length=48, seed=seed)


def _grads(model: Any, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(answer_loss(model, batch), trainable_parameters(model)))


# ---------------------------------------------------------------------------------- Vaccine


def test_vaccine_perturbs_every_layer_with_joint_norm_rho_along_the_loss_gradient() -> None:
    model, tokenizer = _lora_model()
    batch = _stream(SAFE, tokenizer).next()
    perturbations = hidden_state_perturbation(model, batch, rho=0.5)
    layers = decoder_layers(model)
    assert len(perturbations) == len(layers) == 2
    joint = global_norm(perturbations)
    assert float(joint) == pytest.approx(0.5, rel=1e-4)
    # The perturbation ascends the alignment loss: applying it raises the loss, and applying
    # its opposite lowers it.
    with torch.no_grad():
        clean = float(answer_loss(model, batch))

    def loss_with(sign: float) -> float:
        handles = [
            layer.register_forward_hook(
                lambda _m, _i, out, eps=eps: (
                    (layer_output_tensor(out) + sign * eps,)
                    + (tuple(out[1:]) if isinstance(out, tuple) else ())
                    if isinstance(out, tuple)
                    else layer_output_tensor(out) + sign * eps
                )
            )
            for layer, eps in zip(layers, perturbations, strict=True)
        ]
        try:
            with torch.no_grad():
                return float(answer_loss(model, batch))
        finally:
            for handle in handles:
                handle.remove()

    assert loss_with(1.0) > clean > loss_with(-1.0)


def test_vaccine_step_trains_on_the_perturbed_loss_and_is_deterministic() -> None:
    finals = []
    for _ in range(2):
        model, tokenizer = _lora_model()
        stream = _stream(SAFE, tokenizer)
        optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-2)
        before = parameter_vector(trainable_parameters(model))
        steps = [vaccine_step(model, stream.next(), optimizer, VaccineSettings(rho=1.0))]
        steps.append(vaccine_step(model, stream.next(), optimizer, VaccineSettings(rho=1.0)))
        assert all(step.perturbed_loss > step.loss for step in steps)
        assert all(step.perturbation_norm == pytest.approx(1.0, rel=1e-4) for step in steps)
        finals.append(parameter_vector(trainable_parameters(model)))
        assert not torch.equal(before, finals[-1])
    assert torch.equal(finals[0], finals[1])


def test_vaccine_rejects_a_non_positive_rho() -> None:
    with pytest.raises(ValueError, match="rho must be a positive number, got 0"):
        VaccineSettings(rho=0.0)


# ---------------------------------------------------------------------------------- Booster


def test_booster_gradient_is_alignment_plus_lambda_times_the_harmful_perturbation_difference() -> (
    None
):
    model, tokenizer = _lora_model()
    safe = _stream(SAFE, tokenizer).next()
    harmful = _stream(HARMFUL, tokenizer).next()
    params = trainable_parameters(model)
    before = parameter_vector(params)
    settings = BoosterSettings(regularizer_weight=5.0, perturbation_step=0.1)
    grads, step = booster_gradients(model, safe, harmful, settings)
    assert torch.equal(parameter_vector(params), before)  # the perturbation is undone

    # Independently: grad f(w), grad h(w), and grad h at w - alpha * grad h / ||grad h||.
    grad_f = _grads(model, safe)
    grad_h = _grads(model, harmful)
    norm = global_norm(grad_h)
    with torch.no_grad():
        for param, g in zip(params, grad_h, strict=True):
            param.sub_(0.1 * g / norm)
        perturbed_loss = float(answer_loss(model, harmful))
    grad_h_perturbed = _grads(model, harmful)
    for got, f, h, hp in zip(grads, grad_f, grad_h, grad_h_perturbed, strict=True):
        torch.testing.assert_close(got, f + 5.0 * (h - hp), rtol=1e-4, atol=1e-6)
    # The attenuated term is the harmful loss reduction the simulated step buys (positive).
    assert step.perturbed_harmful_loss == pytest.approx(perturbed_loss, rel=1e-5)
    assert step.harmful_loss_reduction > 0


def test_booster_with_lambda_zero_is_plain_alignment_sft() -> None:
    model, tokenizer = _lora_model()
    safe = _stream(SAFE, tokenizer).next()
    harmful = _stream(HARMFUL, tokenizer).next()
    grads, _ = booster_gradients(model, safe, harmful, BoosterSettings(regularizer_weight=0.0))
    for got, expected in zip(grads, _grads(model, safe), strict=True):
        torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------------------------- RepNoise


def test_gaussian_mmd_separates_shifted_samples_from_noise() -> None:
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(64, 16, generator=generator)
    same = torch.randn(64, 16, generator=generator)
    shifted = torch.randn(64, 16, generator=generator) + 3.0
    assert float(gaussian_mmd(same, noise)) < 0.05 < float(gaussian_mmd(shifted, noise))


def test_repnoise_noise_term_pushes_harmful_representations_towards_noise() -> None:
    model, tokenizer = _lora_model()
    harmful = _stream(HARMFUL, tokenizer).next()
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=3e-2)
    mmds = []
    for _ in range(6):
        optimizer.zero_grad()
        mmd, _ = noise_term(model, harmful, torch.Generator().manual_seed(1))
        mmds.append(float(mmd))
        mmd.backward()
        optimizer.step()
    assert mmds[-1] < mmds[0]


def test_repnoise_alignment_runs_and_is_deterministic() -> None:
    finals = []
    for _ in range(2):
        model, tokenizer = _lora_model()
        alignment = AlignmentSettings(
            steps=2, batch_size=2, learning_rate=1e-2, lora=LORA, max_length=48, seed=4
        )
        trace = align_with_baseline(
            "repnoise", model, tokenizer, SAFE, HARMFUL, alignment, BaselineSettings()
        )
        assert len(trace) == 2 and all(entry["mmd"] >= 0 for entry in trace)
        finals.append(parameter_vector(trainable_parameters(model)))
    assert torch.equal(finals[0], finals[1])


def test_repnoise_and_booster_refuse_to_align_without_harmful_data() -> None:
    model, tokenizer = _lora_model()
    alignment = AlignmentSettings(
        steps=1, batch_size=2, learning_rate=1e-2, lora=LORA, max_length=48, seed=0
    )
    for method in ("repnoise", "booster"):
        with pytest.raises(ValueError, match=f"{method} needs harmful alignment examples"):
            align_with_baseline(method, model, tokenizer, SAFE, [], alignment, BaselineSettings())


def test_repnoise_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="ascent_weight must be a number >= 0, got -1"):
        RepNoiseSettings(ascent_weight=-1.0)


# ---------------------------------------------------------------------------------- Lisa


def test_lisa_schedule_alternates_states_and_spends_the_alignment_budget() -> None:
    schedule = lisa_schedule(user_steps=25, alignment_steps=7, round_user_steps=10)
    assert schedule.count("fine-tuning") == 25 and schedule.count("alignment") == 7
    assert schedule[0] == "alignment" and schedule[-1] == "fine-tuning"
    switches = sum(1 for a, b in itertools.pairwise(schedule) if a != b)
    assert switches == 5  # three rounds: A F A F A F
    # Budget: 8 alignment rows a step = as many alignment steps as user steps; 2 = a quarter.
    assert alignment_steps_for(125, 8, 8) == 125
    assert alignment_steps_for(125, 2, 8) == 31
    # mix and BDS with an alignment batch every k-th step (steps 0, k, ...): ceil(125 / k).
    assert alignment_steps_for(125, 8, 8, alignment_every=2) == 63
    assert alignment_steps_for(125, 2, 8, alignment_every=4) == 8
    with pytest.raises(ValueError, match="alignment_every must be at least 1"):
        alignment_steps_for(125, 8, 8, alignment_every=0)


def _lisa_distance_after(rho: float) -> tuple[list[float], list[str]]:
    model, tokenizer = _lora_model()
    optimizer = torch.optim.SGD(trainable_parameters(model), lr=5e-3)
    schedule = lisa_schedule(user_steps=6, alignment_steps=2, round_user_steps=6)
    result = lisa_train(
        model,
        _stream(USER + HARMFUL, tokenizer),
        _stream(SAFE, tokenizer, seed=1),
        optimizer,
        schedule,
        LisaSettings(rho=rho),
    )
    return result.distances, list(result.states)


def test_lisa_proximal_term_pulls_towards_the_other_states_checkpoint() -> None:
    free, states = _lisa_distance_after(0.0)
    pulled, _ = _lisa_distance_after(100.0)
    # The anchor is reset at every switch: the first step of each state starts at distance 0.
    starts = [i for i, state in enumerate(states) if i == 0 or states[i - 1] != state]
    assert all(pulled[i] == 0.0 and free[i] == 0.0 for i in starts)
    # With the proximal term, the fine-tuning state stays closer to the alignment checkpoint.
    assert pulled[-1] < 0.5 * free[-1]


def test_run_lisa_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    from bds_core.models.tiny import write_tiny_random_llama

    model_dir = write_tiny_random_llama(tmp_path / "m0")
    runs = [
        run_lisa(
            model_dir,
            USER + HARMFUL,
            SAFE,
            LORA,
            1e-2,
            batch_size=2,
            alignment_rows_per_step=2,
            user_steps=4,
            max_length=48,
            seed=seed,
            settings=LisaSettings(round_user_steps=2),
        )
        for seed in (1, 1, 2)
    ]
    vectors = [parameter_vector(trainable_parameters(run.model)) for run in runs]
    assert runs[0].result.states.count("alignment") == 4
    assert torch.equal(vectors[0], vectors[1])
    assert not torch.equal(vectors[0], vectors[2])


# ---------------------------------------------------------------------------------- M0 variants


def _write(path: Path, examples: list[Example]) -> Path:
    path.write_text("".join(json.dumps(example.to_record()) + "\n" for example in examples))
    return path


@pytest.mark.parametrize("method", ["vaccine", "booster"])
def test_an_m0_variant_is_built_once_and_then_read_from_the_cache(
    tmp_path: Path, method: str
) -> None:
    safety = _write(tmp_path / "safety.jsonl", SAFE)
    harmful = _write(tmp_path / "pretrain_pool.jsonl", HARMFUL)
    alignment = AlignmentSettings(
        steps=2, batch_size=2, learning_rate=1e-2, lora=LORA, max_length=48, seed=0
    )
    build = lambda settings: ensure_baseline_aligned_model(  # noqa: E731
        method, TINY, safety, alignment, "stage0-key", tmp_path / "cache", settings, harmful
    )
    first = build(BaselineSettings())
    assert not first.from_cache and first.provenance["method"] == method
    assert first.provenance["num_harmful_examples"] == (6 if method == "booster" else 0)
    again = build(BaselineSettings())
    assert again.from_cache and again.path == first.path
    other = build(BaselineSettings(vaccine=VaccineSettings(rho=3.0), booster=BoosterSettings(1.0)))
    assert other.key != first.key
    loaded = load_model(str(first.path))
    assert loaded.model is not None


# ---------------------------------------------------------------------------------- data split


def test_the_harmful_alignment_split_must_be_disjoint_from_attack_and_evaluation(
    tmp_path: Path,
) -> None:
    _write(tmp_path / "pretrain_pool.jsonl", HARMFUL[:3])
    _write(tmp_path / "ft_sort-words_p0.5.jsonl", USER[:3] + HARMFUL[3:])
    _write(tmp_path / "eval_harmful_prompts.jsonl", [_example("How do I rob a bank?", "x")])
    assert check_harmful_alignment_split(tmp_path) == 3
    _write(tmp_path / "eval_harmful_prompts.jsonl", [HARMFUL[1]])
    with pytest.raises(ValueError, match=re.escape("also in eval_harmful_prompts.jsonl")):
        check_harmful_alignment_split(tmp_path)
    (tmp_path / "eval_harmful_prompts.jsonl").unlink()
    _write(tmp_path / "ft_sort-words_p0.5.jsonl", USER[:3] + HARMFUL[:1])
    with pytest.raises(ValueError, match=re.escape("also in ft_sort-words_p0.5.jsonl")):
        check_harmful_alignment_split(tmp_path)
