"""One dataset from one or more built parts: formats, manifest, card and report.

A part is a :class:`vigface.dataset.pipeline.DatasetBuilder` whose chunks are all finished
(the shards of a service job, in order; class labels continue from part to part). The report
holds the paper's attributes (C_k, S_k, D_k), the leakage statistics of images and identity
means against the real set's own nearest-negative distribution, the filters' counts and the
drawn pose histogram.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from vigface.constants import CROP_SIZE
from vigface.dataset.provenance import (
    OrderContext,
    delivery_record,
    local_context,
    write_dataset_cards,
)
from vigface.dataset.records import part_records
from vigface.dataset.writers import (
    ImageRecord,
    encode_jpeg,
    write_imagefolder,
    write_json,
    write_manifest,
    write_recordio,
    write_webdataset,
)
from vigface.evaluation.metrics import dataset_attributes, summary
from vigface.pose import YAW_BINS, total_variation, yaw_bin
from vigface.precision import dtype_name


def gather(parts: list):
    """Accepted records (labels numbered across parts), their images and embeddings, and
    the records of every rejected draw."""
    records, images, embs, rejected = [], [], [], []
    for part in parts:
        r, im, em, rej = part_records(part, first_label=len({x.label for x in records}))
        records += r
        images.append(im)
        embs.append(em)
        rejected += rej
    return records, np.concatenate(images), np.concatenate(embs), rejected


def write_formats(out: Path, formats: list[str], records, images, rejected) -> list:
    """Every format asked for and the manifest; returns (record, JPEG bytes) per image."""
    items = list(zip(records, [encode_jpeg(img) for img in images], strict=True))
    if "imagefolder" in formats:
        write_imagefolder(out / "imagefolder", items)
    if "recordio" in formats:
        write_recordio(out / "recordio", items)
    if "webdataset" in formats:
        write_webdataset(out / "webdataset", items)
    write_manifest(out / "manifest.csv", records + rejected)
    return items


def dataset_card(parts: list, records, labels: np.ndarray) -> dict:
    first, spec = parts[0], parts[0].spec
    return {
        "num_classes": len(set(labels.tolist())),
        "num_image": len(records),
        "image_size": [CROP_SIZE, CROP_SIZE],
        "formats": spec.formats,
        "kind": first.kind,
        "model": first.gen.card.get("name", ""),
        # the whole order: a service job's parts are its shards, each with a slice of it
        "spec": {**spec.model_dump(), "identities": sum(p.spec.identities for p in parts)},
        "sampler": {
            "precision": dtype_name(first.sampler.dtype),
            "compiled": first.sampler.forward is not first.sampler.dit,
        },
        # the side the generator drew at (the files are resized to image_size)
        "resolution": first.sampler.output_size,
    }


def filter_report(first, records, rejected, embs, labels, counts: Counter) -> dict:
    """Thresholds, dataset attributes, own-prototype and real-people cosines, counts."""
    generated = max(counts.get("generated", 0), 1)
    by_pose = first.spec.tau_consistency_by_pose
    return {
        "thresholds": {
            "tau_consistency": first.tau_c,
            "tau_leak": first.tau_leak,
            **({"tau_consistency_by_pose": by_pose} if by_pose else {}),
        },
        "attributes": dataset_attributes(embs, labels),
        "cos_own": summary([r.cos_own for r in records]),
        "leakage": {
            "image_nearest_real": summary([r.nearest_real_cos for r in records]),
            "identity_nearest_real": summary(
                identity_nearest_real(embs, labels, records, first.real, first.kind == "real")
            ),
            "real_nearest_negative": first.gen.card.get("filters", {}).get("real_nearest_negative"),
        },
        "counts": {
            **counts,
            "accepted": len(records),
            "acceptance_rate": round(len(records) / generated, 4),
            "regeneration_rate": round(counts.get("regenerated", 0) / generated, 4),
        },
        "histograms": similarity_histograms(records + rejected),
    }


def write_dataset(
    parts: list,
    out_dir: str | Path,
    outside_gallery: str | None = None,
    context: OrderContext | None = None,
) -> dict:
    """Write the formats, manifest, card and report of the dataset made of ``parts``, and
    its dataset cards (``README.md``, ``croissant.json``) for the order ``context``.

    When the generator's card holds the independent judge's calibration (``judge.real``), the
    report gets the judge's figures for the delivered images beside real people's
    (``outside_gallery``: real descriptors for nearness to real people, optional)."""
    from vigface.dataset.report import write_html_report

    out = Path(out_dir)
    t0 = time.perf_counter()
    first = parts[0]
    records, images, embs, rejected = gather(parts)
    items = write_formats(out, first.spec.formats, records, images, rejected)
    labels = np.array([r.label for r in records])
    card = dataset_card(parts, records, labels)
    write_json(out / "dataset_card.json", card)
    counts, seconds = Counter(), Counter()
    for p in parts:
        counts.update(p.counts)
        seconds.update(p.seconds)
    report = {"dataset": card, **filter_report(first, records, rejected, embs, labels, counts)}
    # the delivered images as decoded from their JPEGs, once, for both outside measurements
    delivered = np.stack(
        [np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")) for _, jpg in items]
    )
    report["pose"] = pose_report(parts) | shown_pose_report(delivered, records, first.gen.card)
    judged = judge_report(delivered, labels, first.gen.card, outside_gallery, card["resolution"])
    if judged is not None:
        report["judge"] = judged
    context = context or local_context(out, card["model"])
    record = delivery_record(report, first.gen.card, context)
    write_dataset_cards(out, record)
    report["provenance"] = {
        "terms": record.terms,
        "model_sha256": context.model_digest,
        "ordered_by": context.ordered_by,
        "ordered_at": context.ordered_at,
        "cards": ["README.md", "croissant.json"],
    }
    write_html_report(out / "report.html", report, out)
    seconds["writing"] += time.perf_counter() - t0
    report["timing"] = {k: round(v, 2) for k, v in seconds.items()}
    report["timing"]["share_outside_sampling"] = round(
        1 - seconds["sampling"] / max(sum(seconds.values()), 1e-9), 4
    )
    write_json(out / "report.json", report)
    return report


def judge_report(
    delivered: np.ndarray, labels, card: dict, gallery: str | None, resolution: int | None = None
) -> dict | None:
    """The independent judge on the images as delivered (decoded JPEGs), or None when the
    model has no calibration at the resolution they were drawn at; an unavailable judge is
    reported, never fatal."""
    from vigface.evaluation.judge import calibration_at

    real = calibration_at(card, resolution)
    if not real or len(set(labels.tolist())) < 2:
        return None
    try:
        from vigface.evaluation.judge import judgement

        return judgement(delivered, labels, real, gallery)
    except Exception as exc:  # noqa: BLE001 - a report without this section beats no dataset
        return {"error": f"independent judge unavailable: {exc}"}


def identity_nearest_real(
    embs: np.ndarray,
    labels: np.ndarray,
    records: list[ImageRecord],
    real: np.ndarray,
    augmentation: bool,
) -> np.ndarray:
    """Each class's largest cosine between its normalised mean embedding and a real prototype
    (another one than its own when augmenting a real class)."""
    num_classes = len(set(labels.tolist()))
    ident = np.stack([embs[labels == c].mean(0) for c in range(num_classes)])
    ident /= np.linalg.norm(ident, axis=1, keepdims=True)
    sims = ident @ real.T
    if augmentation:
        own = {r.label: r.prototype_id for r in records}
        sims[np.arange(num_classes), [own[c] for c in range(num_classes)]] = -2
    return sims.max(1)


def pose_report(parts: list) -> dict:
    """Requested and drawn yaw-bin shares over all parts, and their total variation."""
    first = parts[0]
    drawn_bins = np.concatenate([p.bank.bins[p.plan.pose_idx] for p in parts])
    drawn = np.bincount(drawn_bins, minlength=len(YAW_BINS)) / len(drawn_bins)
    return {
        "bins": YAW_BINS,
        "requested": first.plan.pose_weights.round(4).tolist(),
        "drawn": drawn.round(4).tolist(),
        "total_variation": round(total_variation(drawn, first.plan.pose_weights), 4),
    }


def shown_pose_report(delivered: np.ndarray, records: list[ImageRecord], card: dict) -> dict:
    """The pose the delivered faces *show* (dlib's 68 points on the 112-px crops, a model no
    part of VIGFace trained), per yaw bin and per requested bin, beside what real faces asked
    for each bin show (the card's ``shown_pose_reference``). A report without this section
    beats no dataset: an unavailable measurement is reported, never fatal."""
    try:
        from vigface.evaluation.shown_pose import ShownPose, per_bin

        shown = ShownPose().yaw(delivered)
    except Exception as exc:  # noqa: BLE001
        return {"shown_error": f"shown pose unavailable: {exc}"}
    requested = np.array([r.yaw for r in records])
    counts = np.bincount(yaw_bin(shown), minlength=len(YAW_BINS))
    return {
        "shown": (counts / max(len(shown), 1)).round(4).tolist(),
        "shown_mean_abs_yaw": round(float(np.abs(shown).mean()), 1),
        "shown_by_requested_bin": per_bin(requested, shown)["bins"],
        "real_reference": card.get("shown_pose_reference"),
        "shown_measured_by": "dlib 68-point shape on the delivered 112-px crops",
    }


def similarity_histograms(records: list[ImageRecord], bins: int = 24) -> dict:
    """Counts of own-prototype and nearest-real cosines over every draw, on shared edges that
    span the data (rounded out to 0.05), so no bins are wasted on cosines nobody drew."""
    values = np.array([r.cos_own for r in records] + [r.nearest_real_cos for r in records])
    lo = np.floor(values.min() * 20) / 20 if len(values) else 0.0
    hi = max(np.ceil(values.max() * 20) / 20 if len(values) else 1.0, lo + 0.05)
    edges = np.linspace(lo, hi, bins + 1) + 0.0  # + 0.0: no "-0.0" edge
    return {
        "edges": edges.round(3).tolist(),
        "cos_own": np.histogram([r.cos_own for r in records], edges)[0].tolist(),
        "nearest_real": np.histogram([r.nearest_real_cos for r in records], edges)[0].tolist(),
    }
