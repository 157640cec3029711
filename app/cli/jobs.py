"""``vigface jobs``: order datasets from a running service (``VIGFACE_URL``,
``VIGFACE_API_KEY``)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from app.cli.common import fail, order_options

app = typer.Typer(
    no_args_is_help=True, help="Order datasets from a running service.", rich_markup_mode="markdown"
)


def _call(url: str, fn, *args, **kw):
    """Run a client call; refused connections and API errors become one line and exit 2."""
    import httpx

    from app.client import APIError

    try:
        return fn(*args, **kw)
    except APIError as exc:
        fail(str(exc))
    except httpx.HTTPError as exc:
        fail(
            f"cannot reach the service at {url} ({type(exc).__name__}: {exc}); is it running? "
            "(--url or VIGFACE_URL)"
        )


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

    order = {**order, "priority": priority}
    if model:
        order["model"] = model
    if webhook_url:
        order["webhook_url"] = webhook_url
    c = _client(url, api_key)
    job = _call(url, c.submit, idempotency_key=idempotency_key, **order)
    if wait:
        job = _call(url, c.wait, job["id"])
    typer.echo(json.dumps(job, indent=2, default=str))
    typer.echo(job["id"])


@app.command("status")
def jobs_status(job_id: str, url: str = URL_OPT, api_key: str | None = KEY_OPT) -> None:
    """Print a job as JSON."""
    job = _call(url, _client(url, api_key).job, job_id)
    typer.echo(json.dumps(job, indent=2, default=str))


@app.command("list")
def jobs_list(
    status: str | None = typer.Option(None, help="queued, running, ..., canceled"),
    url: str = URL_OPT,
    api_key: str | None = KEY_OPT,
) -> None:
    """One line per job of this team, newest first: id, status, images done / requested."""
    for job in _call(url, _client(url, api_key).jobs, status):
        typer.echo(
            f"{job['id']}  {job['status']:<10}  {job['images_done']}/{job['images_requested']}"
            f"  {job['created_at']}"
        )


@app.command("cancel")
def jobs_cancel(job_id: str, url: str = URL_OPT, api_key: str | None = KEY_OPT) -> None:
    """Cancel a queued or running job (a finished one stays as it is); prints its status."""
    typer.echo(_call(url, _client(url, api_key).cancel, job_id)["status"])


@app.command("retry")
def jobs_retry(job_id: str, url: str = URL_OPT, api_key: str | None = KEY_OPT) -> None:
    """Run a failed job again from where it stopped (finished shards are kept)."""
    typer.echo(_call(url, _client(url, api_key).retry, job_id)["status"])


@app.command("download")
def jobs_download(
    job_id: str,
    format_: str = typer.Option("all", "--format", help="imagefolder, recordio, webdataset or all"),
    out: Path = typer.Option(..., help="destination folder (or the .tar file with --archive)"),
    archive: bool = typer.Option(False, help="one tar of the whole dataset instead of files"),
    url: str = URL_OPT,
    api_key: str | None = KEY_OPT,
) -> None:
    """Download a finished dataset: files of one format (or all) with the manifest, card and
    report, resuming where an earlier download stopped; or, with --archive, one tar file."""
    client = _client(url, api_key)
    if archive:
        typer.echo(str(_call(url, client.archive, job_id, out)))
        return
    files = _call(url, client.download, job_id, format_, out)
    typer.echo(f"{len(files)} files in {out}")
