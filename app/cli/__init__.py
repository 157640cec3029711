"""``vigface`` command line, one module per audience:

* ``train``: stage 1 and 2 training, evaluation, W_V refit, ONNX export;
* ``data``: sample grids, dataset generation, the outside judge, the utility probe;
* ``calibrate``: the filters' thresholds, drop rates and pose references of a generator;
* ``models``: the model store;
* ``jobs``: a client of a running service;
* ``service``: serve, quickstart, worker, and the admin commands.
"""

from __future__ import annotations

import typer

from app.cli import calibrate, data, jobs, models, service, train

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="vigface: synthetic face-recognition datasets of identities that do not exist.",
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # `code` in docstrings renders as code, not raw backticks
)


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", help="show tracebacks of unexpected errors"),
) -> None:
    import os

    if debug:
        os.environ["VIGFACE_DEBUG"] = "1"


train.register(app)
data.register(app)
calibrate.register(app)
service.register(app)
app.add_typer(models.app, name="models")
app.add_typer(jobs.app, name="jobs")
app.add_typer(service.admin_app, name="admin")


def main() -> None:  # pragma: no cover - console entry point
    """Unexpected errors print one line and exit 1; ``--debug`` (or ``VIGFACE_DEBUG=1``) shows
    the traceback."""
    import os
    import sys

    try:
        app(prog_name="vigface")
    except Exception as exc:
        if os.environ.get("VIGFACE_DEBUG"):
            raise
        print(
            f"error: {type(exc).__name__}: {exc} (--debug for the traceback)",
            file=sys.stderr,
        )
        sys.exit(1)
