"""``vigface`` command line: training, evaluation, export and the model store."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import typer

BUNDLED_STORE = Path(__file__).resolve().parents[1] / "model_store" / "models"

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
jobs_app = typer.Typer(no_args_is_help=True, help="Order datasets from a running service.")
app.add_typer(jobs_app, name="jobs")
admin_app = typer.Typer(no_args_is_help=True, help="Teams and API keys (same settings as serve).")
app.add_typer(admin_app, name="admin")
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
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1 (default: cuda if any)"),
    eval_pairs: Path | None = typer.Option(None, help=".bin pairs evaluated into the card"),
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

        fr.card.update(
            {
                "dev_accuracy": metrics["accuracy"],
                "dev_accuracy_std": metrics["accuracy_std"],
                "dev_tar_at_far_1e-3": metrics["tar_at_far_1e-3"],
                "dev_pairs": str(pairs),
            }
        )
        fr.save_card(resolve(model, part="fr"))
    typer.echo(json.dumps(metrics))


@app.command("refit-virtual")
def refit_virtual_cmd(
    model: str = typer.Option(..., help="FR model folder or store name (its fr/ part is used)"),
    data: Path = typer.Option(..., help="the real training ImageFolder of that FR model"),
    out: Path = typer.Option(..., help="new FR model folder to write (must not exist)"),
    energy: float = typer.Option(0.9, help="share of W_R's energy the face subspace holds"),
    steps: int = typer.Option(1500, min=1),
    batch_size: int = typer.Option(512, min=2, help="real embeddings per step"),
    lr: float = typer.Option(0.1, min=0, help="SGD (momentum 0.9) learning rate for W_V"),
    seed: int = 0,
    max_real_cos: float | None = typer.Option(
        None, help="hinge: pull virtual prototypes closer than this to a real one away from it"
    ),
    real_margin_weight: float = typer.Option(50.0, min=0, help="weight of that hinge"),
    half: bool = typer.Option(False, help="store prototypes in fp16 (bundled models)"),
) -> None:
    """Re-fit W_V inside the face subspace with the backbone and W_R frozen
    (vigface/training/virtual_refit.py); prints the new prototype statistics."""
    import shutil

    import torch

    from model_store import resolve
    from vigface.data import DatasetError
    from vigface.training.virtual_refit import real_embeddings, refit_virtual

    if not 0 < energy <= 1:
        _fail(f"--energy must be in (0, 1], got {energy}")
    if max_real_cos is not None and not -1 < max_real_cos < 1:
        _fail(f"--max-real-cos must be a cosine in (-1, 1), got {max_real_cos}")
    if out.exists():
        _fail(f"--out {out} already exists; refit writes a new model folder")
    fr = _load_fr(model)
    try:
        emb, labels = real_embeddings(fr, data)
        refit = refit_virtual(
            fr, emb, labels, energy, steps, batch_size, lr, seed, max_real_cos, real_margin_weight
        )
    except (DatasetError, ValueError) as exc:
        _fail(str(exc))
    refit.card["virtual_refit"]["source"] = str(model)
    refit.save(out, prototype_dtype=torch.float16 if half else torch.float32)
    log_file = resolve(model, part="fr") / "train_log.jsonl"
    if log_file.is_file():
        shutil.copy2(log_file, out / "train_log.jsonl")
    r = refit.card["virtual_refit"]
    typer.echo(
        json.dumps(
            {
                "subspace_dims": r["subspace_dims"],
                "virtual_energy_in_span": [
                    r["virtual_energy_in_span_before"],
                    r["virtual_energy_in_span_after"],
                ],
                "orthogonality": refit.card["orthogonality"],
                "seconds": r["seconds"],
            }
        )
    )


@app.command("train-dit")
def train_dit_cmd(
    config: Path = typer.Option(..., help="YAML stage-2 config (see vigface/configs/)"),
    data: Path = typer.Option(..., help="aligned-face ImageFolder with <data>_landmarks.csv"),
    fr: str = typer.Option(..., help="stage-1 FR model folder or store name"),
    out: Path = typer.Option(..., help="output generator folder (a model-store entry)"),
    resume: bool = typer.Option(True, help="continue from <out>/checkpoints/last.pt if present"),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1 (default: cuda if any)"),
    set_: list[str] = typer.Option([], "--set", help="override a config key (repeatable)"),
    verbose: bool = False,
) -> None:
    """Stage 2: train the landmark-conditioned DiT (DDP when run under torchrun)."""
    from model_store import ModelNotFound, resolve
    from vigface.config import ConfigError, TrainDiTConfig, load_config, parse_overrides
    from vigface.data import DatasetError
    from vigface.fr_model import ModelFormatError
    from vigface.training.dit import train_dit

    _setup_logging(verbose)
    try:
        cfg = load_config(config, TrainDiTConfig, parse_overrides(set_))
        if cfg.init_from:  # a store name or a folder; the core only takes folders
            cfg = cfg.model_copy(update={"init_from": str(resolve(cfg.init_from))})
        train_dit(cfg, data, resolve(fr, part="fr"), out, resume=resume, device=device)
    except (ConfigError, DatasetError, ModelNotFound, ModelFormatError) as exc:
        _fail(str(exc))


def _load_generator(model: str, device: str | None = None):
    import torch

    from model_store import ModelNotFound, resolve
    from vigface.fr_model import ModelFormatError
    from vigface.generator.artifact import Generator

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return Generator.load(resolve(model), device=dev)
    except (ModelNotFound, ModelFormatError) as exc:
        _fail(str(exc))


def _grid_poses(gen, count: int, landmarks_csv: Path | None):
    """Pose columns from a landmarks CSV or, by default, the entry's own pose landmarks."""
    import numpy as np

    from vigface.data import read_landmarks_csv
    from vigface.generator.grid import pose_columns

    if landmarks_csv is not None:
        if not landmarks_csv.is_file():
            _fail(f"landmarks CSV not found: {landmarks_csv}")
        table = np.stack(list(read_landmarks_csv(landmarks_csv).values()))
    elif gen.pose_landmarks is not None:
        table = gen.pose_landmarks
    else:
        _fail("the model has no pose landmarks; pass --landmarks <csv>")
    return pose_columns(table, count)


