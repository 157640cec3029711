"""Turn a generator entry into a dataset: draw, judge, redraw, replace, write, report.

The paper's procedure, chunk by chunk of identities (``DatasetBuilder._run_chunk``):

1. draw every pending image of the chunk for its slot's prototype and pose (batched CFG);
2. embed each image with the entry's FR model and judge it (``vigface/dataset/filters.py``);
3. a rejected image is drawn again with the next seed (``attempt + 1``) up to
   ``max_attempts``; after that its identity is dropped;
4. an identity whose images all passed is judged once more on its mean embedding;
5. a dropped identity's slot takes the next free prototype (a spare) and starts over.

A finished chunk is saved atomically (``vigface/dataset/chunks.py``); a rerun loads finished
chunks and continues, and since every image is a pure function of its seeds the result is
byte-identical. ``write_dataset`` (``vigface/dataset/assembly.py``) then writes the formats
and the report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vigface.dataset.assembly import write_dataset
from vigface.dataset.chunks import (
    IDENTITY_DROPPED,
    IMAGE_FILTER,
    Accepted,
    ChunkResult,
    ChunkStore,
    Draw,
)
from vigface.dataset.filters import DatasetFilter, LeakageJudge
from vigface.dataset.planning import NotEnoughPrototypes, plan_slots
from vigface.dataset.spec import ResolvedSpec
from vigface.generator.artifact import Generator
from vigface.pose import YAW_BINS
from vigface.sampling import ImageRequest, Sampler, image_seed

__all__ = ["Canceled", "DatasetBuilder", "NotEnoughPrototypes", "write_dataset"]

log = logging.getLogger(__name__)


def draw_key(d: Draw) -> str:
    """What decides a draw's image: its slot (the pose), prototype, index and seed attempt."""
    return f"{d.slot}:{d.proto}:{d.index}:{d.attempt}"


class Canceled(RuntimeError):
    """The caller's cancel check returned True between two sampling batches."""


