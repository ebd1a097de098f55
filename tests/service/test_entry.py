"""The `bds` entry point: every command is there, and service commands start without torch."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from bds_service.entry import SERVICE_COMMANDS, build_app, needs_ml


def _run_bds(*args: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys\n"
        "from bds_service.entry import main\n"
        f"sys.argv = ['bds', *{list(args)!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('TORCH_LOADED', 'torch' in sys.modules)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )


def test_service_commands_do_not_import_the_ml_stack() -> None:
    result = _run_bds("admin", "--help")
    assert "create-tenant" in result.stdout and "create-key" in result.stdout
    assert "TORCH_LOADED False" in result.stdout


def test_the_full_command_lists_ml_and_service_commands() -> None:
    result = CliRunner().invoke(build_app(), ["--help"])
    assert result.exit_code == 0, result.output
    for name in ("train", "score", "models", "scheduler", "bench", *SERVICE_COMMANDS):
        assert name in result.output


def test_which_command_lines_need_the_ml_stack() -> None:
    assert needs_ml([]) and needs_ml(["--help"]) and needs_ml(["train", "--model", "x"])
    assert needs_ml(["bench", "run"]) and needs_ml(["score", "admin.jsonl"])
    assert not needs_ml(["admin", "create-key", "--tenant", "acme"])
    assert not needs_ml(["serve", "--port", "8000"]) and not needs_ml(["worker"])
