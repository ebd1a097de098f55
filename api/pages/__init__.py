"""Server-rendered pages: the provider's dashboard (``/admin``), the customers' safety reports
(``/reports``), and the login that both share. Styles and the one small script are served by
the app itself (``/static``); nothing loads from another origin."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from api.pages import admin, auth, reports
from api.pages.templating import STATIC_DIR


def install_pages(app: FastAPI) -> None:
    """Add the page routers and the static files to ``app``."""
    app.include_router(auth.router)
    app.include_router(admin.router)
    app.include_router(reports.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        """The tab icon browsers ask for on every page."""
        return FileResponse(
            STATIC_DIR / "favicon.ico",
            media_type="image/x-icon",
            headers={"Cache-Control": "public, max-age=86400"},
        )
