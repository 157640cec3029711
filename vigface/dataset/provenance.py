"""What a delivered dataset is, where it came from and what it may be used for: one typed
record (:class:`DeliveryRecord`), written as a card people read (``README.md``, the Hugging
Face dataset card layout with its YAML header) and one tools read (``croissant.json``,
MLCommons Croissant 1.0 with its responsible-AI fields, which Hugging Face, Kaggle and OpenML
load).

A team's reviewers ask three things of a dataset of faces: may we use it for what we want
(the terms, which can never be wider than the generator's training data allow:
:func:`vigface.model_card.delivery_terms`), does it hold any real person (the privacy filter's
thresholds, how they were calibrated, how near the delivered identities came to real people,
and an outside face model's figures beside real people's), and how was it made (the order,
who placed it and when, the model by content hash and what it learnt from).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import yaml
from pydantic import BaseModel, Field

from vigface.atomic import atomic_write_text
from vigface.model_card import delivery_terms

CODE_LICENSE = "Apache-2.0"
INTENDED_USES = [
    "training face-verification and face-recognition models",
    "evaluating and benchmarking such models",
    "research on synthetic data and privacy in face recognition",
]
OUT_OF_SCOPE = [
    "identifying, tracking or profiling real people",
    "inferring sensitive attributes (ethnicity, health, sexuality, religion) of anyone",
    "presenting the faces as photographs of real people, or as evidence",
    "any use the terms below do not allow (research-only data: no commercial use)",
]


class OrderContext(BaseModel):
    """Who ordered the dataset, when, and which model (by content hash): the caller knows
    (the service's job, or the CLI)."""

    dataset_id: str
    ordered_by: str = Field(description="the team, or the local user of the CLI")
    ordered_at: str = Field(description="ISO 8601, UTC")
    model_digest: str | None = Field(None, description="SHA-256 over the model entry's files")
    source: str = Field("vigface", description="the service or command that made it")


class DeliveryRecord(BaseModel):
    """Everything both cards say, decided once."""

    title: str
    dataset_id: str
    ordered_by: str
    ordered_at: str
    created_at: str
    source: str
    model: dict
    training_data: list[dict]
    terms: dict
    code_license: str = CODE_LICENSE
    size: dict
    formats: list[str]
    order: dict
    privacy: dict
    pose: dict
    intended_uses: list[str] = INTENDED_USES
    out_of_scope_uses: list[str] = OUT_OF_SCOPE


def local_context(out: Path, model: str, digest: str | None = None) -> OrderContext:
    """The context of a dataset made by ``vigface generate`` on this machine."""
    import getpass

    return OrderContext(
        dataset_id=out.name,
        ordered_by=f"{getpass.getuser()} (vigface generate, local)",
        ordered_at=datetime.now(UTC).isoformat(timespec="seconds"),
        model_digest=digest,
        source=f"vigface generate --model {model}",
    )


def delivery_record(report: dict, card: dict, context: OrderContext) -> DeliveryRecord:
    """The record of a finished dataset from its report, its model's card and the order."""
    ds = report["dataset"]
    spec = ds["spec"]
    filters = card.get("filters") or {}
    return DeliveryRecord(
        title=f"VIGFace synthetic faces {context.dataset_id}",
        dataset_id=context.dataset_id,
        ordered_by=context.ordered_by,
        ordered_at=context.ordered_at,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        source=context.source,
        model={
            "name": ds.get("model", ""),
            "content_sha256": context.model_digest,
            "resolution": ds.get("resolution"),
            "latent": bool(card.get("latent")),
            "steps": card.get("steps"),
            "fr_model_train_data": (card.get("fr_card") or {}).get("train_data"),
        },
        training_data=card.get("training_data") or [],
        terms=delivery_terms(card),
        size={
            "identities": ds["num_classes"],
            "images": ds["num_image"],
            "images_per_identity": spec.get("images_per_identity"),
            "image_size": ds.get("image_size"),
        },
        formats=ds["formats"],
        order={
            k: spec.get(k)
            for k in ("pose", "guidance", "pose_guidance", "turned_pose_guidance", "steps", "seed")
        },
        privacy={
            "thresholds": report.get("thresholds"),
            "calibration": {
                "tau_leak": "p99 of real training images' largest cosine to another real "
                "identity's prototype (vigface calibrate)",
                "tau_consistency": "p5 of calibration draws' cosine to their own prototype at "
                "the order's guidance (and pose group)",
                "drawn_with": filters.get("calibration"),
            },
            "image_nearest_real": report["leakage"]["image_nearest_real"],
            "identity_nearest_real": report["leakage"]["identity_nearest_real"],
            "real_nearest_negative": report["leakage"].get("real_nearest_negative"),
            "rejected": {
                k: v for k, v in report["counts"].items() if k.startswith(("rejected", "ident"))
            },
            "outside_judge": report.get("judge"),
        },
        pose={k: report.get("pose", {}).get(k) for k in ("bins", "requested", "drawn", "shown")},
    )


def size_category(n: int) -> str:
    """Hugging Face's size bucket of ``n`` examples."""
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M")):  # fmt: skip
        if n < bound:
            return name
    return "1M<n<10M"


def front_matter(rec: DeliveryRecord) -> dict:
    """The YAML header of the Hugging Face dataset card."""
    terms = rec.terms
    header = {
        "pretty_name": rec.title,
        "license": terms["license"],
        "task_categories": ["image-classification", "image-feature-extraction"],
        "task_ids": ["face-recognition"],
        "tags": ["synthetic", "faces", "face-recognition", "privacy", "vigface"],
        "size_categories": [size_category(rec.size["images"])],
        "source_datasets": [s["name"] for s in rec.training_data] or ["original"],
        "annotations_creators": ["machine-generated"],
    }
    if terms["license"] == "other":
        header["license_name"] = "research-only" if terms["research_only"] else "see-terms"
        header["license_link"] = "README.md#terms"
    return header


def _summary(d: dict | None) -> str:
    if not d:
        return "not measured"
    keys = [k for k in ("mean", "p50", "p99", "max") if k in d]
    return ", ".join(f"{k} {d[k]:.3f}" for k in keys) if keys else json.dumps(d)


def readme(rec: DeliveryRecord) -> str:
    """The card a person reads: the Hugging Face layout, every claim from the record."""
    header = yaml.safe_dump(front_matter(rec), sort_keys=False, allow_unicode=True)
    p, s, t = rec.privacy, rec.size, rec.terms
    judge = p.get("outside_judge") or {}
    sources = (
        "\n".join(
            f"- **{d['name']}** ({', '.join(d['used_for'])}): {d['terms']}"
            + (" Research use only." if d.get("research_only") else "")
            for d in rec.training_data
        )
        or "- not stated by the model card"
    )
    lines = [
        f"---\n{header}---\n",
        f"# {rec.title}\n",
        f"{s['identities']} synthetic identities, {s['images']} aligned face images "
        f"({s['image_size'][0]} x {s['image_size'][1]} px, the insightface ArcFace crop) of "
        "people who do not exist, for face-recognition training. Made by VIGFace (virtual "
        "identity prototypes of a face-recognition model, drawn by a diffusion model).\n",
        "## Dataset description\n",
        f"- Ordered by: {rec.ordered_by}, at {rec.ordered_at}; delivered {rec.created_at} "
        f"({rec.source}); dataset id `{rec.dataset_id}`",
        f"- Generator: `{rec.model['name']}` (content SHA-256 "
        f"`{rec.model['content_sha256'] or 'not recorded'}`), drawing at "
        f"{rec.model['resolution']} px"
        + (" in an autoencoder's latent space" if rec.model["latent"] else ""),
        f"- Order: {json.dumps(rec.order)}",
        f"- Formats: {', '.join(rec.formats)}; every draw and each filter's decision: "
        "`manifest.csv`; figures: `report.json`, `report.html`; machine-readable card: "
        "`croissant.json`\n",
        "## Uses\n",
        "Intended: " + "; ".join(rec.intended_uses) + ".\n",
        "Out of scope: " + "; ".join(rec.out_of_scope_uses) + ".\n",
        "## Source data\n",
        "No image of a real person is in this dataset. The models that drew it learnt from:\n",
        sources + "\n",
        "## Personal and sensitive information: privacy evidence\n",
        f"- Filters (each image, and each identity's mean): {json.dumps(p['thresholds'])}",
        f"- tau_leak: {p['calibration']['tau_leak']}; tau_consistency: "
        f"{p['calibration']['tau_consistency']}",
        f"- Delivered images' largest cosine to a real identity: "
        f"{_summary(p['image_nearest_real'])}; identities' (mean embedding): "
        f"{_summary(p['identity_nearest_real'])}",
        f"- Real people's own nearest other real identity: {_summary(p['real_nearest_negative'])}",
        f"- Rejected and replaced: {json.dumps(p['rejected'])}",
        f"- Outside judge ({judge.get('judge', 'not run')}): {judge.get('text', 'not measured')}\n",
        "## Bias, risks and limitations\n",
        "The identities inherit the demographics and image conditions of the training data "
        "(news photographs of public figures). Pose shares asked for and drawn: "
        f"{json.dumps({k: rec.pose.get(k) for k in ('bins', 'requested', 'drawn')})}.\n",
        "## Terms\n",
        f"Dataset: **{t['license']}**. {t['terms']}\n",
        f"Code that made it: {rec.code_license}.\n",
    ]
    return "\n".join(lines) + "\n"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(2**20):
            h.update(chunk)
    return h.hexdigest()


CROISSANT_CONTEXT = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "sc": "https://schema.org/",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "dct": "http://purl.org/dc/terms/",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}

