"""The dashboard's order form: the chosen model's hints, the form's text parsed as the order's
own types, and the same ``create_job`` as ``POST /v1/jobs``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.api.deps import get_db, get_settings_dep
from app.schemas import JobCreate, number_kind
from app.services.admission import create_job
from app.services.errors import JobError
from app.services.models import model_entries
from app.services.quota import images_used_this_month
from app.ui.routes import check_csrf, page, session_team
from jobstore.models import Team
from jobstore.settings import Settings
from vigface.dataset.spec import LIMITS
from vigface.dataset.writers import FORMATS
from vigface.pose import YAW_BINS
from vigface.sampler_settings import GUIDANCE_RANGE, STEPS_RANGE, SamplerSettings

router = APIRouter(prefix="/ui", include_in_schema=False)


def order_limits(settings: Settings, model) -> dict:
    """What the server admits for ``model``: the spec's bounds, narrowed by the deployment,
    the guidance weights its filters were calibrated at and the identities it has left (less
    the share reserved as spares)."""
    guidance = GUIDANCE_RANGE
    table = (
        ((model.card.get("filters") or {}).get("tau_consistency_by_guidance") or {})
        if (model)
        else {}
    )
    if table:
        weights = sorted(float(g) for g in table)
        guidance = (weights[0], weights[-1])
    identities = min(LIMITS["identities"][1], settings.max_identities_per_job)
    if model is not None:
        spare = 1 + settings.spare_fraction
        identities = max(0, min(identities, int(model.free_virtual_identities / spare)))
    return {
        "guidance": f"{guidance[0]:g} to {guidance[1]:g}",
        "steps": STEPS_RANGE[1],
        "identities": identities,
        "images_per_identity": min(
            LIMITS["images_per_identity"][1], settings.max_images_per_identity
        ),
    }


def _order_page(request, team, db, settings, form, errors, status=200):
    models = model_entries(db, settings)
    chosen = form.get("model") or settings.default_model
    model = next((m for m in models if m.name == chosen), None)
    used = images_used_this_month(db, team)
    recommended = SamplerSettings.for_model(model.card if model else {}).model_dump()
    form = {k: recommended[k] if v is None and k in recommended else v for k, v in form.items()}
    resp = page(
        request,
        "new_order.html",
        team,
        form=form,
        errors=errors,
        pose_bins=YAW_BINS,
        formats=FORMATS,
        limits=order_limits(settings, model),
        quota_left=max(0, team.monthly_quota - used),
        models=models,
        model=model,
        recommended=recommended,
        nav="order",
    )
    resp.status_code = status
    return resp


DEFAULT_FORM = {
    "model": None,  # the deployment's default model
    "identities": 10,
    "images_per_identity": 10,
    "seed": 0,
    "guidance": None,  # the model's recommendation
    "steps": None,
    "pose_guidance": None,  # the model's recommendation (1: pose as conditioned)
    "turned_pose_guidance": None,  # the model's recommendation (none: pose_guidance)
    "upsample": "",  # "" = the model's default, "true" / "false"
    "priority": 5,
    "pose_preset": "match_training",
    "formats": ["imagefolder"],
    "webhook_url": "",
}


# the form's numeric fields, parsed as the order's own types say (JobCreate, SamplerSettings)
NUMBER_FIELDS = {
    k: kind for k in DEFAULT_FORM if k in JobCreate.model_fields and (kind := number_kind(k))
}


@router.get("/orders/new")
def order_form(
    request: Request,
    model: str | None = None,
    team: Team = Depends(session_team),
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
) -> HTMLResponse:
    return _order_page(request, team, db, settings, {**DEFAULT_FORM, "model": model}, {})


@router.post("/orders")
async def order_submit(
    request: Request,
    team: Team = Depends(session_team),
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
):
    raw = await request.form()
    check_csrf(request, raw.get("csrf", ""))
    form = {k: raw.get(k) for k in DEFAULT_FORM if k != "formats"} | {
        "formats": raw.getlist("formats")
    }
    form |= {f"bin_{b}": raw.get(f"bin_{b}", "0") for b in YAW_BINS}
    errors: dict[str, str] = {}
    pose: str | dict = form["pose_preset"]
    if pose == "custom":
        try:
            pose = {
                b: float(form[f"bin_{b}"]) / 100 for b in YAW_BINS if float(form[f"bin_{b}"]) > 0
            }
        except ValueError:
            errors["pose"] = "bin weights must be numbers"
    body = {}  # form fields arrive as text; the API's strict types take numbers
    for k, kind in NUMBER_FIELDS.items():
        if form[k] not in (None, ""):
            try:
                body[k] = kind(form[k])
            except ValueError:
                errors[k] = f"must be {'a whole number' if kind is int else 'a number'}"
    body |= {"pose": pose, "formats": form["formats"] or []}
    if form["upsample"] in ("true", "false"):
        body["upsample"] = form["upsample"] == "true"
    elif form["upsample"]:
        errors["upsample"] = "choose the model's default, true or false"
    if form.get("webhook_url"):
        body["webhook_url"] = form["webhook_url"]
    if form.get("model"):
        body["model"] = form["model"]
    try:
        order = JobCreate(**body)
    except ValidationError as exc:
        for e in exc.errors():
            errors.setdefault(str(e["loc"][0]), e["msg"])
        for required in ("identities", "images_per_identity"):
            if required not in body:
                errors[required] = "required"
    if errors:
        return _order_page(request, team, db, settings, form, errors, status=422)
    try:
        job, _ = create_job(db, settings, team, order, None, request.app.state.enqueue)
    except JobError as exc:
        field = exc.field.split(".")[0]
        errors[field if field in form or field == "pose" else "_"] = exc.message
        return _order_page(request, team, db, settings, form, errors, status=exc.status)
    return RedirectResponse(f"/ui/jobs/{job.id}", status_code=303)
