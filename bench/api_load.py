"""How fast the API answers under load, and how soon an accepted job starts.

Starts ``vigface serve`` as its own process, in each mode asked for:

* ``embedded``: SQLite, local store, the in-process worker thread;
* ``broker``: PostgreSQL (a fresh database on 127.0.0.1:5432) and Redis as the Celery broker,
  with one ``vigface worker`` process beside the API;

creates a team, submits small jobs and times how long each waits until its first shard is
``running`` (the service's start-up latency), lets them finish, then drives ``GET /v1/jobs/{id}``,
``GET /v1/jobs`` and ``GET /healthz`` at ``--rate`` requests/s *each* for ``--seconds``,
open-loop (every request is sent at its scheduled time whether or not earlier ones have
answered, and its latency counts from that time, so a slow server cannot slow the load down).
Prints p50 / p99 / max and errors per endpoint, the p99 ratio of each endpoint to
``/healthz``, and the API process's peak RSS; the last line is one JSON object.

    python bench/api_load.py                       # both modes, 200 req/s each for 20 s
    python bench/api_load.py --mode embedded --rate 100 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

PG_ADMIN = os.environ.get(
    "VIGFACE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS = os.environ.get("VIGFACE_BENCH_REDIS", "redis://127.0.0.1:6379/13")
ORDER = {"identities": 2, "images_per_identity": 2, "steps": 2, "formats": ["imagefolder"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_postgres(name: str) -> str:
    from sqlalchemy import create_engine, text

    eng = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        c.execute(text(f"CREATE DATABASE {name}"))
    eng.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


def cli(env: dict, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(f"vigface {' '.join(args)}: {out.stderr[-2000:]}")
    return out.stdout


@contextlib.contextmanager
def processes(env: dict, port: int, broker: bool, api_workers: int = 1):
    """The API (and, with a broker, one worker) as process groups; yields the API's pid."""
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli",
                "serve",
                "--port",
                str(port),
                "--workers",
                str(api_workers),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    ]
    if broker:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=0.5).status_code == 200:
                    break
            time.sleep(0.1)
        yield procs[0].pid
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:  # a server still draining a backlog of requests is not waited for
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(15)


def peak_rss_mb(pgid: int) -> float:
    """Sum of peak RSS over the API's process group (one process, or the supervisor and its
    ``--workers`` processes)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # field 5 of stat: the process group
                continue
            for line in (stat.parent / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        except (OSError, IndexError, ValueError):
            continue
    return total


def time_to_first_shard(
    url: str, headers: dict, jobs: int, seed0: int = 0
) -> tuple[list[float], list[str]]:
    """Submit ``jobs`` orders one after another; for each, seconds from the 202 until a shard
    is running (or already done)."""
    waits, ids = [], []
    with httpx.Client(base_url=url, headers=headers, timeout=10) as c:
        for i in range(jobs):
            r = c.post("/v1/jobs", json={**ORDER, "seed": seed0 + i})
            r.raise_for_status()
            t0, job_id = time.monotonic(), r.json()["id"]
            while time.monotonic() - t0 < 120:
                shards = c.get(f"/v1/jobs/{job_id}").json()["shards"]
                if any(shards.get(s) for s in ("running", "succeeded")):
                    break
                time.sleep(0.02)
            waits.append(time.monotonic() - t0)
            ids.append(job_id)
    return waits, ids


def wait_until_done(url: str, headers: dict, ids: list[str], limit_s: float = 600) -> None:
    """Let the submitted jobs finish first: the load then measures the API, not the API
    sharing two cores with a sampler (embedded mode runs shards inside the API process)."""
    with httpx.Client(base_url=url, headers=headers, timeout=10) as c:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            states = [c.get(f"/v1/jobs/{i}").json()["status"] for i in ids]
            if all(s in ("succeeded", "failed", "canceled") for s in states):
                return
            time.sleep(0.5)


async def _get(reader, writer, host: str, path: str, auth: str) -> int:
    """One HTTP/1.1 GET on a kept-alive connection; returns the status code."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return status