@app.command("sample")
def sample_cmd(
    model: str = typer.Option("demo", help="generator folder or store name"),
    group: str = typer.Option("virtual", help="virtual or real prototypes"),
    identities: int = typer.Option(8, min=1),
    poses: int = typer.Option(6, min=1),
    guidance: float = typer.Option(4.0, min=0.0),
    steps: int = typer.Option(25, min=1, max=1000),
    scheduler: str = typer.Option("dpmsolver", help="dpmsolver or ddim"),
    seed: int = 0,
    landmarks: Path | None = typer.Option(None, help="CSV to take pose columns from"),
    out: Path = typer.Option(..., help="output PNG grid (rows = identities, columns = poses)"),
) -> None:
    """Draw a sample grid and print identity cosines as one JSON line."""
    from vigface.evaluation.identity import identity_fidelity
    from vigface.generator.grid import save_grid

    if group not in ("virtual", "real"):
        _fail("--group must be 'virtual' or 'real'")
    gen = _load_generator(model)
    cols = _grid_poses(gen, poses, landmarks)
    try:
        res = identity_fidelity(
            gen, group, identities, cols, guidance, steps, seed, scheduler=scheduler
        )
    except ValueError as exc:
        _fail(str(exc))
    save_grid(res.pop("images_array"), identities, poses, out)
    res.pop("cos_own_all")
    typer.echo(json.dumps(res))


@app.command("calibrate")
def calibrate_cmd(
    model: str = typer.Option(..., help="generator folder or store name"),
    data: Path = typer.Option(..., help="the real training ImageFolder of its FR model"),
    identities: int = typer.Option(50, min=2, help="virtual prototypes drawn for tau_consistency"),
) -> None:
    """Derive the filter defaults (tau_leak, tau_consistency) and store them in the card."""
    from model_store import resolve
    from vigface.data import DatasetError
    from vigface.dataset.calibrate import calibrate
    from vigface.dataset.writers import write_json

    gen = _load_generator(model)
    try:
        filters = calibrate(gen, data, calib_identities=identities)
    except DatasetError as exc:
        _fail(str(exc))
    card_path = resolve(model) / "model_card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    card["filters"] = filters
    write_json(card_path, card)
    typer.echo(json.dumps({k: filters[k] for k in ("tau_leak", "tau_consistency")}))


