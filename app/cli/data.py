"""Dataset commands: sample grids (``sample``), dataset generation (``generate``), the
outside judge (``outside-judge``) and the utility probe (``evaluate-dataset``)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from app.cli.common import fail, load_generator, order_options, validation_message


def _grid_poses(gen, count: int, landmarks_csv: Path | None):
    """Pose columns from a landmarks CSV or, by default, the entry's own pose landmarks."""
    import numpy as np

    from vigface.data import read_landmarks_csv
    from vigface.generator.grid import pose_columns

    if landmarks_csv is not None:
        if not landmarks_csv.is_file():
            fail(f"landmarks CSV not found: {landmarks_csv}")
        table = np.stack(list(read_landmarks_csv(landmarks_csv).values()))
    elif gen.pose_landmarks is not None:
        table = gen.pose_landmarks
    else:
        fail("the model has no pose landmarks; pass --landmarks <csv>")
    return pose_columns(table, count)


def sample_cmd(
    model: str = typer.Option("demo", help="generator folder or store name"),
    group: str = typer.Option("virtual", help="virtual or real prototypes"),
    identities: int = typer.Option(8, min=1),
    poses: int = typer.Option(6, min=1),
    guidance: float | None = typer.Option(None, min=0.0, help="default: the model card's"),
    steps: int | None = typer.Option(None, min=1, max=1000, help="default: the model card's"),
    scheduler: str | None = typer.Option(None, help="dpmsolver, unipc or ddim (card's)"),
    seed: int = 0,
    landmarks: Path | None = typer.Option(None, help="CSV to take pose columns from"),
    out: Path = typer.Option(..., help="output PNG grid (rows = identities, columns = poses)"),
) -> None:
    """Draw a sample grid and print identity cosines as one JSON line."""
    from vigface.evaluation.identity import identity_fidelity
    from vigface.generator.grid import save_grid
    from vigface.sampler_settings import SamplerSettings

    if group not in ("virtual", "real"):
        fail("--group must be 'virtual' or 'real'")
    gen = load_generator(model)
    defaults = SamplerSettings.for_model(gen.card)
    guidance = defaults.guidance if guidance is None else guidance
    steps = defaults.steps if steps is None else steps
    scheduler = scheduler or defaults.scheduler
    cols = _grid_poses(gen, poses, landmarks)
    try:
        res = identity_fidelity(
            gen, group, identities, cols, guidance, steps, seed, scheduler=scheduler,
            timestep_spacing=defaults.timestep_spacing,
        )  # fmt: skip
    except ValueError as exc:
        fail(str(exc))
    save_grid(res.pop("images_array"), identities, poses, out)
    res.pop("cos_own_all")
    res.pop("nearest_real_all")
    typer.echo(json.dumps(res))


def default_spares(gen, spec) -> int:
    """Spares as the service reserves them (``VIGFACE_SPARE_FRACTION`` and
    ``VIGFACE_SPARE_CONFIDENCE``, or the card's measured drop rate at the order's poses), but
    at least 2."""
    from jobstore.settings import Settings
    from vigface.dataset.spares import spares_for_order
    from vigface.dataset.spec import at_card_thresholds
    from vigface.pose import PoseSpecError, group_shares

    card = gen.card
    settings, own = Settings(), not at_card_thresholds(spec, card)
    shares = None
    if gen.pose_landmarks is not None:
        try:
            shares = group_shares(gen.pose_bank.weights(spec.pose))
        except PoseSpecError as exc:
            fail(str(exc))
    m, fraction, confidence = (
        spec.images_per_identity,
        settings.spare_fraction,
        settings.spare_confidence,
    )
    return max(2, spares_for_order(card, spec.identities, m, fraction, confidence, own, shares))


def real_augment_rows(gen, spec, real_data: Path | None):
    """real_augment: the real classes to fill up and the images each still needs."""
    from vigface.data import DatasetError
    from vigface.dataset.planning import real_augment_plan

    if real_data is None:
        fail("--real-data is required with --mode real_augment")
    try:
        candidates, slot_images = real_augment_plan(
            gen.fr.classes, real_data, spec.images_per_identity
        )
    except DatasetError as exc:
        fail(str(exc))
    if not candidates:
        fail(f"no class in {real_data} has fewer than {spec.images_per_identity} images")
    return spec.model_copy(update={"identities": len(candidates)}), candidates, slot_images


