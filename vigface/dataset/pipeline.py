"""Turn a generator entry into a dataset: sample, filter, regenerate, replace, write, report.

The work is split into chunks of identities processed in order. Inside a chunk every image
is drawn, embedded with the entry's FR model and judged:

* consistency: ``cos(f(image), own prototype) >= tau_consistency``;
* leakage: ``max cos(f(image), W_R) <= tau_leak`` (plus, when configured, an external gallery
  of real embeddings and an independent ONNX judge model);

a rejected image is drawn again with the next seed (``attempt + 1``) until ``max_attempts``;
an identity with an image that never passes, or whose mean embedding leaks, is dropped and
its slot gets the next free prototype, so the dataset keeps the requested size. A finished
chunk is saved atomically under ``<out>/work/``; a rerun loads finished chunks and continues,
and since every image is a pure function of its seeds the result is byte-identical.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from tqdm import tqdm

from vigface.dataset.metrics import dataset_attributes, nearest_similarity, summary
from vigface.dataset.pose import YAW_BINS, PoseBank, total_variation
from vigface.dataset.spec import DatasetSpec
from vigface.dataset.writers import (
    ImageRecord,
    encode_jpeg,
    write_imagefolder,
    write_json,
    write_manifest,
    write_recordio,
    write_webdataset,
)
from vigface.generator.artifact import Generator
from vigface.precision import dtype_name
from vigface.sampling import ImageRequest, Sampler, image_seed

log = logging.getLogger(__name__)


class NotEnoughPrototypes(ValueError):
    """The model (or the allocation) has fewer free prototypes than the order needs."""


class Canceled(RuntimeError):
    """The caller's cancel check returned True between two sampling batches."""


def thresholds_from_card(card: dict, spec: DatasetSpec) -> tuple[float, float]:
    """(tau_consistency, tau_leak): the spec's values or the defaults stored in the card."""
    filters = card.get("filters", {})
    tau_c = (
        spec.tau_consistency if spec.tau_consistency is not None else filters.get("tau_consistency")
    )
    tau_l = spec.tau_leak if spec.tau_leak is not None else filters.get("tau_leak")
    if tau_c is None or tau_l is None:
        raise ValueError(
            "the model card has no filter defaults (run `vigface calibrate`) and the order "
            "gives no tau_consistency / tau_leak"
        )
    return float(tau_c), float(tau_l)