@app.command("generate")
def generate_cmd(
    model: str = typer.Option("demo", help="generator folder or store name"),
    identities: int = typer.Option(1, help="number of identities (classes); real_augment: all"),
    images_per_identity: int = typer.Option(..., help="images per identity"),
    pose: str = typer.Option("match_training", help="preset or JSON {bin: weight}"),
    guidance: float = typer.Option(4.0),
    steps: int = typer.Option(25),
    seed: int = typer.Option(0),
    format_: str = typer.Option(
        "imagefolder", "--format", help="comma list: imagefolder,recordio,webdataset"
    ),
    mode: str = typer.Option("virtual", help="virtual, or real_augment (fill real classes)"),
    tau_consistency: float | None = typer.Option(None, help="default: the model card's"),
    tau_leak: float | None = typer.Option(None, help="default: the model card's"),
    max_attempts: int = typer.Option(3),
    batch_size: int = typer.Option(32),
    compile_: bool = typer.Option(
        False, "--compile", help="torch.compile the DiT (faster; bytes reproduce only with it)"
    ),
    precision: str = typer.Option(
        "auto", help="auto (bf16 on CUDA and CPUs with native bf16, else fp32), fp32 or bf16"
    ),
    gallery: str | None = typer.Option(None, help=".npy of real embeddings (any size)"),
    start: int = typer.Option(0, help="first prototype row to use"),
    real_data: Path | None = typer.Option(
        None, help="real_augment: the real ImageFolder whose small classes are filled up"
    ),
    out: Path = typer.Option(..., help="output folder (rerun to resume)"),
) -> None:
    """Generate a dataset: sample, filter, write the formats, report.json and report.html."""
    from pydantic import ValidationError

    from vigface.data import DatasetError
    from vigface.dataset.pipeline import DatasetBuilder, NotEnoughPrototypes, real_augment_plan
    from vigface.dataset.pose import PoseSpecError
    from vigface.dataset.spec import DatasetSpec
    from vigface.precision import PRECISIONS

    if precision not in PRECISIONS:
        _fail(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    pose_spec = pose
    if pose.strip().startswith("{"):
        try:
            pose_spec = json.loads(pose)
        except json.JSONDecodeError as exc:
            _fail(f"--pose is not valid JSON: {exc}")
    try:
        spec = DatasetSpec(
            identities=identities,
            images_per_identity=images_per_identity,
            pose=pose_spec,
            guidance=guidance,
            steps=steps,
            seed=seed,
            formats=[f.strip() for f in format_.split(",") if f.strip()],
            mode=mode,
            tau_consistency=tau_consistency,
            tau_leak=tau_leak,
            max_attempts=max_attempts,
            batch_size=batch_size,
            gallery=gallery,
        )
    except ValidationError as exc:
        _fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    gen = _load_generator(model)
    candidates, slot_images = list(range(start, gen.fr.virtual_prototypes.shape[0])), None
    if mode == "real_augment":
        if real_data is None:
            _fail("--real-data is required with --mode real_augment")
        try:
            candidates, slot_images = real_augment_plan(gen, real_data, images_per_identity)
        except DatasetError as exc:
            _fail(str(exc))
        if not candidates:
            _fail(f"no class in {real_data} has fewer than {images_per_identity} images")
        spec = spec.model_copy(update={"identities": len(candidates)})
    try:
        builder = DatasetBuilder(
            gen,
            spec,
            out,
            candidates=candidates,
            slot_images=slot_images,
            compile=compile_,
            precision=precision,
        )
        report = builder.run()
    except (NotEnoughPrototypes, PoseSpecError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(
        json.dumps(
            {
                "out": str(out),
                "counts": report["counts"],
                "timing": report["timing"],
                "attributes": report["attributes"],
            }
        )
    )


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


@models_app.command("add")
def models_add(
    run_dir: Path = typer.Argument(..., help="a finished train-fr or train-dit output folder"),
    name: str = typer.Option(..., help="entry name"),
    store: Path = typer.Option(BUNDLED_STORE, help="store folder"),
    half: bool = typer.Option(True, help="store DiT weights and prototypes in float16"),
) -> None:
    """Copy a trained model into a store folder, without checkpoints."""
    import shutil

    import torch

    from vigface.fr_model import FRModel, ModelFormatError
    from vigface.generator.artifact import Generator

    dest = store / name
    if dest.exists():
        _fail(f"{dest} exists; remove it first or pick another --name")
    dtype = torch.float16 if half else torch.float32
    tmp = store / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if (run_dir / "dit").is_dir():
            Generator.load(run_dir).save(tmp, dtype=dtype)
        else:
            FRModel.load(run_dir).save(tmp, prototype_dtype=dtype)
    except ModelFormatError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _fail(str(exc))
    for extra in ("train_log.jsonl", "loss_curve.png", "grids"):
        src = run_dir / extra
        if src.is_file():
            shutil.copy2(src, tmp / extra)
        elif src.is_dir():
            shutil.copytree(src, tmp / extra)
    tmp.rename(dest)
    typer.echo(str(dest))


@models_app.command("push")
def models_push(
    folder: Path = typer.Argument(..., help="a model folder (store entry)"),
    name: str | None = typer.Option(None, help="entry name (default: the folder name)"),
) -> None:
    """Upload a model to the configured object store (VIGFACE_STORAGE_URL) by content hash."""
    from model_store.remote import push
    from model_store.storage import open_store
    from workers.settings import get_settings

    settings = get_settings()
    try:
        digest = push(
            open_store(settings.storage_url, settings.s3_endpoint_url), folder, name or folder.name
        )
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f"{name or folder.name}@{digest}")


@models_app.command("show")
def models_show(name: str) -> None:
    """Print a model card as JSON."""
    from model_store import ModelNotFound, read_card

    try:
        typer.echo(json.dumps(read_card(name), indent=2))
    except ModelNotFound as exc:
        _fail(str(exc))


def _client(url: str, key: str | None):
    import os

    from app.client import VIGFaceClient

    key = key or os.environ.get("VIGFACE_API_KEY")
    if not key:
        _fail("give --api-key or set VIGFACE_API_KEY")
    return VIGFaceClient(url, key)


URL_OPT = typer.Option("http://127.0.0.1:8000", "--url", envvar="VIGFACE_URL", help="service URL")
KEY_OPT = typer.Option(None, "--api-key", help="team API key (or VIGFACE_API_KEY)")


@jobs_app.command("submit")
def jobs_submit(
    identities: int = typer.Option(...),
    images_per_identity: int = typer.Option(...),
    pose: str = typer.Option("match_training", help="preset or JSON {bin: weight}"),
    guidance: float = 4.0,
    steps: int = 25,
    seed: int = 0,
    format_: str = typer.Option("imagefolder", "--format", help="comma list"),
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

    order = {
        "identities": identities,
        "images_per_identity": images_per_identity,
        "pose": json.loads(pose) if pose.strip().startswith("{") else pose,
        "guidance": guidance,
        "steps": steps,
        "seed": seed,
        "priority": priority,
        "formats": [f.strip() for f in format_.split(",") if f.strip()],
    }
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
        _fail(str(exc))
    typer.echo(json.dumps(job, indent=2, default=str))
    typer.echo(job["id"])


@jobs_app.command("status")
def jobs_status(job_id: str, url: str = URL_OPT, api_key: str | None = KEY_OPT) -> None:
    """Print a job as JSON."""
    from app.client import APIError

    try:
        typer.echo(json.dumps(_client(url, api_key).job(job_id), indent=2, default=str))
    except APIError as exc:
        _fail(str(exc))


@jobs_app.command("download")
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
        _fail(str(exc))
    typer.echo(f"{len(files)} files in {out}")


def _sessions():
    from workers.db.session import init_db, session_factory
    from workers.settings import get_settings

    settings = get_settings()
    init_db(settings.database_url)
    return session_factory(settings.database_url), settings


@admin_app.command("create-team")
def create_team_cmd(
    name: str,
    quota: int | None = typer.Option(None, min=0, help="images per month (default: settings)"),
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
            _fail(str(exc))
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
            _fail(str(exc))
    typer.echo(f"API key for {team} (store it now; only its hash is kept):")
    typer.echo(key)


@app.command("serve")
def serve_cmd(
    host: str | None = typer.Option(None, help="default: VIGFACE_HOST (127.0.0.1)"),
    port: int | None = typer.Option(None, help="default: VIGFACE_PORT (8000)"),
    embedded_worker: bool | None = typer.Option(
        None, help="run shards in this process (default: when no broker is configured)"
    ),
) -> None:
    """Start the API (and, without a broker, an in-process worker)."""
    import uvicorn

    from app.main import create_app
    from workers.settings import get_settings

    settings = get_settings()
    api = create_app(settings)
    if embedded_worker if embedded_worker is not None else not settings.broker_url:
        from workers.embedded import EmbeddedWorker

        worker = EmbeddedWorker(api.state.sessions, settings)
        worker.start()
    if settings.broker_url:
        from workers.reaper import Reaper

        Reaper(api.state.sessions, api.state.enqueue_shard, settings.lease_seconds / 4).start()
    uvicorn.run(api, host=host or settings.host, port=port or settings.port, log_level="info")


@app.command("quickstart")
def quickstart_cmd(
    team: str = typer.Option("demo", help="team created on first start"),
    host: str | None = None,
    port: int | None = None,
) -> None:
    """The embedded service for a first try: creates a team and prints its API key the first
    time, then serves the API with an in-process worker (SQLite, local store, demo model)."""
    from sqlalchemy import select

    from app.services.auth import create_key, create_team
    from workers.db.models import Team

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
    serve_cmd(host=host, port=port, embedded_worker=True)


@app.command("worker")
def worker_cmd(
    queues: str = typer.Option("gpu", help="Celery queues to consume"),
    concurrency: int = typer.Option(1, help="processes: one per GPU"),
) -> None:
    """Start a Celery GPU worker (needs VIGFACE_BROKER_URL)."""
    from workers.settings import get_settings

    if not get_settings().broker_url:
        _fail("VIGFACE_BROKER_URL is not set: the worker needs a broker (or use `vigface serve`)")
    _sessions()
    from workers.celery_app import celery_app

    celery_app.worker_main(
        ["worker", "-Q", queues, "-c", str(concurrency), "--loglevel", "INFO", "-n", "vigface@%h"]
    )


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="vigface")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
