"""Running a shard: the work behind both the Celery tasks and the embedded worker thread. The
database decides what runs; a task only asks for work.

A shard is idempotent: its chunks are keyed by (job, shard, chunk) on the local work disk and
written atomically, and inside an unfinished chunk every sampling batch is kept, so a shard
that runs again (a worker stopped or killed mid-shard, a lease that expired) skips what is
drawn and writes the same bytes for the rest. A finished shard's chunks are copied to the
object store (``work/<job>/shard_NNNNN/``) so that the finalize step can run on any machine.
Its database steps are short transactions (:mod:`workers.shard_state`); none is open while it
samples.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.orm import sessionmaker

from jobstore.ledger import rows_still_held
from jobstore.models import ShardStatus
from jobstore.session import lost_connection, retry_db
from jobstore.settings import Settings
from model_store.storage import open_store, put_dir, retrying
from vigface.dataset.pipeline import Canceled
from vigface.prototype_set import row_keys
from vigface.sampling import SamplingInterrupted
from workers import shard_state
from workers.builders import load_model, shard_builder, shard_dir, shard_key
from workers.finalize import finalize_job
from workers.heartbeat import heartbeat
from workers.reconcile import next_queued_shard
from workers.shard_state import Claim, Throughput, announce

log = logging.getLogger(__name__)


class Stopping(Exception):
    """The worker is shutting down: the shard goes back to the queue at the next batch."""


def check_rows_held(sessions: sessionmaker, gen, claim: Claim) -> None:
    """Refuse to draw a shard if the model now holds other prototypes at the rows this job
    bought (a model re-trained or re-shuffled under the same name would hand other faces);
    appended rows (vigface extend-virtual) leave them alone."""
    keys = row_keys(gen.fr.virtual_prototypes[claim.prototypes].float().cpu().numpy())
    wanted = dict(zip(claim.prototypes, keys, strict=True))

    def read() -> bool:
        with sessions() as db:
            return rows_still_held(db, claim.job_id, wanted)

    if not retry_db(read):
        raise ValueError(
            f"model {claim.model!r} holds other virtual prototypes at this job's rows than when "
            "it was ordered (the ledger sold those); order again"
        )


def progress_reporter(sessions: sessionmaker, claim: Claim):
    """The builder's ``on_progress``: ``sampled`` and ``identities_done`` add up draws;
    ``accepted`` is this shard's kept images so far, and ``images_done`` the sum over shards:
    it reaches the order only when every image passed the filters. A shard's count only
    grows (a dropped identity's images are taken back inside its chunk, and the chunk ends
    with every slot full again)."""
    rate = Throughput()

    def report(stage: str, n: int) -> None:
        def change(prog: dict, job) -> None:
            if stage == "accepted":
                kept = dict(prog.get("shard_accepted", {}))
                kept[str(claim.index)] = max(kept.get(str(claim.index), 0), n)
                prog["shard_accepted"] = kept
                job.images_done = min(job.images_requested, sum(kept.values()))
            else:
                prog[stage] = prog.get(stage, 0) + n
            if stage == "sampled":
                prog["workers"] = {**prog.get("workers", {}), shard_state.worker_id(): rate.add(n)}

        shard_state.update_progress(sessions, claim, change)

    return report


class Interrupt:
    """What stops a shard inside a sampling batch: the worker shutting down (``stopping``) or
    the job canceled (seen by a watcher every :data:`CANCEL_POLL_S`)."""

    def __init__(self, stopping):
        self.stopping, self.canceled = stopping, threading.Event()

    def is_set(self) -> bool:
        return self.canceled.is_set() or (self.stopping is not None and self.stopping.is_set())


CANCEL_POLL_S = 2.0


def generate_shard(sessions, settings: Settings, claim: Claim, interrupt: Interrupt):
    """Draw the shard (leased by a heartbeat throughout, watched for a cancel) and copy its
    chunks to the store."""

    def canceled() -> bool:
        if interrupt.stopping is not None and interrupt.stopping.is_set():
            raise Stopping
        return interrupt.canceled.is_set() or shard_state.cancel_requested(sessions, claim)

    def watch() -> None:
        if shard_state.cancel_requested(sessions, claim):
            interrupt.canceled.set()

    renew = lambda: shard_state.renew_lease(sessions, settings, claim)  # noqa: E731
    with heartbeat(renew, settings.lease_seconds), heartbeat(watch, 3 * CANCEL_POLL_S):
        check_rows_held(sessions, load_model(settings, claim.model), claim)
        builder = shard_builder(
            settings,
            claim,
            cancel_check=canceled,
            on_progress=progress_reporter(sessions, claim),
            interrupt=interrupt,
        )
        builder.generate()
        # finalize may run on another machine: it reads the chunks from the store
        store = open_store(settings.storage_url, settings.s3_endpoint_url)
        retrying(
            lambda: put_dir(store, shard_key(claim.job_id, claim.index), builder.work),
            settings.upload_retry_seconds,
        )
    return builder


def run_claimed(sessions, settings: Settings, claim: Claim, stopping) -> str:
    """Generate a claimed shard and record how it ended; finalize the job after its last."""
    t0 = time.perf_counter()
    interrupt = Interrupt(stopping)
    try:
        builder = generate_shard(sessions, settings, claim, interrupt)
    except (Stopping, SamplingInterrupted):
        if interrupt.canceled.is_set():  # stopped inside a batch by the cancel
            return end_canceled(sessions, settings, claim)
        shard_state.give_back(sessions, claim)
        log.warning(
            "shard %s of job %s handed back: the worker is stopping; the next "
            "start goes on from its last finished batch",
            claim.index,
            claim.job_id,
        )
        return ShardStatus.QUEUED
    except Canceled:
        return end_canceled(sessions, settings, claim)
    except Exception as exc:
        if lost_connection(exc):  # bookkeeping, not the shard, failed: its lease runs out
            log.warning("shard %s: database unavailable; it goes back to the queue", claim.index)
            return "deferred"
        log.exception("shard %s failed", claim.shard_id)
        if shard_state.record_end(
            sessions, claim, ShardStatus.FAILED, f"shard {claim.index}: {exc}"
        ):
            announce(sessions, settings, claim.job_id)
        return ShardStatus.FAILED
    images = claim.identities * claim.spec["images_per_identity"]
    seconds = time.perf_counter() - t0
    last = shard_state.record_success(sessions, claim, images, builder.unused_spares, seconds)
    if last:
        finalize_job(sessions, settings, claim.job_id)
    return ShardStatus.SUCCEEDED if last is not None else "taken over"


def end_canceled(sessions, settings: Settings, claim: Claim) -> str:
    """The job was canceled under the shard: it ends canceled and its scratch files go (no
    retry of a canceled job can use them)."""
    import shutil

    shard_state.record_end(sessions, claim, ShardStatus.CANCELED)
    shutil.rmtree(shard_dir(settings, claim.job_id, claim.index), ignore_errors=True)
    return ShardStatus.CANCELED


def run_shard(
    sessions: sessionmaker,
    settings: Settings,
    shard_id: int,
    stopping: threading.Event | None = None,
) -> str:
    """Generate one shard; finalize the job when it was the last. Returns the shard status
    (or why it did not run). ``stopping`` set (the worker shuts down) gives the shard back at
    its next batch."""
    claim = shard_state.claim_shard(sessions, settings, shard_id)
    if not isinstance(claim, Claim):
        if claim == ShardStatus.FAILED:
            announce(sessions, settings, retry_db(lambda: job_of(sessions, shard_id)))
        return claim
    return run_claimed(sessions, settings, claim, stopping)


def job_of(sessions: sessionmaker, shard_id: int) -> str:
    from jobstore.models import Shard

    with sessions() as db:
        return db.get(Shard, shard_id).job_id


def run_next_shard(
    sessions: sessionmaker, settings: Settings, stopping: threading.Event | None = None
) -> str:
    """Run the fairest queued shard (:func:`workers.reconcile.next_queued_shard`) that this
    worker can claim.

    A Celery message is one unit of work, not one particular shard: a job sends one message
    per shard, and each message runs the fairest queued shard at the time it is taken, so a
    small order sent behind a big one's hundreds of messages runs at the next message. Two
    idle workers may pick the same shard at once: the one that loses the claim takes the
    next queued shard instead, so no message is spent on a collision."""
    lost: set[int] = set()
    while True:

        def pick() -> int | None:
            with sessions() as db:
                return next_queued_shard(db, exclude=lost)

        shard_id = retry_db(pick)
        if shard_id is None:
            return "idle"
        claim = shard_state.claim_shard(sessions, settings, shard_id)
        if isinstance(claim, Claim):
            return run_claimed(sessions, settings, claim, stopping)
        if claim == ShardStatus.FAILED:  # one start too many: its job failed
            announce(sessions, settings, retry_db(lambda sid=shard_id: job_of(sessions, sid)))
        lost.add(shard_id)  # taken, or its job ended meanwhile: the next one
