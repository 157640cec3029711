"""Admission: what a job order must pass before it is queued.

Validate the order against the service's bounds and the model (its sampler defaults,
calibrated guidance, pose bank, upsampler), check the benchmarks it asks for, estimate its
time and hold very large orders for an explicit confirmation; then
:mod:`app.services.submission` plans and writes it. Cancel and retry are in
:mod:`app.services.lifecycle`; read models in :mod:`app.services.views`.
"""

from __future__ import annotations

from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.schemas import JobCreate
from app.services import cache
from app.services.errors import JobError
from app.services.models import describe_model
from app.services.submission import Order, submit_job
from app.services.views import order_eta_seconds
from jobstore.models import Job, Team
from jobstore.settings import Settings
from jobstore.webhooks import refused_address
from model_store.storage import open_store
from vigface.dataset.spec import (
    DatasetSpec,
    FiltersNotCalibrated,
    GuidanceNotCalibrated,
    PoseGuidanceUnsupported,
    resolve_spec,
)
from vigface.pose import TURNED_GROUPS, PoseSpecError, group_shares
from vigface.sampler_settings import pose_guidance_for


def check_order(settings: Settings, spec: DatasetSpec, webhook_url: str | None) -> None:
    """The service's own bounds, before the model is even looked at."""
    if spec.identities > settings.max_identities_per_job:
        raise JobError(
            422, "identities", f"at most {settings.max_identities_per_job} (this service's bound)"
        )
    if spec.images_per_identity > settings.max_images_per_identity:
        raise JobError(
            422,
            "images_per_identity",
            f"at most {settings.max_images_per_identity} (this service's bound)",
        )
    if spec.mode != "virtual":
        raise JobError(422, "mode", "the service sells virtual identities only")
    if webhook_url and (why := refused_address(webhook_url, settings.webhook_allowed_hosts)):
        raise JobError(422, "webhook_url", why)


def benchmark_key(name: str) -> str:
    return f"benchmarks/{name}.bin"


def check_benchmarks(settings: Settings, names: list[str], spec: DatasetSpec) -> None:
    """Every benchmark a job asks for is registered, and the probe has images to train on."""
    if not names:
        return
    if "imagefolder" not in spec.formats:
        raise JobError(422, "evaluate_on", "the utility probe trains on the imagefolder format")
    store = open_store(settings.storage_url, settings.s3_endpoint_url)
    missing = [n for n in names if not store.exists(benchmark_key(n))]
    if missing:
        raise JobError(
            422,
            "evaluate_on",
            f"no benchmark named {', '.join(missing)} (an admin registers one with "
            "`vigface admin add-benchmark NAME FILE`)",
        )


def create_job(
    db: Session,
    settings: Settings,
    team: Team,
    body: JobCreate,
    idempotency_key: str | None,
    enqueue,
) -> tuple[Job, bool]:
    """The one code path that creates jobs (REST API and dashboard form)."""
    model = body.model or settings.default_model
    fields = body.model_dump(
        exclude={"model", "priority", "webhook_url", "evaluate_on", "confirm_large"}
    )
    try:
        spec = DatasetSpec(**fields, batch_size=settings.sampler_batch_size)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise JobError(422, ".".join(map(str, first["loc"])), first["msg"]) from exc
    check_order(settings, spec, body.webhook_url)
    desc = describe_model(settings, model)
    if desc.pose_bank is None:
        raise JobError(422, "model", f"model {model!r} is not a generator")
    try:  # the one place an order meets the card: the job records what it runs with
        spec = resolve_spec(spec, desc.card)
    except GuidanceNotCalibrated as exc:
        raise JobError(422, "guidance", str(exc)) from exc
    except PoseGuidanceUnsupported as exc:  # pose_guidance or turned_pose_guidance
        raise JobError(422, str(exc).split(":")[0], str(exc)) from exc
    except FiltersNotCalibrated as exc:
        raise JobError(422, str(exc).split(":")[0], str(exc)) from exc
    if spec.upsample and desc.upsampler_size is None:
        raise JobError(422, "upsample", f"model {model!r} has no upsampler; order without it")
    try:
        desc.pose_bank.weights(spec.pose)
    except PoseSpecError as exc:
        raise JobError(422, "pose", str(exc)) from exc
    check_benchmarks(settings, body.evaluate_on, spec)
    card_rate = ((desc.card.get("filters") or {}).get("calibration") or {}).get("img_per_s")
    eta = order_eta_seconds(db, model, spec.identities * spec.images_per_identity, card_rate)
    if not body.confirm_large:
        check_size(settings, spec, eta)
    order = Order(desc, spec, body.priority, body.webhook_url, body.evaluate_on, eta)
    order.warnings = pose_warnings(desc, spec)
    job, created = submit_job(db, settings, team, order, idempotency_key)
    if created:
        enqueue(job)
        cache.statuses.clear()  # the team's listings change
    return job, created


POSE_REACH_WARN = 0.2  # a |yaw| group the model shows in fewer draws than this is warned


def pose_warnings(desc, spec) -> list[str]:
    """What the model's calibration says it cannot show of the order's pose: for each |yaw|
    group the order asks a tenth or more of its faces for, the share of calibration draws
    whose pixels showed that group (at the nearest calibrated pose guidance)."""
    tables = ((desc.card.get("filters") or {}).get("tau_consistency_by_pose")) or {}
    if not tables or desc.pose_bank is None:
        return []
    out = []
    for group, share in group_shares(desc.pose_bank.weights(spec.pose)).items():
        drawn_at = pose_guidance_for(group, spec.pose_guidance, spec.turned_pose_guidance)
        gp = min(tables, key=lambda w, at=drawn_at: abs(float(w) - at))
        reach = tables[gp].get(group, {})
        shown = reach.get("shown_in_group")
        lever = "turned_pose_guidance" if group in TURNED_GROUPS else "pose_guidance"
        if share >= 0.1 and shown is not None and shown < POSE_REACH_WARN:
            out.append(
                f"pose: {share:.0%} of the order asks for |yaw| {group.replace('_', '-')}, and "
                f"this model showed that in {shown:.0%} of its calibration draws (mean shown "
                f"|yaw| {reach.get('shown_mean_abs_yaw', '?')} deg at pose guidance {gp}): "
                "expect faces turned less than asked"
                + (f"; a higher {lever} turns them further" if desc.card.get(
                    "pose_drop_prob") else "")
            )  # fmt: skip
    return out


def check_size(settings: Settings, spec: DatasetSpec, eta_s: float | None) -> None:
    """An order above ``confirm_above_images`` images, or estimated to take longer than
    ``confirm_above_eta_hours`` on the workers, needs ``confirm_large: true``: a typo of one
    digit must not queue three days of work."""
    images = spec.identities * spec.images_per_identity
    hours = eta_s / 3600 if eta_s is not None else None
    too_big = images > settings.confirm_above_images
    too_long = hours is not None and hours > settings.confirm_above_eta_hours
    if too_big or too_long:
        took = f", about {hours:.1f} h at the workers' measured rate" if hours else ""
        raise JobError(
            422,
            "confirm_large",
            f"this order is {images} images{took} (orders above "
            f"{settings.confirm_above_images} images or {settings.confirm_above_eta_hours:g} h "
            "need confirmation); send confirm_large: true to place it",
        )
