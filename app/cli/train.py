"""Training and evaluation commands: stage 1 (``train-fr``, ``refit-virtual``,
``match-virtual-spectrum``), stage 2 (``train-dit``), the cascade's upsampler
(``train-upsampler``), verification (``eval-fr``) and ONNX export."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from app.cli.common import (
    evaluate_pairs_file,
    fail,
    load_fr,
    record_evaluation,
    setup_logging,
)


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

    setup_logging(verbose)
    try:
        cfg = load_config(config, overrides=parse_overrides(set_))
        model = train_fr(cfg, data, out, resume=resume, device=device)
    except (ConfigError, DatasetError) as exc:
        fail(str(exc))
    pairs = eval_pairs or (Path(cfg.eval_pairs) if cfg.eval_pairs else None)
    if model is not None and pairs is not None:
        metrics = evaluate_pairs_file(model, pairs)
        record_evaluation(model, metrics, pairs, out)
        typer.echo(json.dumps(metrics))


def eval_fr_cmd(
    model: str = typer.Option(..., help="model folder or model-store name"),
    pairs: Path = typer.Option(..., help="insightface .bin verification file"),
    update_card: bool = typer.Option(False, help="write dev_accuracy into the model card"),
) -> None:
    """Verification accuracy (10-fold, insightface protocol); prints one JSON line."""
    fr = load_fr(model)
    metrics = evaluate_pairs_file(fr, pairs)
    if update_card:
        from model_store import resolve

        record_evaluation(fr, metrics, pairs, resolve(model, part="fr"))
    typer.echo(json.dumps(metrics))


def _check_w_v_variant(out: Path, energy: float, max_real_cos: float | None, command: str) -> None:
    """The options both W_V re-placements share (refit, spectrum match)."""
    if not 0 < energy <= 1:
        fail(f"--energy must be in (0, 1], got {energy}")
    if max_real_cos is not None and not -1 < max_real_cos < 1:
        fail(f"--max-real-cos must be a cosine in (-1, 1), got {max_real_cos}")
    if out.exists():
        fail(f"--out {out} already exists; {command} writes a new model folder")


def _save_w_v_variant(fr, card_key: str, model: str, out: Path, half: bool, **summary) -> None:
    """Write an FR model whose W_V was re-placed (its card's ``card_key`` records how) as a new
    folder with its source's training log (the backbone and W_R are the source's), and print
    one JSON line: the subspace size, ``summary`` and the new prototype statistics."""
    import shutil

    import torch

    from model_store import resolve

    fr.card[card_key]["source"] = str(model)
    fr.save(out, prototype_dtype=torch.float16 if half else torch.float32)
    log_file = resolve(model, part="fr") / "train_log.jsonl"
    if log_file.is_file():
        shutil.copy2(log_file, out / "train_log.jsonl")
    dims = fr.card[card_key]["subspace_dims"]
    line = {"subspace_dims": dims, **summary, "orthogonality": fr.card["orthogonality"]}
    typer.echo(json.dumps(line))


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
    from vigface.data import DatasetError
    from vigface.training.virtual_refit import real_embeddings, refit_virtual

    _check_w_v_variant(out, energy, max_real_cos, "refit")
    fr = load_fr(model)
    try:
        emb, labels = real_embeddings(fr, data)
        refit = refit_virtual(
            fr, emb, labels, energy, steps, batch_size, lr, seed, max_real_cos, real_margin_weight
        )
    except (DatasetError, ValueError) as exc:
        fail(str(exc))
    r = refit.card["virtual_refit"]
    in_span = [r["virtual_energy_in_span_before"], r["virtual_energy_in_span_after"]]
    _save_w_v_variant(
        refit, "virtual_refit", model, out, half,
        virtual_energy_in_span=in_span, seconds=r["seconds"],
    )  # fmt: skip


def match_virtual_spectrum_cmd(
    model: str = typer.Option(..., help="FR model folder or store name (its fr/ part is used)"),
    out: Path = typer.Option(..., help="new FR model folder to write (must not exist)"),
    energy: float = typer.Option(0.9, help="share of W_R's energy the face subspace holds"),
    max_real_cos: float = typer.Option(
        0.4, help="no virtual prototype nearer than this cosine to a real one afterwards"
    ),
    half: bool = typer.Option(False, help="store prototypes in fp16 (bundled models)"),
) -> None:
    """Give W_V the spread of W_R: whiten its face-subspace coordinates, colour them with
    W_R's mean and covariance (vigface/training/virtual_spectrum.py); no data, seconds to a
    minute. A generator entry pairs it with its DiT by copying the files into its fr/."""
    from vigface.training.virtual_spectrum import match_virtual_spectrum

    _check_w_v_variant(out, energy, max_real_cos, "match-virtual-spectrum")
    fr = load_fr(model)
    try:
        matched = match_virtual_spectrum(fr, energy, max_real_cos)
    except ValueError as exc:
        fail(str(exc))
    r = matched.card["virtual_spectrum"]
    ratios = [r["variance_ratio_top10_before"], r["variance_ratio_top10_after"]]
    _save_w_v_variant(matched, "virtual_spectrum", model, out, half, variance_ratio_top10=ratios)


def extend_virtual_cmd(
    model: str = typer.Option(..., help="generator folder or store name"),
    add: int | None = typer.Option(None, min=1, help="virtual identities to append to W_V"),
    to: int | None = typer.Option(
        None, min=1, help="or: the number of virtual identities W_V should hold afterwards"
    ),
    name: str | None = typer.Option(
        None,
        help="store the result as this entry of the data home's store ($VIGFACE_HOME/store), "
        "which the service lists at once",
    ),
    out: Path | None = typer.Option(None, help="or: a new generator folder to write"),
    max_real_cos: float | None = typer.Option(
        None, help="largest cosine of a new row to a real prototype (default: real people's p99)"
    ),
    max_virtual_cos: float | None = typer.Option(
        None, help="largest cosine of a new row to another virtual one (default: the same)"
    ),
    energy: float = typer.Option(0.9, help="share of W_R's energy the face subspace holds"),
    seed: int = typer.Option(0, help="seed of the draws"),
) -> None:
    """Append virtual identities to a generator's W_V, existing rows untouched
    (vigface/training/virtual_extend.py): a copy of the entry with the longer W_V, its card
    stating the capacity, the bounds and the rejection counts. Identities sold from the model
    stay sold in the copy (the ledger keys each row by its own digest)."""

    from model_store import ModelNotFound, resolve, user_store
    from vigface.training.virtual_extend import CapacityExceeded, extend_virtual

    if (name is None) == (out is None):
        fail("give --name (an entry of the data home's store) or --out (a folder), not both")
    if (add is None) == (to is None):
        fail("give --add (rows to append) or --to (rows W_V should hold), not both")
    out = out if out is not None else user_store() / name
    if out.exists():
        fail(f"{'--out' if name is None else '--name'}: {out} exists; give a new one")
    try:
        entry = Path(model) if Path(model).is_dir() else resolve(model)
    except ModelNotFound as exc:
        fail(str(exc))
    if not (entry / "dit").is_dir():
        fail(f"--model: {entry} is not a generator entry (no dit/)")
    fr = load_fr(str(entry / "fr"))
    if to is not None:
        add = to - int(fr.virtual_prototypes.shape[0])
        if add < 1:
            fail(f"--to: {model} already holds {fr.virtual_prototypes.shape[0]} virtual identities")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        extended, ext = extend_virtual(fr, add, max_real_cos, max_virtual_cos, energy, seed)
    except ValueError as exc:  # CapacityExceeded names the counts and the bounds
        fail(str(exc) if isinstance(exc, CapacityExceeded) else f"--max-*-cos: {exc}")
    total = write_extended(entry, out, fr, extended, ext)
    typer.echo(
        f"{out}: {total} virtual identities ({ext.added} added in {ext.draws} draws; "
        f"{ext.rejected_near_real} too near a real prototype, {ext.rejected_near_virtual} too "
        f"near a virtual one; bounds {ext.max_real_cos:.4f} / {ext.max_virtual_cos:.4f})"
    )


def write_extended(entry: Path, out: Path, fr, extended, ext) -> int:
    """A copy of ``entry`` with the extended W_V at ``out`` (written aside, then renamed);
    its card states the capacity, the bounds and every extension. Returns the rows."""
    import shutil

    import torch

    from vigface.model_card import load_card, write_card

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(entry, tmp, ignore=shutil.ignore_patterns("checkpoints", "measurements"))
    half = fr.virtual_prototypes.dtype == torch.float16 or _stored_half(entry / "fr")
    extended.save(tmp / "fr", prototype_dtype=torch.float16 if half else torch.float32)
    card = load_card(entry)
    total = int(extended.virtual_prototypes.shape[0])
    before = card.get("capacity", {}).get("extensions", [])
    card.update(
        num_virtual=total,
        capacity={
            "virtual_identities": total,
            "max_real_cos": ext.max_real_cos,
            "max_virtual_cos": ext.max_virtual_cos,
            "subspace_dims": ext.subspace_dims,
            "extensions": [*before, {**ext.__dict__, "from": str(entry)}],
        },
    )
    card.pop("prototype_set", None)
    write_card(tmp, card)
    tmp.rename(out)
    return total


def _stored_half(fr_dir: Path) -> bool:
    from safetensors import safe_open

    with safe_open(fr_dir / "prototypes.safetensors", framework="pt") as f:
        return f.get_slice("virtual").get_dtype() in ("F16", "BF16")


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

    setup_logging(verbose)
    try:
        cfg = load_config(config, TrainDiTConfig, parse_overrides(set_))
        if cfg.init_from:  # a store name or a folder; the core only takes folders
            cfg = cfg.model_copy(update={"init_from": str(resolve(cfg.init_from))})
        train_dit(cfg, data, resolve(fr, part="fr"), out, resume=resume, device=device)
    except (ConfigError, DatasetError, ModelNotFound, ModelFormatError) as exc:
        fail(str(exc))


def train_upsampler_cmd(
    config: Path = typer.Option(..., help="YAML upsampler config (see vigface/configs/)"),
    data: Path = typer.Option(..., help="aligned-face ImageFolder of the FR model's identities"),
    fr: str = typer.Option(..., help="stage-1 FR model folder or store name (its prototypes)"),
    out: Path = typer.Option(..., help="output upsampler folder"),
    resume: bool = typer.Option(True, help="continue from <out>/checkpoints/last.pt if present"),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1 (default: cuda if any)"),
    set_: list[str] = typer.Option([], "--set", help="override a config key (repeatable)"),
    verbose: bool = False,
) -> None:
    """Cascade stage: train the 32 -> 64 px super-resolution diffusion model
    (vigface/generator/upsampler.py); attach it with `vigface models attach-upsampler`."""
    from model_store import ModelNotFound, resolve
    from vigface.config import ConfigError, TrainUpsamplerConfig, load_config, parse_overrides
    from vigface.data import DatasetError
    from vigface.fr_model import ModelFormatError
    from vigface.training.upsampler import train_upsampler

    setup_logging(verbose)
    try:
        cfg = load_config(config, TrainUpsamplerConfig, parse_overrides(set_))
        train_upsampler(cfg, data, resolve(fr, part="fr"), out, resume=resume, device=device)
    except (ConfigError, DatasetError, ModelNotFound, ModelFormatError) as exc:
        fail(str(exc))


def train_autoencoder_cmd(
    config: Path = typer.Option(..., help="YAML autoencoder config (see vigface/configs/)"),
    data: Path = typer.Option(..., help="aligned-face ImageFolder (112-px crops)"),
    fr: str = typer.Option(..., help="stage-1 FR model folder or store name (perceptual term)"),
    out: Path = typer.Option(..., help="output run folder; the model lands in <out>/autoencoder"),
    init_from: str | None = typer.Option(
        None, help="autoencoder folder, or a store entry with one, whose weights start the run"
    ),
    resume: bool = typer.Option(True, help="continue from <out>/checkpoints/last.pt if present"),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1 (default: cuda if any)"),
    set_: list[str] = typer.Option([], "--set", help="override a config key (repeatable)"),
    verbose: bool = False,
) -> None:
    """Train the face autoencoder latent generators draw in (vigface/generator/autoencoder.py)."""
    from model_store import ModelNotFound, resolve
    from vigface.config import ConfigError, TrainAutoencoderConfig, load_config, parse_overrides
    from vigface.data import DatasetError
    from vigface.fr_model import ModelFormatError
    from vigface.training.autoencoder import train_autoencoder

    setup_logging(verbose)
    try:
        cfg = load_config(config, TrainAutoencoderConfig, parse_overrides(set_))
        start = None
        if init_from:
            start = Path(init_from) if Path(init_from).is_dir() else resolve(init_from)
            if (start / "autoencoder").is_dir():
                start = start / "autoencoder"
            if not (start / "config.json").is_file():
                fail(f"--init-from: {init_from} holds no autoencoder (no config.json)")
        train_autoencoder(
            cfg, data, resolve(fr, part="fr"), out, resume=resume, device=device, init_from=start
        )
    except (ConfigError, DatasetError, ModelNotFound, ModelFormatError) as exc:
        fail(str(exc))


def export_onnx_cmd(
    model: str = typer.Option(..., help="model folder or model-store name"),
    out: Path = typer.Option(..., help="output .onnx file"),
) -> None:
    """Export the backbone (112x112 input, dynamic batch) for insightface.model_zoo."""
    from vigface.export.onnx import export_backbone

    fr = load_fr(model)
    export_backbone(fr, out)
    typer.echo(str(out))


def register(app: typer.Typer) -> None:
    app.command("train-fr")(train_fr_cmd)
    app.command("eval-fr")(eval_fr_cmd)
    app.command("refit-virtual")(refit_virtual_cmd)
    app.command("match-virtual-spectrum")(match_virtual_spectrum_cmd)
    app.command("extend-virtual")(extend_virtual_cmd)
    app.command("train-dit")(train_dit_cmd)
    app.command("train-upsampler")(train_upsampler_cmd)
    app.command("train-autoencoder")(train_autoencoder_cmd)
    app.command("export-onnx")(export_onnx_cmd)
