"""The `bds` command: the ML library's commands and the service's, in one place.

This module sits above bds_core and bds_service and imports both; the API and the worker are
started by `bds serve` / `bds worker` as separate processes, so it never imports them.

The ML commands pull in torch and transformers (seconds to import); the service's commands
(`bds admin ...`, `bds migrate`, `bds serve`, `bds worker`) need neither, so for them only the
service's command group is mounted and an operator's `bds admin create-key` starts at once.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer

from bds_service.cli import service_app

SERVICE_COMMANDS = frozenset({"admin", "inference", "migrate", "serve", "worker"})
"""Top-level commands that need only the service's command group."""

HELP = "BDS fine-tuning: train with the Bayesian Data Scheduler, score datasets, run the service."


def build_app(*, include_ml: bool = True) -> typer.Typer:
    """The `bds` command; ``include_ml=False`` mounts only the service's commands."""
    app = typer.Typer(help=HELP, no_args_is_help=True, pretty_exceptions_show_locals=False)
    if not include_ml:
        app.add_typer(service_app)
        return app
    from bds_core.bench.cli import bench_app
    from bds_core.cli import train_app
    from bds_core.models.cli import models_app
    from bds_core.scoring.cli import scheduler_app, score_app

    app.add_typer(train_app)
    app.add_typer(score_app)
    app.add_typer(service_app)
    app.add_typer(models_app, name="models")
    app.add_typer(scheduler_app, name="scheduler")
    app.add_typer(bench_app, name="bench")
    return app


def needs_ml(args: Sequence[str]) -> bool:
    """Whether the command line names anything but a service command (or nothing at all)."""
    first = next((arg for arg in args if not arg.startswith("-")), None)
    return first not in SERVICE_COMMANDS


def main() -> None:
    """Console entry point."""
    build_app(include_ml=needs_ml(sys.argv[1:]))()
