"""`bds gpu-check`'s measurement, run on CPU (the command itself refuses a machine without CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bds_core.training.gpu_check import GpuUnavailableError, run_gpu_check


def test_measures_both_methods_and_their_time_ratio(tmp_path: Path) -> None:
    report = run_gpu_check(
        steps=3, batch_size=4, max_length=64, precision="fp32", device="cpu", work_dir=tmp_path
    )
    assert set(report.runs) == {"sft", "bds"}
    for run in report.runs.values():
        assert run.timed_steps == 2
        assert run.seconds_per_step > 0 and run.tokens_per_second > 0
        assert run.peak_gpu_memory_mb is None  # not on a GPU
        assert run.final_loss is not None and run.final_loss > 0
    # BDS trains on alignment rows too: more tokens per step than SFT at the same batch.
    sft_tokens = report.runs["sft"].tokens_per_second * report.runs["sft"].seconds_per_step
    bds_tokens = report.runs["bds"].tokens_per_second * report.runs["bds"].seconds_per_step
    assert bds_tokens > sft_tokens
    ratio = report.bds_sft_ratio
    assert ratio == pytest.approx(
        report.runs["bds"].seconds_per_step / report.runs["sft"].seconds_per_step
    )
    assert report.to_dict()["bds_sft_ratio"] == ratio
    assert list(tmp_path.iterdir()) == []  # the scratch folder is removed


def test_refuses_cuda_where_there_is_none(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(GpuUnavailableError, match="needs a CUDA GPU"):
        run_gpu_check(steps=3, work_dir=tmp_path)


def test_too_few_steps_to_time_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="steps must be at least 3"):
        run_gpu_check(steps=2, device="cpu", work_dir=tmp_path)
