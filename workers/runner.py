"""Running a shard and finalizing a job: the work behind both the Celery tasks and the
embedded worker thread. The database decides what runs; a task only names a shard.

A shard is idempotent: its chunks are keyed by (job, shard, chunk) on the local work disk and
written atomically, so a shard that runs twice (a worker killed mid-shard, a lease that
expired) skips what is finished and writes the same bytes again for the rest. A finished
shard's chunks are copied to the object store (``work/<job>/shard_NNNNN/``) so that the
finalize step can run on any machine.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from model_store.loader import load_generator
from model_store.storage import open_store, put_dir, retrying
from vigface.dataset.pipeline import Canceled, DatasetBuilder, write_dataset
from vigface.dataset.spec import DatasetSpec
from workers.db.models import Job, JobStatus, Shard, ShardStatus, utcnow
from workers.ledger import release_unstarted
from workers.settings import Settings
from workers.webhooks import notify

log = logging.getLogger(__name__)
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


def worker_stats(img_per_s: float) -> dict:
    """Throughput and accelerator memory of this worker process, for the job record."""
    import torch

    stats = {
        "img_per_s": round(img_per_s, 3),
        "device": "cpu",
        "gpu_mem_mb": 0.0,
        "updated_at": utcnow().isoformat(),
    }
    if torch.cuda.is_available():
        stats["device"] = torch.cuda.get_device_name()
        stats["gpu_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return stats


def load_model(settings: Settings, name: str):
    """The process-wide cached generator ``name``, pulled from storage if not local. Every
    caller passes the same arguments, so the API and the worker share one cached copy."""
    return load_generator(
        name, settings.storage_url, settings.s3_endpoint_url, str(settings.model_cache)
    )


def _shard_builder(settings: Settings, job: Job, shard: Shard, **kw) -> DatasetBuilder:
    spec = DatasetSpec.model_validate(job.spec).model_copy(
        update={
            "identities": shard.slot_end - shard.slot_start,
            "seed": job.spec["seed"] + shard.index,
            # the deployment's independent judge, if it has one (VIGFACE_JUDGE_*)
            "judge_onnx": settings.judge_onnx,
            "judge_gallery": settings.judge_gallery,
            "judge_threshold": settings.judge_threshold,
        }
    )
    out = Path(settings.work_dir) / job.id / f"shard_{shard.index:05d}"
    gen = load_model(settings, job.model)
    if job.prototype_set and gen.card["prototype_set"] != job.prototype_set:
        raise ValueError(
            f"model {job.model!r} holds other virtual prototypes than when the job was "
            "ordered (the ledger sold the old ones); order again"
        )
    return DatasetBuilder(
        gen,
        spec,
        out,
        candidates=shard.prototypes,
        progress=False,
        compile=settings.sampler_compile,
        precision=settings.sampler_precision,
        **kw,
    )


def _shard_key(job_id: str, index: int) -> str:
    return f"work/{job_id}/shard_{index:05d}"


def renew_shard_lease(sessions: sessionmaker, settings: Settings, shard_id: int) -> None:
    """The heartbeat: a shard at work pushes its lease ``lease_seconds`` ahead."""
    with sessions() as db:
        db.execute(
            update(Shard)
            .where(Shard.id == shard_id)
            .values(lease_expires_at=utcnow() + timedelta(seconds=settings.lease_seconds))
        )
        db.commit()


def renew_finalize_lease(sessions: sessionmaker, settings: Settings, job_id: str) -> None:
    with sessions() as db:
        db.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.FINALIZING)
            .values(finalize_expires_at=utcnow() + timedelta(seconds=settings.lease_seconds))
        )
        db.commit()


def claim_shard(db: Session, settings: Settings, shard_id: int) -> bool:
    """Take the lease of a queued (or expired) shard; False if someone else holds it."""
    now = utcnow()
    res = db.execute(
        update(Shard)
        .where(
            Shard.id == shard_id,
            or_(
                Shard.status == ShardStatus.QUEUED,
                (Shard.status == ShardStatus.RUNNING) & (Shard.lease_expires_at < now),
            ),
        )
        .values(
            status=ShardStatus.RUNNING,
            worker=WORKER_ID,
            attempts=Shard.attempts + 1,
            lease_expires_at=now + timedelta(seconds=settings.lease_seconds),
        )
    )
    db.commit()
    return res.rowcount == 1


def run_shard(sessions: sessionmaker, settings: Settings, shard_id: int) -> str:
    """Generate one shard; finalize the job when it was the last. Returns the shard status."""
    with sessions() as db:
        shard = db.get(Shard, shard_id)
        if shard is None:
            return "missing"
        job = shard.job
        if job.status in (JobStatus.CANCELED, JobStatus.FAILED):
            shard.status = ShardStatus.CANCELED
            db.commit()
            return shard.status
        if not claim_shard(db, settings, shard_id):
            return "busy"
        db.refresh(shard)
        if job.status == JobStatus.QUEUED:
            job.status, job.started_at = JobStatus.RUNNING, utcnow()
            db.commit()

        def canceled() -> bool:
            with sessions() as check:
                return bool(check.scalar(select(Job.cancel_requested).where(Job.id == job.id)))

        started = time.perf_counter()
        sampled_here = 0

        def progress(stage: str, n: int) -> None:
            nonlocal sampled_here
            with sessions() as upd:
                j = upd.get(Job, job.id)
                prog = {**(j.progress or {}), stage: (j.progress or {}).get(stage, 0) + n}
                if stage == "sampled":
                    j.images_done = min(j.images_requested, j.images_done + n)
                    sampled_here += n
                    prog["workers"] = {
                        **prog.get("workers", {}),
                        WORKER_ID: worker_stats(
                            sampled_here / max(time.perf_counter() - started, 1e-6)
                        ),
                    }
                prog["updated_at"] = utcnow().isoformat()
                j.progress = prog
                s = upd.get(Shard, shard_id)
                s.lease_expires_at = utcnow() + timedelta(seconds=settings.lease_seconds)
                upd.commit()

        try:
            t0 = time.perf_counter()
            builder = _shard_builder(
                settings, job, shard, cancel_check=canceled, on_progress=progress
            )
            builder.generate()
            # finalize may run on another machine: it reads the chunks from the store
            store = open_store(settings.storage_url, settings.s3_endpoint_url)
            retrying(
                lambda: put_dir(store, _shard_key(job.id, shard.index), builder.work),
                settings.upload_retry_seconds,
                on_retry=lambda: renew_shard_lease(sessions, settings, shard_id),
            )
            shard.status = ShardStatus.SUCCEEDED
            shard.images_done = (shard.slot_end - shard.slot_start) * job.spec[
                "images_per_identity"
            ]
            db.refresh(job)  # progress was updated by other sessions meanwhile
            seconds = (job.progress or {}).get("shard_seconds", 0) + time.perf_counter() - t0
            job.progress = {**(job.progress or {}), "shard_seconds": round(seconds, 2)}
            db.commit()
        except Canceled:
            shard.status = ShardStatus.CANCELED
            db.commit()
            return shard.status
        except Exception as exc:  # the job records why; the worker lives on
            log.exception("shard %s failed", shard_id)
            shard.status = ShardStatus.FAILED
            job.status, job.error, job.finished_at = (
                JobStatus.FAILED,
                f"shard {shard.index}: {exc}",
                utcnow(),
            )
            release_unstarted(db, job)
            db.commit()
            notify(sessions, settings, job.id)
            return shard.status
        pending = db.scalar(
            select(Shard.id).where(Shard.job_id == job.id, Shard.status != ShardStatus.SUCCEEDED)
        )
        job_id = job.id
    if pending is None:
        finalize_job(sessions, settings, job_id)
    return ShardStatus.SUCCEEDED


def add_utility(settings: Settings, store, store_call, job: Job, out: Path, report: dict) -> dict:
    """Train the utility probe on the finished dataset and add its accuracy on each
    benchmark the job asked for to report.json and report.html."""
    from vigface.dataset.report import write_html_report
    from vigface.dataset.writers import write_json
    from vigface.evaluation.utility import dataset_utility, probe_config

    work = Path(settings.work_dir) / job.id / "probe"
    bins = {}
    for name in job.evaluate_on:
        bins[name] = work / f"{name}.bin"
        if not bins[name].is_file():
            store_call(lambda n=name: store.download(f"benchmarks/{n}.bin", bins[n]))
    cfg = probe_config(steps=settings.probe_steps)
    report = {**report, "utility": dataset_utility([out], bins, work / "run", cfg)}
    write_json(out / "report.json", report)
    write_html_report(out / "report.html", report, out)
    return report


def finalize_job(sessions: sessionmaker, settings: Settings, job_id: str) -> None:
    """Merge the shards into one dataset, upload it, record the report: once per job."""
    with sessions() as db:
        claimed = db.execute(  # a leased step: stalled_finalizes() re-runs it if this dies
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
            .values(
                status=JobStatus.FINALIZING,
                finalize_expires_at=utcnow() + timedelta(seconds=settings.lease_seconds),
            )
        ).rowcount
        db.commit()
        if not claimed:
            return
        job = db.get(Job, job_id)

        def store_call(call):  # an outage of up to upload_retry_seconds is waited out
            return retrying(
                call,
                settings.upload_retry_seconds,
                on_retry=lambda: renew_finalize_lease(sessions, settings, job_id),
            )

        try:
            parts = []
            store = open_store(settings.storage_url, settings.s3_endpoint_url)
            for shard in job.shards:
                b = _shard_builder(settings, job, shard)
                # shards ran elsewhere: fetch their chunks from the store
                for key in store_call(lambda s=shard: store.list(_shard_key(job.id, s.index))):
                    local = b.work / key.rsplit("/", 1)[1]
                    if not local.is_file():
                        store_call(lambda k=key, d=local: store.download(k, d))
                b.generate()  # every chunk is present: this only loads them
                parts.append(b)
            out = Path(settings.work_dir) / job.id / "dataset"
            report = write_dataset(parts, out, judge_gallery=settings.judge_real_gallery)
            if job.evaluate_on:
                report = add_utility(settings, store, store_call, job, out, report)
            keys = store_call(lambda: put_dir(store, f"jobs/{job.id}", out))
            job.report = report
            sizes = {k: (out / k.split(f"jobs/{job.id}/", 1)[1]).stat().st_size for k in keys}
            job.artifacts = {"keys": keys, "sizes": sizes}
            job.images_done = report["dataset"]["num_image"]
            job.status, job.finished_at = JobStatus.SUCCEEDED, utcnow()
        except Exception as exc:  # the shards stay: POST /v1/jobs/{id}/retry finalizes again
            log.exception("finalize of %s failed", job_id)
            job.status, job.error, job.finished_at = JobStatus.FAILED, f"finalize: {exc}", utcnow()
            release_unstarted(db, job)
        db.commit()
    notify(sessions, settings, job_id)
