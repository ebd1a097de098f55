"""Issue 19's matrix: its commands, their run order, and that each parses as `bds bench run`."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from bds_core.bench.cli import bench_app
from bds_core.bench.matrix import matrix_commands, matrix_steps


def test_the_matrix_runs_reduced_budget_then_p09_then_baselines_then_remaining_seeds() -> None:
    commands = matrix_commands(Path("data"), Path("out"), seeds=(0, 1, 2))
    labels = [label for label, _ in commands]
    assert labels[0].startswith("reduced alignment budget")
    assert labels[1] == "p = 0.9"
    assert labels[2] == "baselines and every BDS variant"
    first_seed = [args for _, args in commands[:5]]
    assert all(args[args.index("--seeds") + 1] == "0" for args in first_seed)
    assert all(args[args.index("--seeds") + 1] == "0,1,2" for _, args in commands[5:])
    budget = commands[0][1]
    assert budget[budget.index("--safety-batch-size") + 1] == "2"
    assert budget[budget.index("--methods") + 1] == "mix,bds-neural,lisa"
    attack = dict(commands)["stronger attack (2x LoRA learning rate)"]
    assert attack[attack.index("--learning-rate") + 1] == "0.001"
    assert attack[attack.index("--shares") + 1] == "0.1"
    # Regimes with other settings get their own results folder.
    folders = {args[args.index("--out") + 1] for _, args in commands}
    assert folders == {"out/budget2", "out/main", "out/attack2x"}


def test_every_matrix_command_parses_as_bds_bench_run() -> None:
    group = typer.main.get_command(bench_app)
    for _, arguments in matrix_commands(Path("data"), Path("out"), best_baseline="booster"):
        assert arguments[1:3] == ["bench", "run"]
        context = group.make_context("bench", list(arguments[2:]), resilient_parsing=False)
        run = group.get_command(context, "run")  # type: ignore[attr-defined]
        assert run is not None
        run.make_context("run", list(arguments[3:]))  # raises on an unknown option


def test_best_names_are_checked() -> None:
    with pytest.raises(ValueError, match="'lisa' is not a BDS variant"):
        matrix_steps(best_bds="lisa")
    with pytest.raises(ValueError, match="'bds' is not a baseline"):
        matrix_steps(best_baseline="bds")
    p09 = [
        step for step in matrix_steps(best_baseline="vaccine") if step.label.endswith("baselines")
    ]
    assert p09[0].methods == ("vaccine",)


def test_the_matrix_command_prints_a_resumable_script() -> None:
    result = CliRunner().invoke(bench_app, ["matrix", "--seeds", "0,1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    runs = [line for line in lines if line.startswith(".venv/bin/bds bench run")]
    assert len(runs) == 10
    reports = [line for line in lines if line.startswith(".venv/bin/bds bench report")]
    assert len(reports) == 3
