"""Finalizing a job once its shards are done: merge them into one dataset, upload it, record
the report, clear the shards' scratch files.

The step holds a lease (``finalizing`` with ``finalize_expires_at``) renewed by a heartbeat;
the reconciler re-runs it if its worker dies. Its database steps are short transactions, so a
database restart meanwhile delays it; the last write is conditional on the job still being
``finalizing``: a cancel that came meanwhile stays final, and the uploaded files are removed.
"""

from __future__ import annotations

import logging
import shutil
import time
from datetime import UTC, timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import sessionmaker

from jobstore.models import Job, JobStatus, Shard, Team, utcnow
from jobstore.session import lost_connection, retry_db
from jobstore.settings import Settings
from model_store.storage import open_store, put_dir, retrying
from vigface.dataset.assembly import write_dataset
from vigface.dataset.provenance import OrderContext
from vigface.dataset.writers import finite
from workers.builders import model_digest, shard_builder, shard_key
from workers.heartbeat import heartbeat
from workers.shard_state import Claim, announce, fail_job

log = logging.getLogger(__name__)


def _claim(sessions: sessionmaker, settings: Settings, job_id: str) -> bool:
    with sessions() as db:
        claimed = db.execute(  # a leased step: stalled_finalizes() re-runs it if this dies
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
            .values(
                status=JobStatus.FINALIZING,
                finalize_expires_at=utcnow() + timedelta(seconds=settings.lease_seconds),
            )
        ).rowcount
        if not claimed:
            db.rollback()
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


def claim_finalize(sessions: sessionmaker, settings: Settings, job_id: str) -> bool:
    """Move a job whose shards are done to ``finalizing`` with a lease; False if another
    worker has it, if the job was canceled or failed meanwhile, or if this start is one too
    many (the job fails with that reason)."""
    return retry_db(lambda: _claim(sessions, settings, job_id))


def renew_finalize_lease(sessions: sessionmaker, settings: Settings, job_id: str) -> None:
    with sessions() as db:
        db.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.FINALIZING)
            .values(finalize_expires_at=utcnow() + timedelta(seconds=settings.lease_seconds))
        )
        db.commit()


def job_claims(sessions: sessionmaker, job_id: str) -> tuple[dict, list[Claim]]:
    """What finalizing needs of the job (benchmarks, who ordered it when, the model) and a
    :class:`Claim`-shaped view of each shard."""
    with sessions() as db:
        job = db.get(Job, job_id)
        team = db.get(Team, job.team_id)
        shards = db.scalars(select(Shard).where(Shard.job_id == job_id).order_by(Shard.index))
        claims = [Claim.of(job, s) for s in shards]
        ordered_at = job.created_at.replace(tzinfo=UTC).isoformat(timespec="seconds")
        info = {
            "evaluate_on": job.evaluate_on or [],
            "team": team.name if team else "?",
            "ordered_at": ordered_at,
            "model": job.model,
        }
        return info, claims


def add_utility(settings: Settings, store_call, store, job_id, names, out: Path, report: dict):
    """Train the utility probe on the finished dataset and add its accuracy on each
    benchmark the job asked for to report.json and report.html."""
    from vigface.dataset.report import write_html_report
    from vigface.dataset.writers import write_json
    from vigface.training.probe import dataset_utility, probe_config

    work = Path(settings.work_dir) / job_id / "probe"
    bins = {}
    for name in names:
        bins[name] = work / f"{name}.bin"
        if not bins[name].is_file():
            store_call(lambda n=name: store.download(f"benchmarks/{n}.bin", bins[n]))
    cfg = probe_config(steps=settings.probe_steps)
    report = {**report, "utility": dataset_utility([out], bins, work / "run", cfg)}
    write_json(out / "report.json", report)
    write_html_report(out / "report.html", report, out)
    return report


