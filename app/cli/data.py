"""Dataset commands: sample grids (``sample``), filter calibration (``calibrate``) and
dataset generation (``generate``), all on local model-store entries."""

from __future__ import annotations

import json
import math
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
            gen, group, identities, cols, guidance, steps, seed, scheduler=scheduler
        )
    except ValueError as exc:
        fail(str(exc))
    save_grid(res.pop("images_array"), identities, poses, out)
    res.pop("cos_own_all")
    res.pop("nearest_real_all")
    typer.echo(json.dumps(res))


def calibrate_cmd(
    model: str = typer.Option(..., help="generator folder or store name"),
    data: Path = typer.Option(..., help="the real training ImageFolder of its FR model"),
    identities: int = typer.Option(50, min=2, help="virtual prototypes drawn for tau_consistency"),
    pose_groups: bool = typer.Option(
        True,
        help="also calibrate tau_consistency per |yaw| group of the pose bank (frontal, 15-35, "
        "35-60): each image then meets its own pose's threshold",
    ),
    pose_guidance: list[float] = typer.Option(
        None,
        "--pose-guidance",
        help="a pose guidance weight to draw the pose groups at (repeat; default: the card's)",
    ),
) -> None:
    """Derive the filter defaults (tau_leak, tau_consistency) and store them in the card. A
    drop rate measured at the old thresholds (calibrate-drops) is cleared with them."""
    from model_store import resolve
    from vigface.data import DatasetError
    from vigface.dataset.calibrate import calibrate, consistency_by_pose
    from vigface.model_card import update_card, write_measurement
    from vigface.sampler_settings import GUIDANCE_RANGE

    lo, hi = GUIDANCE_RANGE
    bad = [g for g in pose_guidance or [] if not (math.isfinite(g) and lo <= g <= hi)]
    if bad:
        fail(f"--pose-guidance: each weight must lie in [{lo:g}, {hi:g}]; got {bad}")
    gen = load_generator(model)
    pushed = any(g != 1.0 for g in pose_guidance or [])
    if pushed and not gen.card.get("pose_drop_prob"):
        fail("--pose-guidance: this model was trained without pose dropout; only 1 applies")
    try:
        filters = calibrate(gen, data, calib_identities=identities)
    except DatasetError as exc:
        fail(str(exc))
    if pose_groups and gen.pose_landmarks is not None:
        filters["tau_consistency_by_pose"] = consistency_by_pose(
            gen, calib_identities=identities, pose_guidances=pose_guidance or None
        )
    entry = resolve(model)
    # the threshold's source distribution is for people: a measurement beside the card
    write_measurement(entry, "filters.calibration_cos_own", filters.pop("calibration_cos_own"))
    kept = (gen.card.get("filters") or {}).get("tau_consistency_by_guidance")
    update_card(entry, filters=filters | ({"tau_consistency_by_guidance": kept} if kept else {}))
    shown = {k: filters[k] for k in ("tau_leak", "tau_consistency")}
    if filters.get("tau_consistency_by_pose"):
        shown["tau_consistency_by_pose"] = {
            w: {g: v["tau_consistency"] for g, v in groups.items()}
            for w, groups in filters["tau_consistency_by_pose"].items()
        }
    typer.echo(json.dumps(shown))


