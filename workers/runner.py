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
import threading
import time
from datetime import timedelta
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from jobstore.ledger import release_unstarted, release_unused_spares, rows_still_held
from jobstore.models import Job, JobStatus, Shard, ShardStatus, utcnow
from jobstore.settings import Settings
from jobstore.webhooks import notify
from model_store.loader import load_generator
from model_store.storage import open_store, put_dir, retrying
from vigface.dataset.pipeline import Canceled, DatasetBuilder, write_dataset
from vigface.dataset.spec import DatasetSpec, ResolvedSpec, resolve_spec
from vigface.dataset.writers import finite
from vigface.prototype_set import row_keys
from workers.heartbeat import heartbeat
from workers.reconcile import next_queued_shard

log = logging.getLogger(__name__)
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


def announce(sessions: sessionmaker, settings: Settings, job_id: str) -> None:
    """The job reached a final state: its webhook goes into the outbox, and to a Celery
    worker where there is a broker."""
    from workers.celery_app import webhook_sender

    notify(sessions, job_id, webhook_sender(settings))


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
    gen = load_model(settings, job.model)
    spec = recorded_spec(job.spec, gen.card).model_copy(
        update={
            "identities": shard.slot_end - shard.slot_start,
            "seed": job.spec["seed"] + shard.index,
            # the deployment's independent judge, if it has one (VIGFACE_JUDGE_*)
            "leakage_judge_onnx": settings.leakage_judge_onnx,
            "leakage_judge_gallery": settings.leakage_judge_gallery,
            "leakage_judge_threshold": settings.leakage_judge_threshold,
        }
    )
    out = Path(settings.work_dir) / job.id / f"shard_{shard.index:05d}"
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


def check_rows_held(db: Session, gen, job: Job, shard: Shard) -> None:
    """Refuse to draw a shard if the model now holds other prototypes at the rows this job
    bought (a model re-trained or re-shuffled under the same name would hand other faces);
    appended rows (vigface extend-virtual) leave them alone."""
    keys = row_keys(gen.fr.virtual_prototypes[shard.prototypes].float().cpu().numpy())
    if not rows_still_held(db, job.id, dict(zip(shard.prototypes, keys, strict=True))):
        raise ValueError(
            f"model {job.model!r} holds other virtual prototypes at this job's rows than when "
            "it was ordered (the ledger sold those); order again"
        )


def recorded_spec(spec: dict, card: dict) -> ResolvedSpec:
    """The spec a job recorded at admission (resolved there). Jobs stored before admission
    resolved every field are resolved against the card once more, as they always were."""
    try:
        return ResolvedSpec.model_validate(spec)
    except ValidationError:
        log.warning("a job recorded before specs were resolved at admission: resolving it now")
        return resolve_spec(DatasetSpec.model_validate(spec), card)


def _shard_key(job_id: str, index: int) -> str:
    return f"work/{job_id}/shard_{index:05d}"