class DatasetBuilder:
    """Builds one dataset. ``candidates`` are prototype rows in the order they may be used
    (the first ``spec.identities`` fill the slots, the rest replace dropped identities).
    ``slot_images`` gives a per-slot image count (real-identity augmentation fills each class
    up to its own gap); by default every slot gets ``spec.images_per_identity``."""

    def __init__(
        self,
        gen: Generator,
        spec: DatasetSpec,
        out_dir: str | Path,
        candidates: list[int] | None = None,
        slot_images: list[int] | None = None,
        progress: bool = True,
        cancel_check=None,
        on_progress=None,
        compile: bool = False,
        precision: str = "auto",
    ):
        self.gen, self.spec, self.out = gen, spec, Path(out_dir)
        self.work = self.out / "work"
        self.progress, self.cancel_check, self.on_progress = progress, cancel_check, on_progress
        fr = gen.fr
        self.kind = "virtual" if spec.mode == "virtual" else "real"
        self.protos = fr.virtual_prototypes if self.kind == "virtual" else fr.real_prototypes
        total = self.protos.shape[0]
        self.candidates = list(range(total)) if candidates is None else list(candidates)
        if len(self.candidates) < spec.identities:
            raise NotEnoughPrototypes(
                f"identities: asked for {spec.identities}, but only {len(self.candidates)} free "
                f"{self.kind} prototypes are available"
            )
        if any(c < 0 or c >= total for c in self.candidates):
            raise NotEnoughPrototypes(f"candidate prototypes must be rows 0..{total - 1}")
        self.tau_c, self.tau_leak = thresholds_from_card(gen.card, spec)
        self.real = F.normalize(fr.real_prototypes.float().cpu(), dim=1).numpy()
        self.gallery = np.load(spec.gallery, mmap_mode="r") if spec.gallery else None
        self.judge = JudgeModel(spec.judge_onnx, spec.judge_gallery) if spec.judge_onnx else None
        if self.gen.pose_landmarks is None:
            raise ValueError("the generator entry has no pose landmarks (pose_landmarks.npy)")
        self.bank = PoseBank.from_landmarks(gen.pose_landmarks)
        m = spec.images_per_identity
        self.slot_images = list(slot_images) if slot_images else [m] * spec.identities
        if len(self.slot_images) != spec.identities or min(self.slot_images) < 1:
            raise ValueError("slot_images needs one positive count per identity")
        self.offsets = np.concatenate([[0], np.cumsum(self.slot_images)])
        self.pose_idx, self.pose_weights = self.bank.draw(
            spec.pose, int(self.offsets[-1]), spec.seed
        )
        self.sampler = Sampler(
            gen.dit,
            gen.scheduler,
            spec.scheduler,
            spec.steps,
            spec.guidance,
            spec.batch_size,
            compile=compile,
            precision=precision,
        )
        self.chunk = max(1, math.ceil(4 * spec.batch_size / m))
        self.counts: Counter = Counter()
        self.seconds: Counter = Counter()

    # ---- one chunk -------------------------------------------------------------------
    def _judge_images(self, images, slots, protos_of_slot):
        """Embeddings and per-image verdicts for one batch of generated images."""
        emb = self.gen.fr.embed(images, flip=False).numpy()
        own = F.normalize(self.protos[protos_of_slot].float().cpu(), dim=1).numpy()
        cos_own = (emb * own).sum(1)
        sims = emb @ self.real.T
        if self.kind == "real":  # augmenting a real class: its own row is not a leak
            sims[np.arange(len(emb)), protos_of_slot] = -2
        near_id, near = sims.argmax(1), sims.max(1)
        leak = near > self.tau_leak
        if self.gallery is not None:
            g_best, _ = nearest_similarity(emb, self.gallery)
            leak |= g_best > self.tau_leak
        if self.judge is not None:
            leak |= self.judge.nearest(images) > self.spec.judge_threshold
        if self.kind == "real":
            leak[:] = False  # leakage filter is off by construction in augmentation mode
        ok_c = cos_own >= self.tau_c
        return emb, cos_own, near, near_id, ok_c, ~leak

    def _run_chunk(self, slots: list[int], queue_pos: int) -> dict:
        spec = self.spec
        proto = {s: self.candidates[s] for s in slots}
        attempt = {(s, j): 0 for s in slots for j in range(self.slot_images[s])}
        dropped: list[int] = []
        rejected: list[dict] = []  # every draw that did not make it, with the reason
        done: dict[tuple[int, int], dict] = {}
        checked: set[tuple[int, int]] = set()
        while True:
            pending = [key for key in attempt if key not in done]
            if not pending:
                break
            reqs = [
                ImageRequest(
                    self.protos[proto[s]].cpu().numpy(),
                    self.bank.landmarks[self.pose_idx[self.offsets[s] + j]],
                    image_seed(spec.seed, proto[s], j, attempt[(s, j)]),
                )
                for s, j in pending
            ]
            results = []
            t0 = time.perf_counter()
            for batch, imgs in self.sampler.stream(reqs):
                results.append(imgs)
                if self.cancel_check is not None and self.cancel_check():
                    raise Canceled("canceled between sampling batches")
                if self.on_progress:
                    self.on_progress("sampled", len(batch))
            self.seconds["sampling"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            images = np.concatenate(results)
            emb, cos_own, near, near_id, ok_c, ok_l = self._judge_images(
                images, [s for s, _ in pending], np.array([proto[s] for s, _ in pending])
            )
            self.counts["generated"] += len(pending)
            failed_slots = set()
            for i, (s, j) in enumerate(pending):
                self.counts["rejected_consistency"] += int(not ok_c[i])
                self.counts["rejected_leakage"] += int(not ok_l[i])
                if ok_c[i] and ok_l[i]:
                    done[(s, j)] = {
                        "image": images[i],
                        "emb": emb[i],
                        "cos_own": float(cos_own[i]),
                        "near": float(near[i]),
                        "near_id": int(near_id[i]),
                        "attempt": attempt[(s, j)],
                    }
                    continue
                rejected.append(
                    {
                        "slot": s,
                        "proto": proto[s],
                        "index": j,
                        "attempt": attempt[(s, j)],
                        "cos_own": float(cos_own[i]),
                        "near": float(near[i]),
                        "near_id": int(near_id[i]),
                        "consistency": bool(ok_c[i]),
                        "leakage": bool(ok_l[i]),
                        "reason": "image_filter",
                    }
                )
                if attempt[(s, j)] + 1 < spec.max_attempts:
                    attempt[(s, j)] += 1
                    self.counts["regenerated"] += 1
                else:
                    failed_slots.add(s)
            # identity-level leakage: the mean embedding of each newly finished identity
            for s in proto:
                n_s = self.slot_images[s]
                finished = all((s, j) in done for j in range(n_s))
                if s in failed_slots or not finished or (s, proto[s]) in checked:
                    continue
                checked.add((s, proto[s]))
                if self.kind == "virtual" and self._identity_leaks(
                    [done[(s, j)]["emb"] for j in range(n_s)]
                ):
                    self.counts["identities_dropped_leakage"] += 1
                    failed_slots.add(s)
            for s in sorted(failed_slots):
                self.counts["identities_dropped"] += 1
                for j in range(self.slot_images[s]):
                    kept = done.pop((s, j), None)
                    if kept is not None:  # passed alone, discarded with its identity
                        rejected.append(
                            {
                                "slot": s,
                                "proto": proto[s],
                                "index": j,
                                "attempt": kept["attempt"],
                                "cos_own": kept["cos_own"],
                                "near": kept["near"],
                                "near_id": kept["near_id"],
                                "consistency": True,
                                "leakage": True,
                                "reason": "identity_dropped",
                            }
                        )
                    attempt.pop((s, j), None)
                if self.kind == "real":  # a real class cannot be swapped for another one
                    del proto[s]
                    dropped.append(s)
                    continue
                if queue_pos >= len(self.candidates):
                    raise NotEnoughPrototypes(
                        f"ran out of free {self.kind} prototypes replacing dropped identities "
                        f"({self.counts['identities_dropped']} dropped)"
                    )
                proto[s] = self.candidates[queue_pos]
                queue_pos += 1
                self.counts["identities_replaced"] += 1
                for j in range(self.slot_images[s]):
                    attempt[(s, j)] = 0
            self.seconds["filtering"] += time.perf_counter() - t0
        return {
            "proto": proto,
            "done": done,
            "queue_pos": queue_pos,
            "dropped": dropped,
            "rejected": rejected,
        }

    def _identity_leaks(self, embs: list[np.ndarray]) -> bool:
        mean = np.mean(embs, axis=0)
        mean /= max(np.linalg.norm(mean), 1e-12)
        return float((self.real @ mean).max()) > self.tau_leak

    # ---- persistence of chunks ----------------------------------------------------------
    def _chunk_paths(self, c: int) -> tuple[Path, Path]:
        return self.work / f"chunk_{c:05d}.npz", self.work / f"chunk_{c:05d}.json"

    def _save_chunk(self, c: int, slots, res) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        slots = [s for s in slots if s in res["proto"]]
        keys = [(s, j) for s in slots for j in range(self.slot_images[s])]
        npz, meta = self._chunk_paths(c)
        tmp = npz.with_name(npz.stem + ".tmp.npz")
        size, dim = self.gen.dit.config.sample_size, self.protos.shape[1]
        np.savez(
            tmp,
            images=np.stack([res["done"][k]["image"] for k in keys])
            if keys
            else np.zeros((0, size, size, 3), np.uint8),
            emb=np.stack([res["done"][k]["emb"] for k in keys])
            if keys
            else np.zeros((0, dim), np.float32),
        )
        os.replace(tmp, npz)
        info = {
            "slots": slots,
            "proto": {str(s): p for s, p in res["proto"].items()},
            "queue_pos": res["queue_pos"],
            "dropped": res["dropped"],
            "rejected": res["rejected"],
            "counts": dict(self.counts),
            "seconds": dict(self.seconds),
            "images": [
                {k2: v for k2, v in res["done"][k].items() if k2 not in ("image", "emb")}
                for k in keys
            ],
        }
        write_json(meta, info)

    def generate(self) -> list[dict]:
        """Draw and judge every chunk (finished chunks are loaded, not redrawn)."""
        spec = self.spec
        n_chunks = math.ceil(spec.identities / self.chunk)
        queue_pos = spec.identities
        self.chunks = []
        bar = tqdm(
            total=int(self.offsets[-1]), desc="generate", unit="img", disable=not self.progress
        )
        for c in range(n_chunks):
            slots = list(range(c * self.chunk, min(spec.identities, (c + 1) * self.chunk)))
            npz, meta = self._chunk_paths(c)
            if not (npz.is_file() and meta.is_file()):
                res = self._run_chunk(slots, queue_pos)
                self._save_chunk(c, slots, res)
            info = json.loads(meta.read_text())
            self.counts, self.seconds = Counter(info["counts"]), Counter(info["seconds"])
            queue_pos = info["queue_pos"]
            self.chunks.append(info)
            bar.update(sum(self.slot_images[s] for s in slots))
            if self.on_progress:
                self.on_progress("identities_done", len(slots))
        bar.close()
        return self.chunks

    def run(self) -> dict:
        """Generate, then write the dataset and its report into ``out_dir``."""
        self.generate()
        return write_dataset([self], self.out)

    def _record(self, slot: int, proto: int, j: int, attempt: int, verdict: dict, **kw):
        pidx = self.pose_idx[self.offsets[slot] + j]
        name = f"v{proto:06d}" if self.kind == "virtual" else self.gen.fr.classes[proto]
        return ImageRecord(
            identity=name,
            prototype_id=proto,
            prototype_kind=self.kind,
            index=j,
            seed=image_seed(self.spec.seed, proto, j, attempt),
            attempt=attempt,
            landmarks=[float(x) for x in self.bank.landmarks[pidx].reshape(-1)],
            pose_bin=YAW_BINS[self.bank.bins[pidx]],
            yaw=round(float(self.bank.angles[pidx, 0]), 2),
            cos_own=round(verdict["cos_own"], 5),
            nearest_real_cos=round(verdict["near"], 5),
            nearest_real_id=verdict["near_id"],
            **kw,
        )

    def records(self, first_label: int):
        """Accepted records (labels from ``first_label``), their images and embeddings, the
        slot of each, and the records of every rejected draw."""
        records, images, embs, slots = [], [], [], []
        label_of: dict[int, int] = {}
        for c, info in enumerate(self.chunks):
            arrays = np.load(self._chunk_paths(c)[0])
            images.append(arrays["images"])
            embs.append(arrays["emb"])
            keys = [(s, j) for s in info["slots"] for j in range(self.slot_images[s])]
            for (s, j), v in zip(keys, info["images"], strict=True):
                p = info["proto"][str(s)]
                label = label_of.setdefault(s, first_label + len(label_of))
                name = f"v{p:06d}" if self.kind == "virtual" else self.gen.fr.classes[p]
                records.append(
                    self._record(s, p, j, v["attempt"], v, label=label, file=f"{name}/{j}.jpg")
                )
                slots.append(label)
        rejected = [
            self._record(
                r["slot"],
                r["proto"],
                r["index"],
                r["attempt"],
                r,
                label=-1,
                passed_consistency=r["consistency"],
                passed_leakage=r["leakage"],
                accepted=False,
                file="",
            )
            for info in self.chunks
            for r in info.get("rejected", [])
        ]
        return records, np.concatenate(images), np.concatenate(embs), rejected


def write_dataset(parts: list[DatasetBuilder], out_dir: str | Path) -> dict:
    """Write the formats, manifest, card and report of one dataset made of one or more parts
    (the shards of a service job, in order; labels continue from part to part)."""
    out = Path(out_dir)
    t0 = time.perf_counter()
    first, spec = parts[0], parts[0].spec
    records, images, embs, rejected = [], [], [], []
    for part in parts:
        r, im, em, rej = part.records(first_label=len({x.label for x in records}))
        records += r
        images.append(im)
        embs.append(em)
        rejected += rej
    images, embs = np.concatenate(images), np.concatenate(embs)
    items = list(zip(records, [encode_jpeg(img) for img in images], strict=True))
    if "imagefolder" in spec.formats:
        write_imagefolder(out / "imagefolder", items)
    if "recordio" in spec.formats:
        write_recordio(out / "recordio", items)
    if "webdataset" in spec.formats:
        write_webdataset(out / "webdataset", items)
    write_manifest(out / "manifest.csv", records + rejected)
    labels = np.array([r.label for r in records])
    num_classes = len(set(labels.tolist()))
    card = {
        "num_classes": num_classes,
        "num_image": len(records),
        "image_size": [112, 112],
        "formats": spec.formats,
        "kind": first.kind,
        "model": first.gen.card.get("name", ""),
        "spec": spec.model_dump(),
        "sampler": {
            "precision": dtype_name(first.sampler.dtype),
            "compiled": first.sampler.forward is not first.sampler.dit,
        },
    }
    write_json(out / "dataset_card.json", card)
    # identity means: the identity-level leakage distribution
    ident = np.stack([embs[labels == c].mean(0) for c in range(num_classes)])
    ident /= np.linalg.norm(ident, axis=1, keepdims=True)
    sims = ident @ first.real.T
    if first.kind == "real":  # distance to *other* real identities
        own = {r.label: r.prototype_id for r in records}
        sims[np.arange(num_classes), [own[c] for c in range(num_classes)]] = -2
    drawn_bins = np.concatenate([p.bank.bins[p.pose_idx] for p in parts])
    drawn = np.bincount(drawn_bins, minlength=len(YAW_BINS)) / len(drawn_bins)
    counts, seconds = Counter(), Counter()
    for p in parts:
        counts.update(p.counts)
        seconds.update(p.seconds)
    generated = max(counts.get("generated", 0), 1)
    report = {
        "dataset": card,
        "thresholds": {"tau_consistency": first.tau_c, "tau_leak": first.tau_leak},
        "attributes": dataset_attributes(embs, labels),
        "cos_own": summary([r.cos_own for r in records]),
        "leakage": {
            "image_nearest_real": summary([r.nearest_real_cos for r in records]),
            "identity_nearest_real": summary(sims.max(1)),
            "real_nearest_negative": first.gen.card.get("filters", {}).get("real_nearest_negative"),
        },
        "counts": {
            **counts,
            "accepted": len(records),
            "acceptance_rate": round(len(records) / generated, 4),
            "regeneration_rate": round(counts.get("regenerated", 0) / generated, 4),
        },
        "histograms": similarity_histograms(records + rejected),
        "pose": {
            "bins": YAW_BINS,
            "requested": first.pose_weights.round(4).tolist(),
            "drawn": drawn.round(4).tolist(),
            "total_variation": round(total_variation(drawn, first.pose_weights), 4),
        },
    }
    from vigface.dataset.report import write_html_report

    write_html_report(out / "report.html", report, out)
    seconds["writing"] += time.perf_counter() - t0
    report["timing"] = {k: round(v, 2) for k, v in seconds.items()}
    report["timing"]["share_outside_sampling"] = round(
        1 - seconds["sampling"] / max(sum(seconds.values()), 1e-9), 4
    )
    write_json(out / "report.json", report)
    return report


def similarity_histograms(records: list[ImageRecord], bins: int = 24) -> dict:
    """Counts of own-prototype and nearest-real cosines over every draw, on shared edges."""
    edges = np.linspace(-0.2, 1.0, bins + 1)
    return {
        "edges": edges.round(3).tolist(),
        "cos_own": np.histogram([r.cos_own for r in records], edges)[0].tolist(),
        "nearest_real": np.histogram([r.nearest_real_cos for r in records], edges)[0].tolist(),
    }


def real_augment_plan(gen: Generator, real_data: str | Path, target: int):
    """Real-identity augmentation (the paper's +0.92 case): every real training class with
    fewer than ``target`` images gets ``target - count`` generated images from its own
    prototype. Returns ``(prototype rows, images per row)``."""
    from vigface.data import AlignedFaceFolder

    ds = AlignedFaceFolder.scan(real_data)
    counts = Counter(s.label for s in ds.samples)
    row_of = {name: i for i, name in enumerate(gen.fr.classes)}
    rows, gaps = [], []
    for label, name in enumerate(ds.classes):
        if name in row_of and counts[label] < target:
            rows.append(row_of[name])
            gaps.append(target - counts[label])
    return rows, gaps


class JudgeModel:
    """An independent FR model (insightface ONNX, loaded by ``insightface.model_zoo``) with its
    own gallery of real embeddings: a second opinion on leakage that does not share the
    generator's FR model and its blind spots."""

    def __init__(self, onnx_path: str, gallery_npy: str):
        import insightface

        self.model = insightface.model_zoo.get_model(onnx_path, providers=["CPUExecutionProvider"])
        if self.model is None or type(self.model).__name__ != "ArcFaceONNX":
            raise ValueError(f"judge_onnx: {onnx_path} is not a recognition model")
        self.gallery = np.load(gallery_npy, mmap_mode="r")

    def embed(self, images: np.ndarray) -> np.ndarray:
        from PIL import Image

        crops = [
            np.asarray(Image.fromarray(im).resize((112, 112), Image.BICUBIC))[:, :, ::-1]
            for im in images
        ]  # insightface takes OpenCV BGR crops
        return self.model.get_feat(crops)

    def nearest(self, images: np.ndarray) -> np.ndarray:
        return nearest_similarity(self.embed(images), self.gallery)[0]
