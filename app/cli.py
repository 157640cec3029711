"""``vigface`` command line: training, evaluation, export and the model store."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
models_app = typer.Typer(no_args_is_help=False, help="List and inspect model-store entries.")
app.add_typer(models_app, name="models")


def _fail(msg: str, code: int = 2) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command("train-fr")
def train_fr_cmd(
    config: Path = typer.Option(..., help="YAML training config (see vigface/configs/)"),
    data: Path = typer.Option(..., help="aligned-face ImageFolder: <data>/<identity>/*.jpg"),
    out: Path = typer.Option(..., help="output model folder (a model-store FR artifact)"),
    resume: bool = typer.Option(True, help="continue from <out>/checkpoints/last.pt if present"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 (default: cuda if any)"),
    eval_pairs: Optional[Path] = typer.Option(None, help=".bin pairs evaluated into the card"),
    set_: list[str] = typer.Option(
        [], "--set", help="override a config key, e.g. --set head.num_virtual=0 (repeatable)"
    ),
    verbose: bool = False,
) -> None:
    """Stage 1: train ArcFace with virtual prototypes (DDP when run under torchrun)."""
    from vigface.config import ConfigError, load_config, parse_overrides
    from vigface.data import DatasetError
    from vigface.training.fr import train_fr

    _setup_logging(verbose)
    try:
        cfg = load_config(config, overrides=parse_overrides(set_))
        model = train_fr(cfg, data, out, resume=resume, device=device)
    except (ConfigError, DatasetError) as exc:
        _fail(str(exc))
    pairs = eval_pairs or (Path(cfg.eval_pairs) if cfg.eval_pairs else None)
    if model is not None and pairs is not None:
        metrics = _evaluate(model, pairs)
        model.card["dev_accuracy"] = metrics["accuracy"]
        model.card["dev_accuracy_std"] = metrics["accuracy_std"]
        model.card["dev_tar_at_far_1e-3"] = metrics["tar_at_far_1e-3"]
        model.card["dev_pairs"] = str(pairs)
        model.save_card(out)
        typer.echo(json.dumps(metrics))


def _evaluate(model, pairs: Path) -> dict:
    from vigface.data import DatasetError, load_bin
    from vigface.evaluation.verification import evaluate_pairs

    try:
        images, issame = load_bin(pairs)
    except DatasetError as exc:
        _fail(str(exc))
    return evaluate_pairs(model, images, issame)


def _load_fr(model: str):
    from model_store import ModelNotFound, resolve
    from vigface.fr_model import FRModel, ModelFormatError

    try:
        return FRModel.load(resolve(model, part="fr"))
    except (ModelNotFound, ModelFormatError) as exc:
        _fail(str(exc))


@app.command("eval-fr")
def eval_fr_cmd(
    model: str = typer.Option(..., help="model folder or model-store name"),
    pairs: Path = typer.Option(..., help="insightface .bin verification file"),
    update_card: bool = typer.Option(False, help="write dev_accuracy into the model card"),
) -> None:
    """Verification accuracy (10-fold, insightface protocol); prints one JSON line."""
    fr = _load_fr(model)
    metrics = _evaluate(fr, pairs)
    if update_card:
        from model_store import resolve

        fr.card.update({
            "dev_accuracy": metrics["accuracy"],
            "dev_accuracy_std": metrics["accuracy_std"],
            "dev_tar_at_far_1e-3": metrics["tar_at_far_1e-3"],
            "dev_pairs": str(pairs),
        })
        fr.save_card(resolve(model, part="fr"))
    typer.echo(json.dumps(metrics))


@app.command("export-onnx")
def export_onnx_cmd(
    model: str = typer.Option(..., help="model folder or model-store name"),
    out: Path = typer.Option(..., help="output .onnx file"),
) -> None:
    """Export the backbone (112x112 input, dynamic batch) for insightface.model_zoo."""
    from vigface.export.onnx import export_backbone

    fr = _load_fr(model)
    export_backbone(fr, out)
    typer.echo(str(out))


@models_app.callback(invoke_without_command=True)
def models_list(ctx: typer.Context) -> None:
    """List model-store entries (name, kind, path)."""
    if ctx.invoked_subcommand is not None:
        return
    from model_store import list_models

    for entry in list_models():
        typer.echo(f"{entry.name}\t{entry.kind}\t{entry.path}")


@models_app.command("show")
def models_show(name: str) -> None:
    """Print a model card as JSON."""
    from model_store import ModelNotFound, read_card

    try:
        typer.echo(json.dumps(read_card(name), indent=2))
    except ModelNotFound as exc:
        _fail(str(exc))


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="vigface")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
