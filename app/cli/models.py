"""``vigface models``: list, inspect, add and push model-store entries."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from app.cli.common import fail
from model_store import BUNDLED

app = typer.Typer(
    no_args_is_help=False,
    help="List and inspect model-store entries.",
    rich_markup_mode="markdown",
)


@app.callback(invoke_without_command=True)
def models_list(ctx: typer.Context) -> None:
    """List model-store entries (name, kind, path)."""
    if ctx.invoked_subcommand is not None:
        return
    from model_store import list_models

    for entry in list_models():
        typer.echo(f"{entry.name}\t{entry.kind}\t{entry.path}")


@app.command("add")
def models_add(
    run_dir: Path = typer.Argument(
        ...,
        help="a finished train-fr or train-dit output folder, or with --continues a "
        "train-autoencoder run that trained a latent entry's decoder alone",
    ),
    name: str = typer.Option(..., help="entry name"),
    store: Path = typer.Option(BUNDLED, help="store folder"),
    half: bool = typer.Option(True, help="store DiT weights and prototypes in float16"),
    continues: str | None = typer.Option(
        None,
        help="the entry RUN warm-started from (train-dit --set init_from=ENTRY): make one entry "
        "of both, steps and logs over every leg; thresholds must be calibrated again",
    ),
    leg_command: str = typer.Option(
        "", help="with --continues: the train-dit command of this leg, for the card"
    ),
    replace: bool = typer.Option(
        False, help="with --continues: replace the continued entry itself (--name is its name)"
    ),
    terms: Path | None = typer.Option(
        None,
        help="YAML with training_data (each source and its terms) and terms (weights, "
        "datasets) for the card, e.g. vigface/configs/terms_lfw112.yaml; required unless "
        "the run's card (or the continued entry's) has them",
    ),
) -> None:
    """Copy a trained model into a store folder, without checkpoints."""
    import shutil

    import torch

    from model_store import ModelNotFound, resolve
    from model_store.legs import NotAContinuation, merge_decoder_leg, merge_leg

    dest = store / name
    prev, decoder_leg = None, False
    if continues is not None:
        try:
            prev = resolve(continues)
        except ModelNotFound as exc:
            fail(f"--continues: {exc}")
        decoder_leg = (run_dir / "autoencoder").is_dir() and not (run_dir / "dit").is_dir()
        if not ((run_dir / "dit").is_dir() or decoder_leg) or not (prev / "dit").is_dir():
            fail(
                "--continues: the continued entry must be a generator (dit/), and RUN a "
                "train-dit run or a train-autoencoder run (autoencoder/)"
            )
    if replace and (prev is None or dest.resolve() != prev.resolve()):
        fail("--replace replaces only the entry --continues names (give --name as its name)")
    if dest.exists() and not replace:
        fail(f"{dest} exists; remove it first or pick another --name")
    stated = read_terms(terms) if terms is not None else None
    dtype = torch.float16 if half else torch.float32
    tmp = store / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if prev is not None and decoder_leg:  # the entry as it is, with the new decoder
        shutil.copytree(prev, tmp)
        merge = merge_decoder_leg
    else:
        write_entry(run_dir, tmp, dtype, stated, prev)
        merge = merge_leg
    if prev is not None:
        try:
            left = merge(prev, run_dir, tmp, continues, leg_command or "(not given)")
        except NotAContinuation as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            fail(f"--continues: {exc}")
        if left:
            typer.echo(f"left behind (measured on the previous weights): {', '.join(left)}")
        typer.echo(f"calibrate before orders: vigface calibrate --model {dest} --data DATA")
    old = store / f".{name}.old"  # swap by renames: the entry is never missing
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    typer.echo(str(dest))


def write_entry(run_dir: Path, tmp: Path, dtype, stated: dict | None, prev: Path | None) -> None:
    """The run's model at ``dtype`` in ``tmp``, with its stated terms and its log, loss curve
    and grids; removes ``tmp`` and exits with the reason when the run cannot be an entry."""
    import shutil

    from vigface.fr_model import FRModel, ModelFormatError
    from vigface.generator.artifact import Generator

    try:
        if (run_dir / "dit").is_dir():
            Generator.load(run_dir).save(tmp, dtype=dtype)
        else:
            FRModel.load(run_dir).save(tmp, prototype_dtype=dtype)
        state_terms(tmp, stated, prev)
    except (ModelFormatError, ValueError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        fail(f"{run_dir}: {exc}")
    for extra in ("train_log.jsonl", "loss_curve.png", "grids"):
        src = run_dir / extra
        if src.is_file():
            shutil.copy2(src, tmp / extra)
        elif src.is_dir() and prev is None:  # a continuation's grids are drawn again
            shutil.copytree(src, tmp / extra)


def read_terms(path: Path) -> dict:
    """``training_data`` and ``terms`` from a YAML file, checked."""
    import yaml

    from vigface.model_card import missing_terms

    if not path.is_file():
        fail(f"--terms: {path} is not a file")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or (why := missing_terms(data)):
        fail(f"--terms {path}: {why if isinstance(data, dict) else 'not a mapping'}")
    return {"training_data": data["training_data"], "terms": data["terms"]}


def state_terms(entry: Path, stated: dict | None, prev: Path | None) -> None:
    """Write the terms into the new entry's card (from ``--terms``, else the continued
    entry's); raise ValueError naming what is missing when the card still has none."""
    from vigface.model_card import missing_terms

    card_path = entry / "model_card.json"
    if (entry / "dit").is_dir():
        from vigface.model_card import load_card, update_card

        if stated is None and prev is not None:
            prev_card = load_card(prev)
            stated = {k: prev_card[k] for k in ("training_data", "terms") if k in prev_card}
        if stated:
            update_card(entry, **stated)
        card = load_card(entry)
    else:  # a stage-1 FR folder: its own card, plain JSON
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        if stated:
            card.update(stated)
            card_path.write_text(json.dumps(card, indent=2) + "\n")
    if why := missing_terms(card):
        raise ValueError(f"{why}; pass --terms FILE (see vigface/configs/terms_lfw112.yaml)")