@order_options(identities=1)
def generate_cmd(
    order: dict,
    model: str = typer.Option("demo", help="generator folder or store name"),
    mode: str = typer.Option("virtual", help="virtual, or real_augment (fill real classes)"),
    max_attempts: int = typer.Option(3, help="draws per image before its identity is dropped"),
    spares: int | None = typer.Option(
        None,
        min=0,
        help="most identities replaced after the filters drop them (default: 20 percent of "
        "--identities, at least 2, or more where the card's measured drop rate needs them); "
        "the run stops with a per-filter count when they run out",
    ),
    batch_size: int = typer.Option(32),
    compile_: bool = typer.Option(
        False, "--compile", help="torch.compile the DiT (faster; bytes reproduce only with it)"
    ),
    precision: str = typer.Option(
        "auto", help="auto (bf16 on CUDA and CPUs with native bf16, else fp32), fp32 or bf16"
    ),
    gallery: str | None = typer.Option(None, help=".npy of real embeddings (any size)"),
    leakage_judge_onnx: str | None = typer.Option(
        None, help="independent FR model (insightface ONNX) as a second leakage test"
    ),
    leakage_judge_gallery: str | None = typer.Option(
        None, help=".npy of real embeddings by the judge model"
    ),
    leakage_judge_threshold: float | None = typer.Option(
        None, help="the judge's own cosine threshold for leakage"
    ),
    start: int = typer.Option(0, help="first prototype row to use"),
    real_data: Path | None = typer.Option(
        None, help="real_augment: the real ImageFolder whose small classes are filled up"
    ),
    out: Path = typer.Option(..., help="output folder (rerun to resume)"),
) -> None:
    """Generate a dataset: sample, filter, write the formats, report.json and report.html."""
    from pydantic import ValidationError

    from vigface.dataset.spec import DatasetSpec, resolve_spec
    from vigface.precision import PRECISIONS

    if precision not in PRECISIONS:
        fail(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    try:
        spec = DatasetSpec(
            **order,
            mode=mode,
            max_attempts=max_attempts,
            batch_size=batch_size,
            gallery=gallery,
            leakage_judge_onnx=leakage_judge_onnx,
            leakage_judge_gallery=leakage_judge_gallery,
            leakage_judge_threshold=leakage_judge_threshold,
        )
    except ValidationError as exc:
        fail(validation_message(exc))
    gen = load_generator(model)
    try:  # the order meets the model card here, once; the dataset card records the result
        spec = resolve_spec(spec, gen.card)
    except ValueError as exc:
        fail(str(exc))
    if mode == "real_augment":
        spec, candidates, slot_images = real_augment_rows(gen, spec, real_data)
    else:
        spares = default_spares(gen, spec) if spares is None else spares
        total = gen.fr.virtual_prototypes.shape[0]
        candidates = list(range(start, min(total, start + spec.identities + spares)))
        slot_images = None
    report = build_dataset(gen, spec, out, candidates, slot_images, compile_, precision, model)
    summary = {k: report[k] for k in ("counts", "timing", "attributes")}
    typer.echo(json.dumps({"out": str(out), **summary}))


def build_dataset(gen, spec, out: Path, candidates, slot_images, compile_, precision, model):
    """Draw, filter and write the dataset; a refusal (too few spares, a pose the bank
    cannot give, a folder drawn with other settings) exits with its reason."""
    from model_store import ModelNotFound, resolve
    from model_store.remote import content_hash
    from vigface.dataset.assembly import write_dataset
    from vigface.dataset.pipeline import DatasetBuilder, NotEnoughPrototypes
    from vigface.dataset.provenance import local_context
    from vigface.pose import PoseSpecError

    try:
        digest = content_hash(resolve(model))
    except ModelNotFound:  # pulled from a registry: its cache folder is named by the hash
        digest = None

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
        builder.generate()
        return write_dataset([builder], out, context=local_context(out, model, digest))
    except (NotEnoughPrototypes, PoseSpecError, ValueError) as exc:
        fail(str(exc))


def outside_judge_cmd(
    data: Path = typer.Option(
        ..., help="a generated dataset folder (its imagefolder/) or any ImageFolder of faces"
    ),
    real_data: Path | None = typer.Option(
        None,
        help="real people to measure nearness to (the generator's training ImageFolder); "
        "without it only within/between identity figures are measured",
    ),
    heldout: Path | None = typer.Option(
        None, help="held-out real people (ImageFolder) for the reference figures"
    ),
    model: str | None = typer.Option(
        None, help="generator whose card holds (or, with --update-card, gets) the reference"
    ),
    resolution: int | None = typer.Option(
        None,
        min=8,
        max=112,
        help="the resolution the faces were drawn at (default: the dataset card's, else the "
        "model's)",
    ),
    update_card: bool = typer.Option(
        False, help="store the real reference in the card (at its resolution)"
    ),
    cache: Path | None = typer.Option(
        None, help="where real galleries' descriptors are kept (default ~/.cache/vigface)"
    ),
) -> None:
    """Identity distances by an independent FR model (dlib), beside real people's at the
    same resolution; prints one JSON line with a plain-sentence verdict."""
    import numpy as np

    from vigface.data import DatasetError
    from vigface.evaluation.judge import OutsideJudge, cached_gallery, calibration_at, embed_folder
    from vigface.evaluation.judge_figures import compare, verdict

    folder = data / "imagefolder" if (data / "imagefolder").is_dir() else data
    card, resolution = judged_resolution(data, model, resolution)
    if update_card and (model is None or heldout is None):
        fail("--update-card needs --model and --heldout (and --real-data for nearness)")
    judge = OutsideJudge()
    try:
        emb, names, _ = embed_folder(judge, folder)  # as delivered: no further degradation
        cache = cache or Path.home() / ".cache" / "vigface"
        gallery = gallery_names = None
        if real_data is not None:
            gallery, gallery_names = cached_gallery(judge, real_data, resolution, cache)
        ref = calibration_at(card, resolution)
        if heldout is not None:
            n = len(np.unique(names))
            ref = heldout_reference(judge, heldout, resolution, gallery, gallery_names, n)
    except DatasetError as exc:
        fail(str(exc))
    if ref is None:
        fail("no real reference: pass --heldout (held-out real people) or a calibrated --model")
    ours, shown = compare(emb, names, ref, gallery)
    result = {"judge": judge.name, "synthetic": ours, "real": shown, **verdict(ours, shown)}
    if update_card:
        store_reference(model, judge.name, ref, resolution)
    typer.echo(json.dumps(result))


def judged_resolution(data: Path, model: str | None, resolution: int | None):
    """(the model's card or {}, the resolution the faces were drawn at): given, else the
    dataset card's, else the model's DiT side."""
    from model_store import ModelNotFound, read_card, resolve

    dataset_card = data / "dataset_card.json"
    if resolution is None and dataset_card.is_file():
        resolution = json.loads(dataset_card.read_text()).get("resolution")
    card = {}
    if model is not None:
        try:
            card = read_card(model)
        except ModelNotFound as exc:
            fail(str(exc))
        if resolution is None:
            cfg = resolve(model) / "dit" / "config.json"
            resolution = json.loads(cfg.read_text())["sample_size"] if cfg.is_file() else None
    if resolution is None:
        fail("give --resolution or a --model with a dit/ folder")
    return card, resolution


def heldout_reference(judge, heldout: Path, resolution: int, gallery, gallery_names, n: int):
    """Held-out real people's figures at ``resolution`` with as many identities as the set."""
    import numpy as np

    from vigface.data import AlignedFaceFolder
    from vigface.evaluation.judge import degrade
    from vigface.evaluation.judge_figures import reference_figures

    ds = AlignedFaceFolder.scan(heldout)
    images, labels = ds.load_array(112)
    emb = judge.embed(degrade(images, resolution))
    names = np.asarray(ds.classes)[labels]
    return reference_figures(emb, names, gallery, gallery_names, n, resolution)


def store_reference(model: str, judge_name: str, ref: dict, resolution: int) -> None:
    """Keep real people's figures in the card: at the DiT's own resolution as ``judge.real``,
    at another one (an upsampler's) beside it in ``judge.real_at``."""
    from model_store import resolve
    from vigface.model_card import update_card as set_card_sections

    path = resolve(model) / "model_card.json"
    judged = json.loads(path.read_text()).get("judge") or {}
    if not judged or judged.get("resolution") == resolution:
        judged.update({"name": judge_name, "real": ref, "resolution": resolution})
    else:
        judged.setdefault("real_at", {})[str(resolution)] = ref
    set_card_sections(path.parent, judge=judged)


def evaluate_dataset_cmd(
    data: list[Path] = typer.Option(
        [], help="dataset folder (its imagefolder/) or ImageFolder; repeat to train on several"
    ),
    job: list[str] = typer.Option(
        [], help="a finished job of a running service (its imagefolder is downloaded first)"
    ),
    url: str = typer.Option("http://127.0.0.1:8000", envvar="VIGFACE_URL", help="for --job"),
    api_key: str | None = typer.Option(None, envvar="VIGFACE_API_KEY", help="for --job"),
    pairs: str = typer.Option(
        ..., help="comma-separated insightface .bin files (lfw.bin,cfp_fp.bin,...)"
    ),
    steps: int | None = typer.Option(None, min=1, help="probe step budget (default: the recipe's)"),
    resolution: int | None = typer.Option(
        None, min=16, max=112, help="probe input size (default: the recipe's 56 px)"
    ),
    batch_size: int | None = typer.Option(None, min=2, help="default: the recipe's 128"),
    work: Path | None = typer.Option(None, help="scratch folder (default: a temporary one)"),
    device: str | None = typer.Option(None, help="cpu, cuda (default: cuda if any)"),
    out: Path | None = typer.Option(None, help="also write the result as JSON here"),
) -> None:
    """What a dataset is worth: train the probe FR (fixed recipe and step budget, no virtual
    prototypes) on it and print 10-fold verification accuracy per benchmark; last line JSON."""
    import tempfile

    from app.cli.jobs import _call, _client
    from vigface.config import ConfigError
    from vigface.data import DatasetError
    from vigface.training.probe import dataset_utility, probe_config

    if not data and not job:
        fail("give --data DIR or --job ID (repeatable; all of them train together)")
    files = [Path(f) for f in pairs.split(",") if f]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        fail(f"--pairs: not found: {', '.join(missing)}")
    benchmarks = {f.stem: f for f in files}
    if len(benchmarks) < len(files):
        fail("--pairs: two benchmark files share a name")
    try:
        cfg = probe_config(steps, resolution, batch_size)
        with tempfile.TemporaryDirectory(prefix="vigface-probe-") as tmp:
            work = work or Path(tmp)
            for job_id in job:  # resumable: files already downloaded are kept
                dest = work / "jobs" / job_id
                _call(url, _client(url, api_key).download, job_id, "imagefolder", dest)
                data = [*data, dest]
            result = dataset_utility(data, benchmarks, work, cfg, device, progress=True)
    except (ConfigError, DatasetError) as exc:
        fail(str(exc))
    t = result["train"]
    typer.echo(
        f"probe: {result['recipe']['steps']} steps at {result['recipe']['resolution']} px on "
        f"{t['images']} images of {t['identities']} identities ({t['minutes']} min)"
    )
    for name, m in result["benchmarks"].items():
        typer.echo(f"  {name}: {m['accuracy']:.4f} +- {m['accuracy_std']:.4f} ({m['pairs']} pairs)")
    if out:
        out.write_text(json.dumps(result, indent=1))
    typer.echo(json.dumps(result))


def register(app: typer.Typer) -> None:
    app.command("sample")(sample_cmd)
    app.command("generate")(generate_cmd)
    app.command("outside-judge")(outside_judge_cmd)
    app.command("evaluate-dataset")(evaluate_dataset_cmd)