async def open_loop(url: str, headers: dict, paths: dict[str, str], rate: float, seconds: float):
    """Every path at ``rate`` requests/s on its own fixed schedule; latency from schedule.

    A small HTTP/1.1 client on raw asyncio streams (a general-purpose client's pool costs
    more CPU per request than the server it measures): a pool of kept-alive connections; a
    request waits for a free one, and that wait counts in its latency."""
    host = url.split("//", 1)[1]
    h, port = host.split(":")
    auth = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    pool: asyncio.Queue = asyncio.Queue()
    for _ in range(64):
        pool.put_nowait(await asyncio.open_connection(h, int(port)))
    results: dict[str, list] = {name: [] for name in paths}
    start = time.perf_counter() + 0.5

    async def one(name: str, path: str, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        conn = await pool.get()
        try:
            ok = await asyncio.wait_for(_get(*conn, host, path, auth), 10) == 200
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            ok = False
            conn[1].close()
            conn = await asyncio.open_connection(h, int(port))
        pool.put_nowait(conn)
        results[name].append((time.perf_counter() - at, ok))

    n = int(rate * seconds)
    tasks = [
        asyncio.ensure_future(one(name, path, start + i / rate + k / (rate * len(paths))))
        for i in range(n)
        for k, (name, path) in enumerate(paths.items())
    ]
    # an overloaded server is not waited for forever: what has not answered 15 s after the
    # last scheduled request counts as an error (latency: the time waited)
    done, pending = await asyncio.wait(tasks, timeout=seconds + 15.5)
    for t in pending:
        t.cancel()
    late = time.perf_counter()
    for t, (i, (name, _)) in zip(
        tasks, ((i, kv) for i in range(n) for kv in paths.items()), strict=True
    ):
        if t in pending:
            at = start + i / rate
            results[name].append((late - at, False))
    while not pool.empty():
        pool.get_nowait()[1].close()
    return results


def summarise(results: dict) -> dict:
    out = {}
    for name, rows in results.items():
        lat = np.array([r[0] for r in rows]) * 1000
        out[name] = {
            "requests": len(rows),
            "errors": int(sum(not r[1] for r in rows)),
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "max_ms": round(float(lat.max()), 2),
        }
    base = out["healthz"]["p99_ms"]
    for name in out:
        out[name]["p99_vs_healthz"] = round(out[name]["p99_ms"] / max(base, 1e-9), 2)
    return out


def run_mode(mode: str, args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"vigface-load-{mode}-"))
    port = free_port()
    env = {
        **os.environ,
        "VIGFACE_PORT": str(port),
        "VIGFACE_STORAGE_URL": f"file://{tmp}/storage",
        "VIGFACE_WORK_DIR": str(tmp / "work"),
        "VIGFACE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "VIGFACE_DEFAULT_MODEL": args.model,
    }
    if mode == "broker":
        env["VIGFACE_DATABASE_URL"] = fresh_postgres(f"vigface_load_{os.getpid()}")
        env["VIGFACE_BROKER_URL"] = REDIS
        subprocess.run(["redis-cli", "-u", REDIS, "flushdb"], capture_output=True)
    else:
        env["VIGFACE_DATABASE_URL"] = f"sqlite:///{tmp}/vigface.db"
    cli(env, "admin", "create-team", "bench", "--quota", "100000000")
    key = cli(env, "admin", "create-key", "bench").strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {key}"}
    api_workers = args.api_workers if mode == "broker" else 1
    with processes(env, port, broker=mode == "broker", api_workers=api_workers) as pid:
        url = f"http://127.0.0.1:{port}"
        # a warm-up job first: worker start-up and model loading are not the service's
        # steady-state latency (the worker preloads its model at process start)
        _, warm = time_to_first_shard(url, headers, 1, seed0=10_000)
        wait_until_done(url, headers, warm)
        waits, ids = time_to_first_shard(url, headers, args.jobs)
        wait_until_done(url, headers, ids)
        paths = {"job_status": f"/v1/jobs/{ids[-1]}", "job_list": "/v1/jobs", "healthz": "/healthz"}
        results = asyncio.run(open_loop(url, headers, paths, args.rate, args.seconds))
        rss = peak_rss_mb(pid)
    stats = summarise(results)
    return {
        "mode": mode,
        "api_workers": api_workers,
        "rate_per_endpoint": args.rate,
        "seconds": args.seconds,
        "first_shard_start_s": {
            "max": round(max(waits), 3),
            "mean": round(float(np.mean(waits)), 3),
        },
        "api_peak_rss_mb": round(rss, 1),
        "endpoints": stats,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["embedded", "broker", "both"], default="both")
    ap.add_argument("--rate", type=float, default=200.0, help="requests/s per endpoint")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--model", default="demo")
    ap.add_argument(
        "--api-workers", type=int, default=1, help="API processes in broker mode (serve --workers)"
    )
    args = ap.parse_args()
    modes = ["embedded", "broker"] if args.mode == "both" else [args.mode]
    runs = []
    for mode in modes:
        r = run_mode(mode, args)
        runs.append(r)
        print(
            f"\n{mode}: first shard running {r['first_shard_start_s']['max']} s after the 202 "
            f"(max of {args.jobs}); API peak RSS {r['api_peak_rss_mb']} MB "
            f"({r['api_workers']} API process(es))"
        )
        print("| endpoint | requests | errors | p50 ms | p99 ms | max ms | p99 / healthz |")
        print("|---|---|---|---|---|---|---|")
        for name, s in r["endpoints"].items():
            print(
                f"| {name} | {s['requests']} | {s['errors']} | {s['p50_ms']} | {s['p99_ms']} | "
                f"{s['max_ms']} | {s['p99_vs_healthz']} |"
            )
    print(json.dumps({"runs": runs}))


if __name__ == "__main__":
    main()
