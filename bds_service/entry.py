"""The `bds` command: the ML library's commands and the service's, in one place.

This module sits above bds_core and bds_service and imports both; the API and the worker are
started by `bds serve` / `bds worker` as separate processes, so it never imports them.
"""

from __future__ import annotations

import typer

from bds_core.bench.cli import bench_app
from bds_core.cli import train_app
from bds_core.models.cli import models_app
from bds_core.scoring.cli import scheduler_app, score_app
from bds_service.cli import service_app

app = typer.Typer(
    help="BDS fine-tuning: train with the Bayesian Data Scheduler, score datasets, run the service.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(train_app)
app.add_typer(score_app)
app.add_typer(service_app)
app.add_typer(models_app, name="models")
app.add_typer(scheduler_app, name="scheduler")
app.add_typer(bench_app, name="bench")


def main() -> None:
    """Console entry point."""
    app()
