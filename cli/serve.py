"""``copyscan serve``: the HTTP API and the review page; ``copyscan token``: its tokens."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

import click

from cli.app import CLI_DEFAULTS, App, errors_to_click
from cli.listing import Column, listing, output_options

_SCOPE_CHOICES = click.Choice(["check", "admin", "all"])


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8700, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Engine processes serving checks (0: one per CPU); they share one load of the model and index.",
)
@click.option(
    "--no-auth",
    is_flag=True,
    help="Serve without tokens: allowed only on a loopback --host, and said so at start.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    help="A file of check=TOKEN / admin=TOKEN lines (owner-only), instead of the stored tokens.",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="Answer this Host name too (repeatable; * for any). The bound address, localhost and "
    "127.0.0.1 are always answered.",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    metavar="URL",
    help="Let pages of this origin call the API with a bearer token (repeatable; CORS is off without it).",
)
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(min=0.001),
    default=20,
    show_default=True,
    help="Largest request body accepted (413 above).",
)
@click.option(
    "--max-stored-mb",
    type=click.FloatRange(min=0),
    default=2000,
    show_default=True,
    help="Uploads kept on disk at most (flagged checks' bytes and catalog images added over HTTP).",
)
@click.option("--max-note-chars", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option(
    "--header-timeout",
    type=click.FloatRange(min=0.1),
    default=10,
    show_default=True,
    help="Seconds a client has to send a request's headers.",
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(min=0.1),
    default=30,
    show_default=True,
    help="Seconds a client has to send a request's body (408 after).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Open connections at most (503 beyond).",
)
@click.pass_obj
def serve(
    app: App,
    host: str,
    port: int,
    workers: int,
    no_auth: bool,
    token_file: str | None,
    allowed_hosts: tuple[str, ...],
    cors_origins: tuple[str, ...],
    max_upload_mb: float,
    max_stored_mb: float,
    max_note_chars: int,
    header_timeout: float,
    body_timeout: float,
    max_connections: int,
) -> None:
    """Serve the HTTP API and the review page (FastAPI on uvicorn).

    POST /v1/check (check token), POST /v1/catalog, DELETE /v1/catalog/ID, DELETE
    /v1/catalog?external_id=, GET /v1/stats, /v1/checks, POST /v1/checks/ID/decision, GET /review
    (admin token), GET /v1/health (open); the OpenAPI description is at /openapi.json.
    Requests need `Authorization: Bearer TOKEN`; the tokens are made at the first start and
    shown once (`copyscan token rotate` makes new ones). The model and the index load once
    and are shared by the engine processes.
    """
    from detector.server.app import ServeOptions, Serving
    from detector.server.tokens import Tokens

    _log_to_stderr(app.quiet)
    with errors_to_click():
        options = ServeOptions(
            host=host,
            port=port,
            workers=workers,
            auth=not no_auth,
            allowed_hosts=allowed_hosts,
            cors_origins=cors_origins,
            max_upload_bytes=int(max_upload_mb * 1_000_000),
            max_stored_bytes=int(max_stored_mb * 1_000_000),
            max_note_chars=max_note_chars,
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            max_connections=max_connections,
        )
        tokens, new = (None, {}) if no_auth else Tokens.open(app.db, os.environ, token_file)
        serving = Serving.start(app.db, app.overrides, CLI_DEFAULTS, options, tokens)
    engines = len(serving.engines.pids)
    app.say(
        f"copyscan serving {app.db} on http://{host}:{port} with {engines} engine processes "
        "(review page: /review)"
    )
    for scope, token in new.items():  # shown whatever --quiet says: this is the only time
        click.echo(f"new {scope} token (shown once; `copyscan token rotate` replaces it): {token}", err=True)
    if tokens is None:
        click.echo(
            f"WARNING: authentication is OFF (--no-auth): anyone who can connect to {host}:{port} "
            "may check images, change the catalog and read the check history",
            err=True,
        )
    else:
        app.say("tokens: " + ", ".join(f"{i.scope} from {i.source}" for i in tokens.info()))
    serving.run()


@click.group()
def token() -> None:
    """The tokens of `copyscan serve`: rotate them or see where they come from."""


@token.command()
@click.option("--scope", type=_SCOPE_CHOICES, default="all", show_default=True)
@click.pass_obj
def rotate(app: App, scope: str) -> None:
    """Make new tokens (printed once, `SCOPE TOKEN` per line); the old ones stop working at
    once, also in a running server, and so do the review-page sessions signed in with them."""
    from detector.server.tokens import SCOPES, TokenStore

    with errors_to_click():
        fresh = TokenStore(app.db).rotate(SCOPES if scope == "all" else (scope,))
    for name, value in fresh.items():
        click.echo(f"{name} {value}")
    for var in ("COPYSCAN_CHECK_TOKEN", "COPYSCAN_ADMIN_TOKEN"):
        if os.environ.get(var):
            app.say(f"note: ${var} is set and wins over the stored token in a server started with it")


_TOKEN_COLUMNS = (Column("scope"), Column("source"), Column("created"))


@token.command(name="list")
@output_options
@click.pass_obj
def list_tokens(app: App, fmt: str, output: str) -> None:
    """Where each scope's token comes from and when a stored one was made (never the token
    itself)."""
    from detector.server.tokens import Tokens, TokenStore, given_tokens

    with errors_to_click(), listing(fmt, output, _TOKEN_COLUMNS) as out:
        for info in Tokens(TokenStore(app.db), given_tokens(os.environ)).info():
            out.write(dataclasses.asdict(info))


def _log_to_stderr(quiet: bool) -> None:
    """The server's one-line log messages (a client gone, a slow body cut) on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log = logging.getLogger("copyscan")
    log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False
