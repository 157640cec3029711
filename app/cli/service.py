"""Running the service: ``serve``, ``quickstart``, ``worker``, and ``vigface admin`` for
teams and keys (same settings as the service: ``VIGFACE_*``)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from app.cli.common import fail

admin_app = typer.Typer(
    no_args_is_help=True,
    help="Teams and API keys (same settings as serve).",
    rich_markup_mode="markdown",
)


def _sessions():
    from jobstore.session import init_db, session_factory
    from jobstore.settings import get_settings

    settings = get_settings()
    init_db(settings.database_url)
    return session_factory(settings.database_url), settings


@admin_app.command("create-team")
def create_team_cmd(
    name: str,
    quota: int | None = typer.Option(
        None, min=0, max=2**31 - 1, help="images per month (default: settings)"
    ),
    admin: bool = typer.Option(False, help="admin role: sees every team's jobs"),
) -> None:
    """Create a team."""
    from app.services.auth import create_team

    sessions, settings = _sessions()
    with sessions() as db:
        try:
            team = create_team(
                db, name, settings.default_monthly_quota if quota is None else quota, admin
            )
        except ValueError as exc:
            fail(str(exc))
        typer.echo(f"created team {team.name} (id {team.id})")


@admin_app.command("create-key")
def create_key_cmd(team: str) -> None:
    """Create an API key for a team; the key is the last line printed (shown only once)."""
    from app.services.auth import create_key

    sessions, _ = _sessions()
    with sessions() as db:
        try:
            key = create_key(db, team)
        except ValueError as exc:
            fail(str(exc))
    typer.echo(f"API key for {team} (store it now; only its hash is kept):")
    typer.echo(key)


@admin_app.command("revoke-key")
def revoke_key_cmd(prefix: str) -> None:
    """Revoke an API key by its first characters (API calls and dashboard sessions end)."""
    from app.services.auth import revoke_key

    sessions, _ = _sessions()
    with sessions() as db:
        try:
            key = revoke_key(db, prefix)
        except ValueError as exc:
            fail(str(exc))
        typer.echo(f"revoked key {key.prefix}... of team {key.team.name}")


@admin_app.command("add-benchmark")
def add_benchmark_cmd(
    name: str = typer.Argument(..., help="what jobs call it in evaluate_on (lfw, cfp_fp, ...)"),
    file: Path = typer.Argument(..., help="insightface .bin verification pairs"),
) -> None:
    """Register a benchmark for the utility probe: jobs name it in ``evaluate_on``."""
    import re

    from app.schemas import BENCHMARK_NAME_PATTERN
    from app.services.admission import benchmark_key
    from jobstore.settings import get_settings
    from model_store.storage import open_store
    from vigface.data import DatasetError, load_bin

    if not re.fullmatch(BENCHMARK_NAME_PATTERN, name):
        fail(f"NAME: letters, digits, '.', '_', '-' (at most 100), not {name!r}")
    if not file.is_file():
        fail(f"FILE: not found: {file}")
    try:
        _, issame = load_bin(file)
    except DatasetError as exc:
        fail(f"FILE: {exc}")
    settings = get_settings()
    open_store(settings.storage_url, settings.s3_endpoint_url).put_file(benchmark_key(name), file)
    typer.echo(f"benchmark {name}: {len(issame)} pairs")


def service_server(config, worker):
    """uvicorn's server, told about the embedded worker: Ctrl-C or SIGTERM (what docker and
    systemd send) asks the worker to hand its shard back at once (it stops inside the current
    sampling batch; the batches before it are kept) and says so; then the API stops and the
    process exits 0 instead of re-raising the signal, which for SIGTERM would skip the
    hand-back."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if worker is not None and not self.should_exit:
                worker.stopping.set()
                typer.echo(
                    "stopping: the running shard goes back to the queue now; its finished "
                    "sampling batches are kept for the next start",
                    err=True,
                )
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                yield
                self._captured_signals.clear()  # stopped cleanly: exit 0

    return Server(config)


