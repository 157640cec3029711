"""``vigface jobs``: order datasets from a running service (``VIGFACE_URL``,
``VIGFACE_API_KEY``)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from app.cli.common import fail, order_options

app = typer.Typer(no_args_is_help=True, help="Order datasets from a running service.")


def _client(url: str, key: str | None):
    import os

    from app.client import VIGFaceClient

    key = key or os.environ.get("VIGFACE_API_KEY")
    if not key:
        fail("give --api-key or set VIGFACE_API_KEY")
    return VIGFaceClient(url, key)


URL_OPT = typer.Option("http://127.0.0.1:8000", "--url", envvar="VIGFACE_URL", help="service URL")
KEY_OPT = typer.Option(None, "--api-key", help="team API key (or VIGFACE_API_KEY)")


@app.command("submit")
@order_options()
def jobs_submit(
    order: dict,
    model: str | None = None,
    priority: int = 5,
    webhook_url: str | None = None,
    idempotency_key: str | None = None,
    wait: bool = typer.Option(False, help="wait for the job with a progress bar"),
    url: str = URL_OPT,
    api_key: str | None = KEY_OPT,
) -> None:
    """Submit an order; prints the job as JSON (its id on the last line)."""
    from app.client import APIError

    order = {**order, "priority": priority}
    if model:
        order["model"] = model
    if webhook_url:
        order["webhook_url"] = webhook_url
    c = _client(url, api_key)
    try:
        job = c.submit(idempotency_key=idempotency_key, **order)
        if wait:
            job = c.wait(job["id"])
    except APIError as exc:
        fail(str(exc))
    typer.echo(json.dumps(job, indent=2, default=str))
    typer.echo(job["id"])


@app.command("status")
def jobs_status(job_id: str, url: str = URL_OPT, api_key: str | None = KEY_OPT) -> None:
    """Print a job as JSON."""
    from app.client import APIError

    try:
        typer.echo(json.dumps(_client(url, api_key).job(job_id), indent=2, default=str))
    except APIError as exc:
        fail(str(exc))


@app.command("download")
def jobs_download(
    job_id: str,
    format_: str = typer.Option("imagefolder", "--format"),
    out: Path = typer.Option(..., help="destination folder"),
    url: str = URL_OPT,
    api_key: str | None = KEY_OPT,
) -> None:
    """Download one output format with the manifest, card and report."""
    from app.client import APIError

    try:
        files = _client(url, api_key).download(job_id, format_, out)
    except APIError as exc:
        fail(str(exc))
    typer.echo(f"{len(files)} files in {out}")
