"""``copyscan serve``: the HTTP API and the review page."""

from __future__ import annotations

import click

from cli.app import CLI_DEFAULTS, App, errors_to_click


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8700, show_default=True)
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(min=0.001),
    default=20,
    show_default=True,
    help="Largest request body accepted (413 above).",
)
@click.pass_obj
def serve(app: App, host: str, port: int, max_upload_mb: float) -> None:
    """Serve the HTTP API and the review page (FastAPI on uvicorn).

    POST /v1/check, POST /v1/catalog, DELETE /v1/catalog/ID, DELETE /v1/catalog?external_id=,
    GET /v1/health, /v1/stats, /v1/checks, POST /v1/checks/ID/decision, GET /review;
    the OpenAPI description is at /openapi.json. The model and the index load once.
    """
    import uvicorn

    from detector.server.service import CheckService, create_app

    with errors_to_click():
        engine = CheckService.open(app.db, app.overrides, CLI_DEFAULTS)
        engine.scanner("fast")  # load the index now, not on the first request
        _ = engine.models.embedder  # the model is built on first use: build it now
    app.say(f"copyscan serving {app.db} on http://{host}:{port} (review page: /review)")
    uvicorn.run(
        create_app(engine, int(max_upload_mb * 1_000_000)),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
    )