MANIFEST_COLUMNS = {  # manifest.csv columns the Croissant record set exposes, and their types
    "identity": "sc:Text",
    "label": "sc:Integer",
    "pose_bin": "sc:Text",
    "yaw": "sc:Float",
    "cos_own": "sc:Float",
    "nearest_real_cos": "sc:Float",
    "accepted": "sc:Boolean",
    "file": "sc:Text",
}


def _field(record: str, name: str, dtype: str, source: dict) -> dict:
    return {"@type": "cr:Field", "@id": f"{record}/{name}", "name": name, "dataType": dtype,
            "source": source}  # fmt: skip


def croissant(rec: DeliveryRecord, out: Path) -> dict:
    """The Croissant 1.0 JSON-LD of a dataset folder ``out`` (its manifest and images)."""
    files = [{
        "@type": "cr:FileObject", "@id": "manifest.csv", "name": "manifest.csv",
        "contentUrl": "manifest.csv", "encodingFormat": "text/csv",
        "sha256": _sha256(out / "manifest.csv"),
    }]  # fmt: skip
    manifest_fields = [
        _field("draws", c, t, {"fileObject": {"@id": "manifest.csv"}, "extract": {"column": c}})
        for c, t in MANIFEST_COLUMNS.items()
    ]
    record_sets = [{
        "@type": "cr:RecordSet", "@id": "draws", "name": "draws",
        "description": "every draw and each filter's decision", "field": manifest_fields,
    }]  # fmt: skip
    if "imagefolder" in rec.formats:
        files.append({
            "@type": "cr:FileSet", "@id": "images", "name": "images",
            "encodingFormat": "image/jpeg", "includes": "imagefolder/*/*.jpg",
        })  # fmt: skip
        from_images = {"fileSet": {"@id": "images"}}
        record_sets.append({"@type": "cr:RecordSet", "@id": "faces", "name": "faces",
            "description": "the delivered faces, one identity per folder", "field": [
                _field("faces", "image", "sc:ImageObject",
                       {**from_images, "extract": {"fileProperty": "content"}}),
                _field("faces", "identity", "sc:Text", {**from_images,
                       "extract": {"fileProperty": "filepath"},
                       "transform": {"regex": "^.*imagefolder/([^/]+)/[^/]+$"}}),
            ]})  # fmt: skip
    p = rec.privacy
    return {
        "@context": CROISSANT_CONTEXT,
        "@type": "sc:Dataset",
        "name": rec.title,
        "description": (
            f"{rec.size['identities']} synthetic identities, {rec.size['images']} aligned face "
            "images of people who do not exist, drawn by VIGFace for face-recognition training."
        ),
        "conformsTo": "http://mlcommons.org/croissant/1.0",
        "citeAs": "VIGFace: Virtual Identity Generation for Privacy-Free Face Recognition "
        "Dataset (ICCV 2025, arXiv 2403.08277)",
        "datePublished": rec.created_at[:10],
        "version": "1.0.0",
        "url": f"urn:vigface:dataset:{rec.dataset_id}",
        "license": rec.terms["license"]
        if rec.terms["license"] != "other"
        else f"{rec.terms['terms']}",
        "creator": {"@type": "sc:Organization", "name": rec.source},
        "keywords": ["synthetic", "faces", "face recognition", "privacy"],
        "rai:dataCollection": "Generated: each image drawn by a diffusion model from a virtual "
        "identity prototype and a 5-point pose; no image was collected from people.",
        "rai:dataCollectionType": "Synthetic",
        "rai:personalSensitiveInformation": (
            "No real person: every image passed a privacy filter against the training "
            f"identities (thresholds {json.dumps(p['thresholds'])}); largest cosine of a "
            f"delivered identity to a real one: {_summary(p['identity_nearest_real'])}."
        ),
        "rai:dataUseCases": "; ".join(rec.intended_uses),
        "rai:dataLimitations": "Out of scope: " + "; ".join(rec.out_of_scope_uses),
        "rai:dataBiases": "Inherits the demographics of its source data: "
        + ", ".join(d["name"] for d in rec.training_data),
        "distribution": files,
        "recordSet": record_sets,
    }


def write_dataset_cards(out: Path, rec: DeliveryRecord) -> None:
    """``README.md`` and ``croissant.json`` beside the dataset's files."""
    atomic_write_text(out / "README.md", readme(rec))
    atomic_write_text(out / "croissant.json", json.dumps(croissant(rec, out), indent=2) + "\n")