def build_dataset(settings: Settings, store, store_call, job_id: str, job: dict, claims):
    """Fetch each shard's chunks from the store, merge and upload; (report, keys, sizes)."""
    parts = []
    for claim in claims:
        b = shard_builder(settings, claim)
        for key in store_call(lambda c=claim: store.list(shard_key(job_id, c.index))):
            local = b.work / key.rsplit("/", 1)[1]
            if not local.is_file():
                store_call(lambda k=key, d=local: store.download(k, d))
        b.generate()  # every chunk is present: this only loads them
        parts.append(b)
    out = Path(settings.work_dir) / job_id / "dataset"
    context = OrderContext(
        dataset_id=job_id,
        ordered_by=f"team {job['team']}",
        ordered_at=job["ordered_at"],
        model_digest=model_digest(settings, job["model"]),
        source=f"VIGFace service job {job_id} at {settings.base_url}",
    )
    report = write_dataset(parts, out, settings.outside_judge_gallery, context)
    if job["evaluate_on"]:
        report = add_utility(settings, store_call, store, job_id, job["evaluate_on"], out, report)
    keys = store_call(lambda: put_dir(store, f"jobs/{job_id}", out))
    sizes = {k: (out / k.split(f"jobs/{job_id}/", 1)[1]).stat().st_size for k in keys}
    return report, keys, sizes


def record_result(
    sessions, job_id: str, report: dict, keys: list[str], sizes: dict, seconds: float
) -> bool:
    """The dataset is delivered: False when the job is no longer finalizing (canceled).
    ``seconds`` the step took goes into the job's progress (later orders' estimates)."""

    def write() -> bool:
        with sessions() as db:
            job = db.get(Job, job_id)
            progress = {**(job.progress or {}), "finalize_seconds": round(seconds, 2)}
            n = db.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.FINALIZING)
                .values(
                    report=finite(report),
                    progress=progress,
                    artifacts={"keys": keys, "sizes": sizes},
                    images_done=report["dataset"]["num_image"],
                    status=JobStatus.SUCCEEDED,
                    finished_at=utcnow(),
                )
            ).rowcount
            db.commit()
            return n == 1

    return retry_db(write)


def record_failure(sessions, job_id: str, reason: str) -> None:
    def write() -> None:
        with sessions() as db:
            job = db.get(Job, job_id)
            if job.status == JobStatus.FINALIZING:
                fail_job(db, job, reason)
                db.commit()

    retry_db(write)


def finalize_job(sessions: sessionmaker, settings: Settings, job_id: str) -> None:
    """Merge, upload and record the dataset of a job whose shards are done: once per job. Any
    failure but a lost database connection fails the job with the reason (the shards stay:
    POST /v1/jobs/{id}/retry finalizes again); with the database away the lease runs out and
    the reconciler runs the step again."""
    if not claim_finalize(sessions, settings, job_id):
        announce(sessions, settings, job_id)
        return
    keys: list[str] = []
    store = open_store(settings.storage_url, settings.s3_endpoint_url)

    def store_call(call):  # an outage of up to upload_retry_seconds is waited out
        return retrying(call, settings.upload_retry_seconds)

    renew = lambda: renew_finalize_lease(sessions, settings, job_id)  # noqa: E731
    t0 = time.perf_counter()
    try:
        job, claims = retry_db(lambda: job_claims(sessions, job_id))
        with heartbeat(renew, settings.lease_seconds):
            report, keys, sizes = build_dataset(settings, store, store_call, job_id, job, claims)
        if record_result(sessions, job_id, report, keys, sizes, time.perf_counter() - t0):
            clear_scratch(settings, store, job_id, claims)
        else:  # canceled while finalizing: the cancel stands, nothing is delivered
            log.info("job %s was canceled while finalizing; removing its upload", job_id)
            remove_keys(store, keys)
    except Exception as exc:
        if lost_connection(exc):
            log.warning("finalize of %s: database unavailable; it runs again", job_id)
            return
        log.exception("finalize of %s failed", job_id)
        record_failure(sessions, job_id, f"finalize: {exc}")
        remove_keys(store, keys)
    announce(sessions, settings, job_id)


def clear_scratch(settings: Settings, store, job_id: str, claims: list[Claim]) -> None:
    """A delivered job's shard chunks (in the store and on this disk) are scratch."""
    for claim in claims:
        try:
            remove_keys(store, store.list(shard_key(job_id, claim.index)))
        except Exception:  # noqa: BLE001 - leftovers cost space, nothing else
            log.warning("could not list the shard files of %s", job_id, exc_info=True)
    for claim in claims:
        shutil.rmtree(Path(settings.work_dir) / job_id / f"shard_{claim.index:05d}", True)


def remove_keys(store, keys: list[str]) -> None:
    """Best-effort removal of files that will not be delivered."""
    for key in keys:
        try:
            store.delete(key)
        except Exception:  # noqa: BLE001 - a leftover file is harmless; its job never lists it
            log.warning("could not remove %s", key, exc_info=True)