@app.command("push")
def models_push(
    folder: Path = typer.Argument(..., help="a model folder (store entry)"),
    name: str | None = typer.Option(None, help="entry name (default: the folder name)"),
) -> None:
    """Upload a model to the configured object store (VIGFACE_STORAGE_URL) by content hash."""
    from jobstore.settings import get_settings
    from model_store.remote import push
    from model_store.storage import open_store

    settings = get_settings()
    try:
        digest = push(
            open_store(settings.storage_url, settings.s3_endpoint_url), folder, name or folder.name
        )
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"{name or folder.name}@{digest}")


@app.command("show")
def models_show(name: str) -> None:
    """Print a model card as JSON."""
    from model_store import ModelNotFound, read_card

    try:
        typer.echo(json.dumps(read_card(name), indent=2))
    except ModelNotFound as exc:
        fail(str(exc))


@app.command("attach-upsampler")
def models_attach_upsampler(
    name: str = typer.Argument(..., help="generator entry (store name or folder)"),
    upsampler: Path = typer.Argument(..., help="a finished train-upsampler output folder"),
    steps: int = typer.Option(8, min=1, max=100, help="solver steps the sampler will use"),
    half: bool = typer.Option(True, help="store the weights in float16"),
    default_on: bool = typer.Option(True, help="orders upsample unless they say otherwise"),
) -> None:
    """Put a trained upsampler into a generator entry (replacing one it has) and record it in
    the card; the entry's other files are not touched."""
    import shutil

    import torch

    from model_store import ModelNotFound, resolve
    from vigface.fr_model import CARD_FILE
    from vigface.generator.artifact import UPSAMPLER_DIR
    from vigface.generator.upsampler import UpsamplerStage
    from vigface.model_card import write_card, write_measurement

    try:
        entry = resolve(name)
    except ModelNotFound as exc:
        fail(str(exc))
    card_path = entry / CARD_FILE
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    if card.get("kind", "generator") != "generator" or not (entry / "dit").is_dir():
        fail(f"{entry} is not a generator entry")
    if not (upsampler / "model" / "config.json").is_file():
        fail(f"{upsampler} is not an upsampler folder (no model/config.json)")
    stage = UpsamplerStage.load(upsampler)
    dit_size = json.loads((entry / "dit" / "config.json").read_text())["sample_size"]
    if stage.low_size != dit_size:
        fail(f"the upsampler takes {stage.low_size}-px faces, the generator draws {dit_size}")
    stage.card["sampling_steps"] = steps
    tmp = entry / f".{UPSAMPLER_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    stage.save(tmp, dtype=torch.float16 if half else torch.float32)
    for extra in ("train_log.jsonl", "loss_curve.png"):
        if (upsampler / extra).is_file():
            shutil.copy2(upsampler / extra, tmp / extra)
    old = entry / f".{UPSAMPLER_DIR}.old"  # swap by renames: never an entry without one
    shutil.rmtree(old, ignore_errors=True)
    if (entry / UPSAMPLER_DIR).exists():
        (entry / UPSAMPLER_DIR).rename(old)
    tmp.rename(entry / UPSAMPLER_DIR)
    shutil.rmtree(old, ignore_errors=True)
    summary = {k: v for k, v in stage.card.items() if k not in ("config", "measured")}
    if "measured" in stage.card:
        write_measurement(entry, "upsampler.measured", stage.card["measured"])
    card["upsampler"] = summary
    card["sampler_defaults"] = {**(card.get("sampler_defaults") or {}), "upsample": default_on}
    write_card(entry, card)
    typer.echo(str(entry / UPSAMPLER_DIR))


@app.command("migrate-card")
def models_migrate_card(
    entry: Path = typer.Argument(..., help="a generator folder (or a store name)"),
) -> None:
    """Move every key of a card written before measurements moved out into
    `ENTRY/measurements/KEY.json` and keep the typed card the code reads."""
    from model_store import ModelNotFound, resolve
    from vigface.model_card import ModelCardError, migrate_card

    try:
        folder = entry if entry.is_dir() else resolve(str(entry))
    except ModelNotFound as exc:
        fail(str(exc))
    if not (folder / "model_card.json").is_file():
        fail(f"ENTRY: {folder} has no model_card.json")
    try:
        moved = migrate_card(folder)
    except ModelCardError as exc:
        fail(str(exc))
    typer.echo(f"{folder}: {len(moved)} measurements moved to measurements/: {', '.join(moved)}")
