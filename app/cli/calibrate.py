"""Calibration commands: what a generator's filters hold images to (``calibrate``), per
guidance weight (``calibrate-guidance``), how often they drop identities in a real run
(``calibrate-drops``) and what pose real faces show per yaw bin (``calibrate-pose``). Each
writes its result into the model card."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

from app.cli.common import fail, load_generator


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
    card's thresholds; orders then reserve spares from it (vigface/dataset/spares.py). A run
    whose every image asked one turned |yaw| group (e.g. `--pose '{"left_35_60": 0.5,
    "right_35_60": 0.5}'`) records that group's rate, which orders asking that group use.
    Recalibrating the thresholds (`vigface calibrate`) clears both."""
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
            k: spec.get(k)
            for k in (
                "guidance",
                "pose_guidance",
                "turned_pose_guidance",
                "steps",
                "scheduler",
                "timestep_spacing",
                "pose",
            )
        },
        "measured_on": str(dataset),
    }
    filters = dict(gen.card.get("filters") or {})
    groups = run_groups(gen, spec.get("pose"))
    if len(groups) == 1 and groups != {"frontal"}:  # a turned order: its group's own rate
        group = next(iter(groups))
        filters["drop_rate_by_pose"] = {**(filters.get("drop_rate_by_pose") or {}), group: rate}
        rate = {"pose_group": group, **rate}
    else:
        filters["drop_rate"] = rate
    update_card(resolve(model), filters=filters)
    typer.echo(json.dumps(rate))


def run_groups(gen, pose) -> set[str]:
    """The |yaw| groups a run's pose asked for (empty where the entry has no pose bank)."""
    from vigface.pose import group_shares

    if gen.pose_landmarks is None or pose is None:
        return set()
    return set(group_shares(gen.pose_bank.weights(pose)))


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


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_cmd)
    app.command("calibrate-guidance")(calibrate_guidance_cmd)
    app.command("calibrate-drops")(calibrate_drops_cmd)
    app.command("calibrate-pose")(calibrate_pose_cmd)