def calibrate_drops_cmd(
    model: str = typer.Option(..., help="generator folder or store name"),
    dataset: Path = typer.Option(..., help="a `vigface generate` output folder (its report.json)"),
) -> None:
    """Record in the card how often the filters dropped an identity in a real run at the
    card's thresholds; orders then reserve spares from it (vigface/dataset/spares.py).
    Recalibrating the thresholds (`vigface calibrate`) clears it."""
    from pydantic import ValidationError

    from model_store import resolve
    from vigface.dataset.spares import per_image_failure
    from vigface.dataset.spec import DatasetSpec, card_thresholds
    from vigface.model_card import update_card

    path = dataset / "report.json"
    try:
        report = json.loads(path.read_text())
        drawn_by, spec = report["dataset"]["model"], report["dataset"]["spec"]
        counts, run_thresholds = report["counts"], report["thresholds"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        fail(f"--dataset: {path} is not a `vigface generate` report ({exc})")
    gen = load_generator(model)
    if drawn_by != gen.card.get("name", ""):
        fail(f"--dataset: drawn by model {drawn_by!r}, not {gen.card.get('name', '')!r}")
    if spec.get("mode") != "virtual":
        fail("--dataset: a run of virtual identities is needed (real classes are not replaced)")
    order = {k: v for k, v in spec.items() if k in DatasetSpec.model_fields}
    try:  # the thresholds the card gives this run's settings today
        now = card_thresholds(DatasetSpec.model_validate(order), gen.card)
    except (ValidationError, ValueError) as exc:
        fail(f"--dataset: its settings do not resolve against the card: {exc}")
    then = {k: run_thresholds.get(k) for k in now}
    if now != then:
        fail(
            f"--dataset: drawn at thresholds {then}, the card gives {now}: the order set its own "
            "or the card was recalibrated since; draw again at the card's"
        )
    m = int(spec["images_per_identity"])
    drawn = int(spec["identities"]) + int(counts.get("identities_replaced", 0))
    dropped = int(counts.get("identities_dropped", 0))
    if dropped >= drawn:
        fail(f"--dataset: all {drawn} identities drawn were dropped; fix the model or filters")
    rate = {
        "per_image_failure": round(per_image_failure(dropped, drawn, m), 6),
        "identities_drawn": drawn,
        "identities_dropped": dropped,
        "images_per_identity": m,
        "settings": {
            k: spec.get(k) for k in ("guidance", "pose_guidance", "steps", "scheduler", "pose")
        },
        "measured_on": str(dataset),
    }
    filters = dict(gen.card.get("filters") or {})
    update_card(resolve(model), filters={**filters, "drop_rate": rate})
    typer.echo(json.dumps(rate))


def calibrate_guidance_cmd(
    model: str = typer.Option(..., help="generator folder or store name"),
    guidance: list[float] = typer.Option(
        ..., "--guidance", help="a guidance weight to calibrate at (repeat the option)"
    ),
    identities: int = typer.Option(50, min=2, help="virtual prototypes drawn per weight"),
) -> None:
    """Calibrate tau_consistency at each guidance weight and store the table in the card
    (filters.tau_consistency_by_guidance): orders then take the threshold of their own
    guidance, and a guidance outside the table is refused at admission."""
    import math

    from model_store import resolve
    from vigface.dataset.calibrate import consistency_by_guidance
    from vigface.model_card import update_card
    from vigface.sampler_settings import GUIDANCE_RANGE

    lo, hi = GUIDANCE_RANGE
    bad = [g for g in guidance if not (math.isfinite(g) and lo <= g <= hi)]
    if bad:
        fail(f"--guidance: each weight must lie in [{lo:g}, {hi:g}]; got {bad}")
    card_path = resolve(model) / "model_card.json"
    if not card_path.is_file():
        fail(f"--model: {model!r} has no model_card.json")
    gen = load_generator(model)
    table = consistency_by_guidance(gen, sorted(set(guidance)), calib_identities=identities)
    filters = json.loads(card_path.read_text()).get("filters")
    if not filters:
        fail(f"--model: {model!r} has no filters yet: run `vigface calibrate` first")
    update_card(card_path.parent, filters={**filters, "tau_consistency_by_guidance": table})
    typer.echo(json.dumps(table))


def calibrate_pose_cmd(
    model: str = typer.Option(..., help="generator folder or store name"),
    real: Path = typer.Option(..., help="real aligned faces with their landmarks CSV (held out)"),
    images: int = typer.Option(1000, min=10, help="real faces to measure"),
) -> None:
    """Measure on real faces how often the pixels show the yaw bin their landmarks give
    (dlib's 68 points at 112 px) and store it in the card (shown_pose_reference): every job
    report then shows the delivered faces' shown pose beside it."""
    from model_store import resolve
    from vigface.data import DatasetError
    from vigface.evaluation.shown_pose import real_reference
    from vigface.model_card import update_card

    try:
        reference = real_reference(real, images)
    except DatasetError as exc:
        fail(f"--real: {exc}")
    reference["source"] = f"{real} ({images} faces at most, 112 px)"
    update_card(resolve(model), shown_pose_reference=reference)
    typer.echo(json.dumps(reference))


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

    from jobstore.settings import Settings
    from vigface.data import DatasetError
    from vigface.dataset.pipeline import DatasetBuilder, NotEnoughPrototypes
    from vigface.dataset.planning import real_augment_plan
    from vigface.dataset.spares import spares_for_order
    from vigface.dataset.spec import DatasetSpec, at_card_thresholds, resolve_spec
    from vigface.pose import PoseSpecError
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
    if spares is None:  # as the service reserves them by default, but at least 2
        own = not at_card_thresholds(spec, gen.card)
        fraction, confidence = (
            Settings.model_fields[k].default for k in ("spare_fraction", "spare_confidence")
        )
        m = spec.images_per_identity
        spares = max(2, spares_for_order(gen.card, spec.identities, m, fraction, confidence, own))
    total = gen.fr.virtual_prototypes.shape[0]
    candidates = list(range(start, min(total, start + spec.identities + spares)))
    slot_images = None
    if mode == "real_augment":
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
        fail(str(exc))
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

    from model_store import ModelNotFound, read_card, resolve
    from vigface.data import DatasetError
    from vigface.evaluation.judge import (
        OutsideJudge,
        cached_gallery,
        calibration_at,
        compare,
        degrade,
        embed_folder,
        reference_figures,
        verdict,
    )

    folder = data / "imagefolder" if (data / "imagefolder").is_dir() else data
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
            from vigface.data import AlignedFaceFolder

            ds = AlignedFaceFolder.scan(heldout)
            images, labels = ds.load_array(112)
            ref = reference_figures(
                judge.embed(degrade(images, resolution)),
                np.asarray(ds.classes)[labels],
                gallery,
                gallery_names,
                len(np.unique(names)),
                resolution,
            )
    except DatasetError as exc:
        fail(str(exc))
    if ref is None:
        fail("no real reference: pass --heldout (held-out real people) or a calibrated --model")
    ours, shown = compare(emb, names, ref, gallery)
    result = {"judge": judge.name, "synthetic": ours, "real": shown, **verdict(ours, shown)}
    if update_card:
        path = resolve(model) / "model_card.json"
        full = json.loads(path.read_text())
        judged = full.get("judge") or {}
        if not judged or judged.get("resolution") == resolution:  # the DiT's own resolution
            judged.update({"name": judge.name, "real": ref, "resolution": resolution})
        else:  # another one (the upsampler's): kept beside it
            judged.setdefault("real_at", {})[str(resolution)] = ref
        from vigface.model_card import update_card as set_card_sections

        set_card_sections(path.parent, judge=judged)
    typer.echo(json.dumps(result))


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
    app.command("calibrate")(calibrate_cmd)
    app.command("calibrate-guidance")(calibrate_guidance_cmd)
    app.command("calibrate-drops")(calibrate_drops_cmd)
    app.command("calibrate-pose")(calibrate_pose_cmd)
    app.command("generate")(generate_cmd)
    app.command("outside-judge")(outside_judge_cmd)
    app.command("evaluate-dataset")(evaluate_dataset_cmd)