def serve_cmd(
    host: str | None = typer.Option(None, help="default: VIGFACE_HOST (127.0.0.1)"),
    port: int | None = typer.Option(None, help="default: VIGFACE_PORT (8000)"),
    embedded_worker: bool | None = typer.Option(
        None, help="run shards in this process (default: when no broker is configured)"
    ),
    workers: int = typer.Option(
        1, min=1, help="API processes (with a broker only: the embedded worker needs one)"
    ),
) -> None:
    """Start the API (and, without a broker, an in-process worker)."""
    import os

    os.environ.setdefault("VIGFACE_DB_APPLICATION_NAME", "vigface-serve")
    import uvicorn

    from app.http_limits import BoundedHeadProtocol
    from app.main import create_app
    from jobstore.settings import get_settings

    settings = get_settings().model_copy(
        update={"host": host or get_settings().host, "port": port or get_settings().port}
    )  # links and cookies follow the address actually served
    embedded = embedded_worker if embedded_worker is not None else not settings.broker_url
    if workers > 1 and embedded:
        fail("--workers: more than one API process needs a broker (VIGFACE_BROKER_URL)")
    typer.echo(
        f"VIGFACE service on {settings.base_url}  dashboard {settings.base_url}/ui  "
        f"API docs {settings.base_url}/docs\n  database {settings.database_url}  "
        f"storage {settings.storage_url}"
    )
    if workers > 1:
        # the processes build their app from the environment: give them the served address
        os.environ["VIGFACE_HOST"], os.environ["VIGFACE_PORT"] = settings.host, str(settings.port)
        from jobstore.session import init_db, session_factory

        init_db(settings.database_url)  # once, before the processes race to migrate
        start_reaper(settings, session_factory(settings.database_url))
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=workers,
            log_level="info",
            http=BoundedHeadProtocol,
        )
        return
    api = create_app(settings)
    worker = None
    if embedded:
        warn_if_home_served(settings)
        from workers.embedded import EmbeddedWorker

        worker = EmbeddedWorker(api.state.sessions, settings)
        worker.start()
    if settings.broker_url:
        start_reaper(settings, api.state.sessions)
    config = uvicorn.Config(
        api, host=settings.host, port=settings.port, log_level="info", http=BoundedHeadProtocol
    )
    try:
        service_server(config, worker).run()
    finally:
        if worker is not None:
            worker.stop()


_home_lock = None  # held for the life of the process


def warn_if_home_served(settings) -> None:
    """Two embedded services on one data home share its SQLite database and run each other's
    shards: say so when another one holds it (a lock file in the home, released at exit)."""
    import fcntl

    global _home_lock
    settings.home.mkdir(parents=True, exist_ok=True)
    path = settings.home / "service.lock"
    lock = open(path, "a+")  # noqa: SIM115 - kept open: the lock lasts as long as the process
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        other = lock.read().strip() or "another process"
        typer.secho(
            f"warning: {other} already serves this data home ({settings.home}); both share its "
            "database, jobs and worker. For a separate service set VIGFACE_HOME to another "
            "folder.",
            fg=typer.colors.YELLOW,
            err=True,
        )
        lock.close()
        return
    import os

    lock.seek(0)
    lock.truncate()
    lock.write(f"vigface (pid {os.getpid()}, {settings.base_url})")
    lock.flush()
    _home_lock = lock


def start_reaper(settings, sessions) -> None:
    """One reconciler per deployment's API (in the supervising process with --workers)."""
    from workers.celery_app import CeleryDispatch
    from workers.reaper import Reaper

    dispatch = CeleryDispatch(settings)
    enqueue_shard, enqueue_finalize = dispatch.enqueue_shard, dispatch.enqueue_finalize
    Reaper(sessions, settings, enqueue_shard, enqueue_finalize).start()


def quickstart_cmd(
    team: str = typer.Option("demo", help="team created on first start"),
    host: str | None = None,
    port: int | None = None,
) -> None:
    """The embedded service for a first try: creates a team and prints its API key the first
    time, then serves the API with an in-process worker (SQLite, local store, demo model)."""
    from sqlalchemy import select

    from app.services.auth import create_key, create_team
    from jobstore.models import Team

    sessions, settings = _sessions()
    with sessions() as db:
        if db.scalar(select(Team).where(Team.name == team)) is None:
            create_team(db, team, settings.default_monthly_quota)
            key = create_key(db, team)
            typer.secho(
                f"Team {team!r} created. Its API key (shown once, only its hash is kept):",
                fg=typer.colors.GREEN,
            )
            typer.echo(key)
        else:
            typer.echo(f"Team {team!r} exists; a new key: vigface admin create-key {team}")
    serve_cmd(host=host, port=port, embedded_worker=True, workers=1)


def migrate_cmd() -> None:
    """Bring the database schema to the latest migration and exit (the production compose runs
    this once before the API and workers start)."""
    _, settings = _sessions()
    typer.echo(f"database at the latest schema: {settings.database_url.split('@')[-1]}")


def worker_cmd(
    queues: str = typer.Option(
        "gpu,webhooks", help="Celery queues to consume (shards, webhook deliveries)"
    ),
    concurrency: int = typer.Option(1, help="processes: one per GPU"),
) -> None:
    """Start a Celery GPU worker (needs VIGFACE_BROKER_URL)."""
    import os

    from jobstore.settings import get_settings

    os.environ.setdefault("VIGFACE_DB_APPLICATION_NAME", "vigface-worker")
    if not get_settings().broker_url:
        fail("VIGFACE_BROKER_URL is not set: the worker needs a broker (or use `vigface serve`)")
    _sessions()
    from workers.celery_app import celery_app

    celery_app.worker_main(
        ["worker", "-Q", queues, "-c", str(concurrency), "--loglevel", "INFO", "-n", "vigface@%h"]
    )


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
    app.command("quickstart")(quickstart_cmd)
    app.command("worker")(worker_cmd)
    app.command("migrate")(migrate_cmd)