def renew_shard_lease(sessions: sessionmaker, settings: Settings, shard_id: int) -> None:
    """The heartbeat: a shard at work pushes its lease ``lease_seconds`` ahead."""
    with sessions() as db:
        db.execute(
            update(Shard)
            .where(Shard.id == shard_id, Shard.status == ShardStatus.RUNNING)
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


def fail_job(db: Session, job: Job, reason: str) -> None:
    """Mark ``job`` failed with ``reason`` and give back what it never used; caller commits."""
    job.status, job.error, job.finished_at = JobStatus.FAILED, reason, utcnow()
    release_unstarted(db, job)


def lost_starts(job: Job, shard: Shard) -> int:
    """How many times ``shard`` was started and did not finish, leaving out the times its
    worker gave it back on a clean stop (Ctrl-C, SIGTERM)."""
    given_back = (job.progress or {}).get("given_back", {}).get(str(shard.index), 0)
    return shard.attempts - 1 - given_back


class Stopping(Exception):
    """The worker is shutting down: the shard goes back to the queue at the next batch."""


def give_back(db: Session, job: Job, shard: Shard) -> None:
    """Return a shard this worker holds to the queue (clean shutdown): lease cleared, queued
    again at once (``enqueued_at`` empty: the reconciler re-sends it on its next pass)."""
    shard.status, shard.lease_expires_at, shard.worker, shard.enqueued_at = (
        ShardStatus.QUEUED,
        None,
        None,
        None,
    )
    progress = dict(job.progress or {})
    given = dict(progress.get("given_back", {}))
    given[str(shard.index)] = given.get(str(shard.index), 0) + 1
    job.progress = {**progress, "given_back": given}
    db.commit()


def run_shard(
    sessions: sessionmaker,
    settings: Settings,
    shard_id: int,
    stopping: threading.Event | None = None,
) -> str:
    """Generate one shard; finalize the job when it was the last. Returns the shard status.
    ``stopping`` set (the worker shuts down) gives the shard back at its next batch."""
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
        db.refresh(job)
        if lost_starts(job, shard) >= settings.max_step_attempts:
            shard.status = ShardStatus.FAILED
            fail_job(
                db,
                job,
                f"shard {shard.index}: started {shard.attempts} times without finishing (its "
                "worker died each time); the job stops here (POST /v1/jobs/{id}/retry)",
            )
            db.commit()
            announce(sessions, settings, job.id)
            return shard.status
        if job.status == JobStatus.QUEUED:
            job.status, job.started_at = JobStatus.RUNNING, utcnow()
            db.commit()

        def canceled() -> bool:
            if stopping is not None and stopping.is_set():
                raise Stopping
            with sessions() as check:
                return bool(check.scalar(select(Job.cancel_requested).where(Job.id == job.id)))

        started = time.perf_counter()
        sampled_here = 0

        def progress(stage: str, n: int) -> None:
            """``sampled`` and ``identities_done`` add up draws; ``accepted`` is this shard's
            kept images so far, and images_done the sum over shards: it reaches the order
            only when every image passed the filters, not when the first draws are done."""
            nonlocal sampled_here
            with sessions() as upd:
                j = upd.get(Job, job.id)
                prog = dict(j.progress or {})
                if stage == "accepted":
                    kept = {**prog.get("shard_accepted", {}), str(shard.index): n}
                    prog["shard_accepted"] = kept
                    j.images_done = min(j.images_requested, sum(kept.values()))
                else:
                    prog[stage] = prog.get(stage, 0) + n
                if stage == "sampled":
                    sampled_here += n
                    prog["workers"] = {
                        **prog.get("workers", {}),
                        WORKER_ID: worker_stats(
                            sampled_here / max(time.perf_counter() - started, 1e-6)
                        ),
                    }
                prog["updated_at"] = utcnow().isoformat()
                j.progress = prog
                upd.commit()

        try:
            t0 = time.perf_counter()
            with heartbeat(
                lambda: renew_shard_lease(sessions, settings, shard_id), settings.lease_seconds
            ):
                check_rows_held(db, load_model(settings, job.model), job, shard)
                builder = _shard_builder(
                    settings, job, shard, cancel_check=canceled, on_progress=progress
                )
                builder.generate()
                # finalize may run on another machine: it reads the chunks from the store
                store = open_store(settings.storage_url, settings.s3_endpoint_url)
                retrying(
                    lambda: put_dir(store, _shard_key(job.id, shard.index), builder.work),
                    settings.upload_retry_seconds,
                )
            shard.status = ShardStatus.SUCCEEDED
            shard.images_done = (shard.slot_end - shard.slot_start) * job.spec[
                "images_per_identity"
            ]
            spares_back = release_unused_spares(db, job, builder.unused_spares)
            db.refresh(job)  # progress was updated by other sessions meanwhile
            prog = dict(job.progress or {})
            seconds = prog.get("shard_seconds", 0) + time.perf_counter() - t0
            prog["shard_seconds"] = round(seconds, 2)
            prog["spares_released"] = prog.get("spares_released", 0) + spares_back
            job.progress = prog
            db.commit()
        except Stopping:
            db.refresh(job)
            give_back(db, job, shard)
            log.info("shard %s given back: the worker is stopping", shard_id)
            return ShardStatus.QUEUED
        except Canceled:
            shard.status = ShardStatus.CANCELED
            db.commit()
            return shard.status
        except Exception as exc:  # the job records why; the worker lives on
            log.exception("shard %s failed", shard_id)
            db.rollback()
            shard.status = ShardStatus.FAILED
            fail_job(db, job, f"shard {shard.index}: {exc}")
            db.commit()
            announce(sessions, settings, job.id)
            return shard.status
        pending = db.scalar(
            select(Shard.id).where(Shard.job_id == job.id, Shard.status != ShardStatus.SUCCEEDED)
        )
        job_id = job.id
    if pending is None:
        finalize_job(sessions, settings, job_id)
    return ShardStatus.SUCCEEDED


def run_next_shard(
    sessions: sessionmaker, settings: Settings, stopping: threading.Event | None = None
) -> str:
    """Run whichever shard :func:`workers.reconcile.next_queued_shard` says goes next.

    A Celery message is one unit of work, not one particular shard: a job sends one message
    per shard, and each message runs the fairest queued shard at the time it is taken. So a
    small order sent behind a big one's hundreds of messages runs at the next message, not
    after them; every queued shard still has a message (the reconciler re-sends lost ones)."""
    with sessions() as db:
        shard_id = next_queued_shard(db)
    if shard_id is None:
        return "idle"
    return run_shard(sessions, settings, shard_id, stopping)


def add_utility(settings: Settings, store, store_call, job: Job, out: Path, report: dict) -> dict:
    """Train the utility probe on the finished dataset and add its accuracy on each
    benchmark the job asked for to report.json and report.html."""
    from vigface.dataset.report import write_html_report
    from vigface.dataset.writers import write_json
    from vigface.training.probe import dataset_utility, probe_config

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


def claim_finalize(sessions: sessionmaker, settings: Settings, job_id: str) -> bool:
    """Move a job whose shards are done to ``finalizing`` with a lease; False if another
    worker has it, if the job was canceled or failed meanwhile, or if this start is one too
    many (the job fails with that reason)."""
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
            return False
        job = db.get(Job, job_id)
        starts = (job.progress or {}).get("finalize_starts", 0) + 1
        job.progress = {**(job.progress or {}), "finalize_starts": starts}
        if starts > settings.max_step_attempts:
            fail_job(
                db,
                job,
                f"finalize: started {starts - 1} times without finishing (its worker died "
                "each time); the shards are kept (POST /v1/jobs/{id}/retry)",
            )
        db.commit()
        return job.status == JobStatus.FINALIZING


def finalize_job(sessions: sessionmaker, settings: Settings, job_id: str) -> None:
    """Merge the shards into one dataset, upload it, record the report: once per job.

    The lease is renewed by a heartbeat for the whole step. The last write is conditional on
    the job still being ``finalizing``: a cancel that came meanwhile stays final, and the
    uploaded files are removed. Any failure, the final database write included (a report the
    database refuses), fails the job with the reason instead of leaving it to be re-run."""
    if not claim_finalize(sessions, settings, job_id):
        announce(sessions, settings, job_id)
        return
    keys: list[str] = []
    store = open_store(settings.storage_url, settings.s3_endpoint_url)
    with sessions() as db:
        job = db.get(Job, job_id)

        def store_call(call):  # an outage of up to upload_retry_seconds is waited out
            return retrying(call, settings.upload_retry_seconds)

        try:
            with heartbeat(
                lambda: renew_finalize_lease(sessions, settings, job_id), settings.lease_seconds
            ):
                parts = []
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
                report = write_dataset(parts, out, outside_gallery=settings.outside_judge_gallery)
                if job.evaluate_on:
                    report = add_utility(settings, store, store_call, job, out, report)
                keys = store_call(lambda: put_dir(store, f"jobs/{job.id}", out))
            sizes = {k: (out / k.split(f"jobs/{job.id}/", 1)[1]).stat().st_size for k in keys}
            done = db.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.FINALIZING)
                .values(
                    report=finite(report),
                    artifacts={"keys": keys, "sizes": sizes},
                    images_done=report["dataset"]["num_image"],
                    status=JobStatus.SUCCEEDED,
                    finished_at=utcnow(),
                )
            ).rowcount
            db.commit()
            if not done:  # canceled while finalizing: the cancel stands, nothing is delivered
                log.info("job %s was canceled while finalizing; removing its upload", job_id)
                remove_keys(store, keys)
        except Exception as exc:  # the shards stay: POST /v1/jobs/{id}/retry finalizes again
            log.exception("finalize of %s failed", job_id)
            db.rollback()
            db.refresh(job)
            if job.status == JobStatus.FINALIZING:
                fail_job(db, job, f"finalize: {exc}")
                db.commit()
            remove_keys(store, keys)
    announce(sessions, settings, job_id)


def remove_keys(store, keys: list[str]) -> None:
    """Best-effort removal of a dataset that will not be delivered."""
    for key in keys:
        try:
            store.delete(key)
        except Exception:  # noqa: BLE001 - a leftover file is harmless; its job never lists it
            log.warning("could not remove %s", key, exc_info=True)
