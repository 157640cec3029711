"""The records a finished part (a dataset, or one shard of a service job) hands the assembly
step: every accepted image with its label, seed, pose and filter numbers, its pixels and FR
embedding, and a record of every rejected draw (the manifest lists both)."""

from __future__ import annotations

import numpy as np

from vigface.dataset.writers import ImageRecord
from vigface.pose import YAW_BINS
from vigface.sampling import image_seed


def draw_record(part, d: dict, **kw) -> ImageRecord:
    """The record of draw ``d`` (a chunk file's entry) of ``part``."""
    slot, proto, j, attempt = d["slot"], d["proto"], d["index"], d["attempt"]
    pidx = part.plan.pose_row(slot, j)
    name = f"v{proto:06d}" if part.kind == "virtual" else part.gen.fr.classes[proto]
    return ImageRecord(
        identity=name,
        prototype_id=proto,
        prototype_kind=part.kind,
        index=j,
        seed=image_seed(part.spec.seed, proto, j, attempt),
        attempt=attempt,
        landmarks=[float(x) for x in part.bank.landmarks[pidx].reshape(-1)],
        pose_bin=YAW_BINS[part.bank.bins[pidx]],
        yaw=round(float(part.bank.angles[pidx, 0]), 2),
        cos_own=round(d["cos_own"], 5),
        nearest_real_cos=round(d["near"], 5),
        nearest_real_id=d["near_id"],
        **kw,
    )


def part_records(part, first_label: int):
    """Accepted records (labels from ``first_label``), their images and embeddings, and the
    records of every rejected draw, of a part whose chunks are all finished."""
    records, images, embs = [], [], []
    label_of: dict[int, int] = {}
    for c, info in enumerate(part.chunks):
        arrays = part.store.load_arrays(c)
        images.append(arrays["images"])
        embs.append(arrays["emb"])
        for d in info["images"]:
            label = label_of.setdefault(d["slot"], first_label + len(label_of))
            rec = draw_record(part, d, label=label)
            rec.file = f"{rec.identity}/{d['index']}.jpg"
            records.append(rec)
    rejected = [
        draw_record(
            part,
            d,
            label=-1,
            passed_consistency=d["consistency"],
            passed_leakage=d["leakage"],
            passed_face=d.get("face", True),
            accepted=False,
            file="",
        )
        for info in part.chunks
        for d in info.get("rejected", [])
    ]
    return records, np.concatenate(images), np.concatenate(embs), rejected
