"""What every command group shares: errors, logging, model loading, order options."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import types
import typing
from pathlib import Path

import typer

from vigface.dataset.spec import DatasetOrder


def fail(msg: str, code: int = 2) -> None:
    """One red line on stderr and a non-zero exit: the CLI's only way to report bad input."""
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def order_option(field: str, *param_decls: str, default=None, help: str | None = None, **kw):
    """A typer option for a :class:`DatasetOrder` field: its help and default come from the
    spec, so the CLI and the API describe an order the same way."""
    info = DatasetOrder.model_fields[field]
    if default is None:
        default = ... if info.is_required() else info.default
    if isinstance(default, list):
        default = ",".join(default)
    text = info.description + (f" ({help})" if help else "")
    return typer.Option(default, *param_decls, help=text, **kw)


def _option_type(annotation):
    """(the type typer parses, which of :data:`PARSERS` turns its text into the order's value)
    for a DatasetOrder field: numbers and flags as themselves, a tuple as "lo,hi", a list as
    comma-separated text, a str-or-dict (pose) as a preset name or JSON."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    inner = args[0] if optional and len(args) == 1 else annotation
    if optional and len(args) > 1:  # str | dict
        return (str, "pose")
    if typing.get_origin(inner) is typing.Annotated:
        inner = typing.get_args(inner)[0]
    origin = typing.get_origin(inner) or inner
    if origin is tuple:
        return (str | None, "interval")
    if origin is list:
        return (str, "formats")
    if origin in (int, float, bool):
        return (origin | None if optional else origin, None)
    return (str | None if optional else str, None)  # Literal choices arrive as text


# every DatasetOrder field as a CLI option: (annotation, extra param decls, parser name), built
# from the spec's own fields (the sampler's from SamplerSettings), so a new field shows up here
ORDER_OPTIONS = {
    name: (*_option_type(field.annotation)[:1], ("--format",) if name == "formats" else (),
           _option_type(field.annotation)[1])
    for name, field in DatasetOrder.model_fields.items()
}  # fmt: skip


def order_options(**defaults):
    """Give a command every :data:`ORDER_OPTIONS` field as an option (help and defaults from
    the spec, ``defaults`` overriding), parsed and collected into one ``order`` dict argument
    (fields left at None are dropped: the model card decides them)."""

    def decorate(fn):
        sig = inspect.signature(fn)
        added = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=order_option(name, *decls, default=defaults.get(name)),
                annotation=annotation,
            )
            for name, (annotation, decls, _) in ORDER_OPTIONS.items()
        ]
        own = [p for p in sig.parameters.values() if p.name != "order"]
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]

        @functools.wraps(fn)
        def wrapper(**kw):
            order = {}
            for name, (_, _, parser) in ORDER_OPTIONS.items():
                value = kw.pop(name)
                if value is not None and parser is not None:
                    value = PARSERS[parser](value)
                if value is not None:
                    order[name] = value
            return fn(order=order, **kw)

        wrapper.__signature__ = sig.replace(parameters=own + added)
        return wrapper

    return decorate


def parse_pose(text: str):
    """A preset name, or a JSON object of yaw-bin weights."""
    if not text.strip().startswith("{"):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"--pose is not valid JSON: {exc}")


def parse_interval(text: str | None):
    """``lo,hi`` -> (lo, hi); the spec checks the bounds."""
    if text is None:
        return None
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        fail(f"--guidance-interval must be two numbers 'lo,hi', not {text!r}")
    return (lo, hi)


def parse_formats(text: str) -> list[str]:
    return [f.strip() for f in text.split(",") if f.strip()]


PARSERS = {"pose": parse_pose, "interval": parse_interval, "formats": parse_formats}


def validation_message(exc) -> str:
    """A pydantic ValidationError as one line naming each field."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


def load_fr(model: str):
    from model_store import ModelNotFound, resolve
    from vigface.fr_model import FRModel, ModelFormatError

    try:
        return FRModel.load(resolve(model, part="fr"))
    except (ModelNotFound, ModelFormatError) as exc:
        fail(str(exc))


def load_generator(model: str, device: str | None = None):
    """A generator by folder or store name, or one pushed to the deployment's registry
    (``VIGFACE_STORAGE_URL``): the loader the workers use, uncached."""
    from jobstore.settings import Settings
    from model_store import ModelNotFound
    from model_store.loader import open_generator
    from vigface.fr_model import ModelFormatError

    s = Settings()  # read now: the environment decides, as it does for a worker
    try:
        return open_generator(model, s.storage_url, s.s3_endpoint_url, str(s.model_cache), device)
    except (ModelNotFound, ModelFormatError) as exc:
        fail(str(exc))


def evaluate_pairs_file(model, pairs: Path) -> dict:
    """10-fold verification metrics of an FR model on an insightface ``.bin`` file."""
    from vigface.data import DatasetError, load_bin
    from vigface.evaluation.verification import evaluate_pairs

    try:
        images, issame = load_bin(pairs)
    except DatasetError as exc:
        fail(str(exc))
    return evaluate_pairs(model, images, issame)


def record_evaluation(model, metrics: dict, pairs: Path, folder: Path) -> None:
    """Write verification metrics into an FR model's card."""
    model.card.update(
        {
            "dev_accuracy": metrics["accuracy"],
            "dev_accuracy_std": metrics["accuracy_std"],
            "dev_tar_at_far_1e-3": metrics["tar_at_far_1e-3"],
            "dev_pairs": str(pairs),
        }
    )
    model.save_card(folder)
