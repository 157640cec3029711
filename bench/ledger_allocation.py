"""How long admitting a 10,000-identity order takes on PostgreSQL: validation, the quota check,
free-row lookup over the model's whole W_V, and the one transaction that writes the job, its
200 shards and its 12,000 ledger rows (identities plus spares).

    vigface extend-virtual --model demo --add 98000 --max-virtual-cos 0.6 --out runs/demo100k
    python bench/ledger_allocation.py --model-dir runs/demo100k

Each repeat uses a fresh database of its own on the PostgreSQL at --pg (dropped after), with
one earlier order already sold from the model. Prints each repeat's seconds for the whole
admission (every read and write of it is one transaction) and the median's ratio to the
one-second target.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, required=True, help="a generator entry")
    ap.add_argument("--identities", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    os.environ["VIGFACE_MODEL_STORE"] = str(args.model_dir.resolve().parent)
    from sqlalchemy import create_engine, text

    from app.schemas import JobCreate
    from app.services.admission import create_job
    from app.services.auth import create_team
    from app.services.models import describe_model
    from jobstore.session import init_db, session_factory
    from jobstore.settings import Settings

    admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
    name = args.model_dir.name
    totals = []
    for r in range(args.repeats):
        db_name = f"vigface_bench_{uuid.uuid4().hex[:8]}"
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{db_name}"'))
        url = args.pg.rsplit("/", 1)[0] + "/" + db_name
        try:
            with tempfile.TemporaryDirectory() as tmp:
                settings = Settings(
                    database_url=url, storage_url=f"file://{tmp}/s", work_dir=Path(tmp) / "w",
                    default_model=name, max_identities_per_job=args.identities,
                )  # fmt: skip
                init_db(url)
                sessions = session_factory(url)
                desc = describe_model(settings, name)  # the process-wide cache, as in the API
                with sessions() as db:
                    team = create_team(db, "bench", quota=10**9)
                    first = JobCreate(identities=50, images_per_identity=1)
                    create_job(db, settings, team, first, None, lambda job: None)
                    order = JobCreate(identities=args.identities, images_per_identity=1)

                    t0 = time.perf_counter()
                    job, _ = create_job(db, settings, team, order, None, lambda job: None)
                    total = time.perf_counter() - t0
                    rows = db.execute(
                        text("SELECT count(*) FROM identity_ledger WHERE job_id = :j"),
                        {"j": job.id},
                    ).scalar()
                    shards = len(job.shards)
                totals.append(total)
                print(
                    f"repeat {r + 1}: {desc.virtual_prototypes} rows in W_V, {rows} ledger rows "
                    f"and {shards} shards in one transaction: {total:.3f} s"
                )
        finally:
            from jobstore.session import get_engine

            get_engine.cache_clear()
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
    med = statistics.median(totals)
    print(f"median admission {med:.3f} s = {med:.2f}x the 1 s target")


if __name__ == "__main__":
    main()