class DatasetBuilder:
    """Builds one dataset (or one shard of a service job). ``candidates`` are prototype rows in
    the order they may be used (see ``vigface/dataset/planning.py``); ``slot_images`` gives a
    per-slot image count (real-identity augmentation fills each class up to its own gap)."""

    def __init__(
        self,
        gen: Generator,
        spec: ResolvedSpec,
        out_dir: str | Path,
        candidates: list[int] | None = None,
        slot_images: list[int] | None = None,
        progress: bool = True,
        cancel_check=None,
        on_progress=None,
        compile: bool = False,
        precision: str = "auto",
        interrupt=None,
    ):
        if not isinstance(spec, ResolvedSpec):
            raise TypeError(
                "DatasetBuilder runs a ResolvedSpec: resolve the order against the model card "
                "first (vigface.dataset.spec.resolve_spec)"
            )
        self.gen, self.spec, self.out = gen, spec, Path(out_dir)
        self.work = self.out / "work"
        self.store = ChunkStore(self.work)
        self.progress, self.cancel_check, self.on_progress = progress, cancel_check, on_progress
        fr = gen.fr
        self.kind = "virtual" if spec.mode == "virtual" else "real"
        self.protos = fr.virtual_prototypes if self.kind == "virtual" else fr.real_prototypes
        if self.gen.pose_landmarks is None:
            raise ValueError("the generator entry has no pose landmarks (pose_landmarks.npy)")
        if spec.upsample and gen.upsampler is None:
            raise ValueError("upsample: this generator has no upsampler (upsampler/)")
        self.bank = gen.pose_bank
        self.plan = plan_slots(
            self.bank,
            spec.pose,
            spec.seed,
            spec.identities,
            spec.images_per_identity,
            self.protos.shape[0],
            self.kind,
            candidates,
            slot_images,
        )
        self.tau_c, self.tau_leak = spec.tau_consistency, spec.tau_leak
        judge = None
        if spec.leakage_judge_onnx:
            judge = LeakageJudge(
                spec.leakage_judge_onnx, spec.leakage_judge_gallery, spec.leakage_judge_threshold
            )
        self.filter = DatasetFilter(
            fr.real_prototypes.float().cpu().numpy(),
            self.tau_c,
            self.tau_leak,
            gallery=np.load(spec.gallery, mmap_mode="r") if spec.gallery else None,
            judge=judge,
            augmentation=self.kind == "real",
            tau_consistency_by_pose=spec.tau_consistency_by_pose,
            face_gate=spec.face_gate,
        )
        self.detector = None
        if spec.face_gate:
            from vigface.evaluation.image_quality import FaceDetector

            self.detector = FaceDetector()
        self.sampler = Sampler.for_generator(
            gen, spec, spec.batch_size, compile=compile, precision=precision
        )
        # set (a worker shutting down): the batch under way stops at its next step, the
        # batches before it stay saved (vigface.sampling.SamplingInterrupted)
        self.sampler.interrupt = interrupt
        self.chunk = max(1, math.ceil(4 * spec.batch_size / spec.images_per_identity))
        self.counts: Counter = Counter()
        self.seconds: Counter = Counter()
        self._accepted_before = 0  # images of the chunks finished so far (progress reports)
        self.queue_pos: int | None = None  # next unused candidate, once generate() has run
        self._negatives: dict[int, np.ndarray] = {}

    # what the assembly step reads of a part
    @property
    def candidates(self) -> list[int]:
        return self.plan.candidates

    @property
    def slot_images(self) -> list[int]:
        return self.plan.slot_images

    @property
    def real(self) -> np.ndarray:
        return self.filter.real

    # ---- one chunk -------------------------------------------------------------------
    def _draw_images(self, pending: list[Draw], c: int, drawn: dict) -> np.ndarray:
        """Step 1: one image per pending draw, batched, checking for cancel between batches.
        ``drawn`` holds the draws of chunk ``c`` that an earlier run of it already sampled
        (each image is a pure function of its draw, so they are not drawn again); every new
        batch is added to it and saved."""
        todo = [d for d in pending if draw_key(d) not in drawn]
        reqs = [
            ImageRequest(
                self.protos[d.proto].cpu().numpy(),
                self.bank.landmarks[self.plan.pose_row(d.slot, d.index)],
                image_seed(self.spec.seed, d.proto, d.index, d.attempt),
                self.negative(d.proto),
            )
            for d in todo
        ]
        t0 = time.perf_counter()
        done = 0
        for batch, imgs in self.sampler.stream(reqs):
            keys = [draw_key(d) for d in todo[done : done + len(batch)]]
            done += len(batch)
            self.store.save_draws(c, keys, imgs)
            drawn.update(zip(keys, imgs, strict=True))
            if self.on_progress:
                self.on_progress("sampled", len(batch))
            if self.cancel_check is not None and self.cancel_check():
                raise Canceled("canceled between sampling batches")
        self.seconds["sampling"] += time.perf_counter() - t0
        return np.stack([drawn[draw_key(d)] for d in pending])

    def negative(self, proto: int) -> np.ndarray | None:
        """The condition a draw of ``proto`` is guided away from: the mean of its
        ``negative_neighbours`` nearest other prototypes (NegFaceDiff), or None."""
        k = self.spec.negative_neighbours
        if not k:
            return None
        if proto not in self._negatives:
            unit = self.protos.float() / self.protos.float().norm(dim=1, keepdim=True)
            cos = unit @ unit[proto]
            cos[proto] = -2.0
            near = cos.topk(min(k, len(cos) - 1)).indices
            self._negatives[proto] = unit[near].mean(0).cpu().numpy()
        return self._negatives[proto]

    def _verdicts(self, images: np.ndarray, pending: list[Draw]):
        """Step 2: FR embeddings and the filters' verdicts for one round of draws."""
        emb = self.gen.fr.embed(images, flip=False).numpy()
        rows = np.array([d.proto for d in pending])
        own = self.protos[rows].float().cpu().numpy()
        judge = self.filter.judge
        judge_emb = judge.embed(images) if judge is not None else None
        bins = [YAW_BINS[self.bank.bins[self.plan.pose_row(d.slot, d.index)]] for d in pending]
        face = None
        if self.detector is not None:
            face = [d.well_placed for d in self.detector.detect_all(images)]
        return emb, self.filter.image_verdicts(emb, own, rows, judge_emb, bins, face)

    def _run_chunk(self, c: int, slots: list[int], queue_pos: int) -> ChunkResult:
        res = ChunkResult(
            proto={s: self.candidates[s] for s in slots}, accepted={}, queue_pos=queue_pos
        )
        drawn = self.store.load_draws(c)
        attempt = {(s, j): 0 for s in slots for j in range(self.slot_images[s])}
        checked: set[tuple[int, int]] = set()  # (slot, prototype) pairs judged as identities
        while pending := [
            Draw(s, res.proto[s], j, attempt[(s, j)])
            for (s, j) in attempt
            if (s, j) not in res.accepted
        ]:
            images = self._draw_images(pending, c, drawn)
            t0 = time.perf_counter()
            emb, verdicts = self._verdicts(images, pending)
            self.counts["generated"] += len(pending)
            self.counts.update(verdicts.counts())
            failed: set[int] = set()
            for i, d in enumerate(pending):  # step 3: accept, redraw, or give the identity up
                d.cos_own = float(verdicts.cos_own[i])
                d.near = float(verdicts.nearest_real[i])
                d.near_id = int(verdicts.nearest_real_id[i])
                d.consistency = bool(verdicts.consistent[i])
                d.leakage = bool(verdicts.no_leak[i])
                d.face = bool(verdicts.face[i])
                if verdicts.passed[i]:
                    res.accepted[(d.slot, d.index)] = Accepted(d, images[i], emb[i])
                    continue
                d.reason = IMAGE_FILTER
                res.rejected.append(d)
                if d.attempt + 1 < self.spec.max_attempts:
                    attempt[(d.slot, d.index)] += 1
                    self.counts["regenerated"] += 1
                else:
                    failed.add(d.slot)
            failed |= self._identity_check(res, failed, checked)  # step 4
            for s in sorted(failed):  # step 5
                self._drop_identity(res, s, attempt)
            self.seconds["filtering"] += time.perf_counter() - t0
            if self.on_progress:  # kept images so far: redraws and dropped identities count 0
                self.on_progress("accepted", self._accepted_before + len(res.accepted))
        return res

    def _identity_check(self, res: ChunkResult, failed: set[int], checked: set) -> set[int]:
        """Slots whose newly completed identity leaks on its mean embedding."""
        leaking = set()
        for s, p in res.proto.items():
            complete = all((s, j) in res.accepted for j in range(self.slot_images[s]))
            if s in failed or not complete or (s, p) in checked:
                continue
            checked.add((s, p))
            embs = [res.accepted[(s, j)].emb for j in range(self.slot_images[s])]
            if self.filter.identity_leaks(np.stack(embs)):
                self.counts["identities_dropped_leakage"] += 1
                leaking.add(s)
        return leaking

    def _drop_identity(self, res: ChunkResult, s: int, attempt: dict) -> None:
        """Discard slot ``s``'s images and give it the next spare prototype."""
        self.counts["identities_dropped"] += 1
        for j in range(self.slot_images[s]):
            kept = res.accepted.pop((s, j), None)
            if kept is not None:  # passed alone, discarded with its identity
                kept.draw.reason = IDENTITY_DROPPED
                res.rejected.append(kept.draw)
            attempt.pop((s, j), None)
        if self.kind == "real":  # a real class cannot be swapped for another one
            del res.proto[s]
            res.dropped.append(s)
            return
        if res.queue_pos >= len(self.candidates):
            raise NotEnoughPrototypes(self._exhausted_message())
        res.proto[s] = self.candidates[res.queue_pos]
        res.queue_pos += 1
        self.counts["identities_replaced"] += 1
        for j in range(self.slot_images[s]):
            attempt[(s, j)] = 0

    def _exhausted_message(self) -> str:
        c = self.counts
        spares = len(self.candidates) - self.spec.identities
        return (
            f"ran out of spare {self.kind} prototypes: {c['identities_dropped']} identities "
            f"dropped with {spares} spares. Of {c['generated']} images drawn, "
            f"{c['rejected_consistency']} failed consistency and {c['rejected_leakage']} "
            f"leakage (prototypes {c['rejected_leakage_prototypes']}, gallery "
            f"{c['rejected_leakage_gallery']}, judge {c['rejected_leakage_judge']}), "
            f"{c['rejected_face']} showed no well-placed face; "
            f"{c['identities_dropped_leakage']} identities leaked on their mean embedding. "
            f"Filters: {self.filter.describe()}"
        )

    # ---- the whole dataset ----------------------------------------------------------------
    def draw_settings(self) -> dict:
        """What decides the draws of ``work/``'s chunks: the spec (its output formats aside),
        the thresholds in force and the prototypes this builder may use."""
        candidates = hashlib.sha256(json.dumps([int(p) for p in self.candidates]).encode())
        return {
            **self.spec.model_dump(mode="json", exclude={"formats"}),
            "tau_consistency": float(self.tau_c),
            "tau_leak": float(self.tau_leak),
            **(
                {"tau_consistency_by_pose": self.spec.tau_consistency_by_pose}
                if self.spec.tau_consistency_by_pose
                else {}
            ),
            "candidates": candidates.hexdigest()[:16],
        }

    def generate(self) -> list[dict]:
        """Draw and judge every chunk (finished chunks are loaded, not redrawn)."""
        spec = self.spec
        self.store.claim(self.draw_settings())
        n_chunks = math.ceil(spec.identities / self.chunk)
        queue_pos = spec.identities
        self.chunks = []
        bar = tqdm(total=self.plan.images, desc="generate", unit="img", disable=not self.progress)
        self._accepted_before = 0
        for c in range(n_chunks):
            slots = list(range(c * self.chunk, min(spec.identities, (c + 1) * self.chunk)))
            if not self.store.is_done(c):
                res = self._run_chunk(c, slots, queue_pos)
                self.store.save(
                    c,
                    slots,
                    res,
                    self.slot_images,
                    self.sampler.output_size,
                    self.protos.shape[1],
                    self.counts,
                    self.seconds,
                )
                self.store.clear_draws(c)
            info = self.store.load_info(c)
            self.counts, self.seconds = Counter(info["counts"]), Counter(info["seconds"])
            queue_pos = info["queue_pos"]
            self.chunks.append(info)
            bar.update(sum(self.slot_images[s] for s in slots))
            self._accepted_before += sum(self.slot_images[s] for s in slots)
            if self.on_progress:
                self.on_progress("accepted", self._accepted_before)
                self.on_progress("identities_done", len(slots))
        bar.close()
        self.queue_pos = queue_pos
        return self.chunks

    @property
    def unused_spares(self) -> list[int]:
        """The spare prototypes no dropped identity took, once :meth:`generate` has run. A
        chunk is saved with its queue position and a rerun replays the same replacements, so
        no image of these is in any saved chunk: the service can sell them again."""
        if self.queue_pos is None:
            raise RuntimeError("unused_spares is known once generate() has run")
        if self.kind != "virtual":
            return []
        return [int(p) for p in self.candidates[self.queue_pos :]]

    def run(self) -> dict:
        """Generate, then write the dataset and its report into ``out_dir``."""
        self.generate()
        return write_dataset([self], self.out)
