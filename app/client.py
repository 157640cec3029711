"""A small Python client for ML teams: submit an order, wait for it, download a format.

from app.client import VIGFaceClient
c = VIGFaceClient("http://127.0.0.1:8000", api_key="vgf_...")
job = c.submit(identities=100, images_per_identity=10, formats=["recordio"])
c.wait(job["id"])
c.download(job["id"], "recordio", "data/synthetic")
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from tqdm import tqdm


class APIError(RuntimeError):
    """A 4xx/5xx answer; ``str()`` is one line naming each field the service complained of."""

    def __init__(self, status: int, detail):
        if isinstance(detail, list):
            text = "; ".join(
                f"{d.get('field')}: {d.get('message')}" if isinstance(d, dict) else str(d)
                for d in detail
            )
        else:
            text = str(detail)
        super().__init__(f"HTTP {status}: {text}")
        self.status, self.detail = status, detail


class VIGFaceClient:
    def __init__(self, base_url: str, api_key: str, timeout: float = 30.0, transport=None):
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"Bearer {api_key}"},
        )

    def _check(self, r: httpx.Response):
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise APIError(r.status_code, detail)
        return r.json()

    def submit(self, idempotency_key: str | None = None, **order) -> dict:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._check(self.http.post("/v1/jobs", json=order, headers=headers))

    def job(self, job_id: str) -> dict:
        return self._check(self.http.get(f"/v1/jobs/{job_id}"))

    def jobs(self, status: str | None = None) -> list[dict]:
        params = {"status": status} if status else {}
        return self._check(self.http.get("/v1/jobs", params=params))["items"]

    def cancel(self, job_id: str) -> dict:
        return self._check(self.http.post(f"/v1/jobs/{job_id}/cancel"))

    def retry(self, job_id: str) -> dict:
        return self._check(self.http.post(f"/v1/jobs/{job_id}/retry"))

    def report(self, job_id: str) -> dict:
        return self._check(self.http.get(f"/v1/jobs/{job_id}/report"))

    def wait(
        self,
        job_id: str,
        poll_s: float = 2.0,
        timeout_s: float | None = None,
        progress: bool = True,
    ) -> dict:
        """Poll until the job ends, with a progress bar of images done."""
        start = time.time()
        job = self.job(job_id)
        with tqdm(
            total=job["images_requested"],
            unit="img",
            disable=not progress,
            desc=f"job {job_id[:8]}",
        ) as bar:
            while True:
                bar.n = job["images_done"]
                bar.set_postfix(status=job["status"])
                bar.refresh()
                if job["status"] in ("succeeded", "failed", "canceled"):
                    return job
                if timeout_s is not None and time.time() - start > timeout_s:
                    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s}s")
                time.sleep(poll_s)
                job = self.job(job_id)

    def download(self, job_id: str, fmt: str, dest: str | Path) -> list[Path]:
        """Download one format (``imagefolder``, ``recordio``, ``webdataset``) or ``all`` of
        them, plus the manifest, card and report, into ``dest``. Resumes: a file already there
        with the recorded size is not fetched again. Progress in bytes on stderr."""
        listing = self._check(self.http.get(f"/v1/jobs/{job_id}/artifacts"))
        files, sizes = listing["files"], listing.get("sizes", {})
        formats = sorted({k.split("/")[0] for k in files if "/" in k})
        if fmt != "all" and fmt not in formats:
            raise APIError(404, f"the job has no {fmt!r} output (has: {formats})")
        wanted = {
            k: v
            for k, v in files.items()
            if fmt == "all" or k.startswith(f"{fmt}/") or "/" not in k
        }
        todo = {
            k: v
            for k, v in wanted.items()
            if not ((Path(dest) / k).is_file() and (Path(dest) / k).stat().st_size == sizes.get(k))
        }
        bar = tqdm(
            total=sum(sizes.get(k, 0) for k in todo) or None,
            unit="B",
            unit_scale=True,
            desc=f"download ({len(wanted) - len(todo)} of {len(wanted)} files already here)",
        )
        for rel, url in sorted(todo.items()):
            path = Path(dest) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            client = self.http if url.startswith(str(self.http.base_url)) else httpx
            with client.stream("GET", url) as r:
                if r.status_code >= 400:
                    raise APIError(r.status_code, f"download of {rel} failed")
                tmp = path.with_name(path.name + ".part")
                with tmp.open("wb") as f:
                    for chunk in r.iter_bytes():
                        f.write(chunk)
                        bar.update(len(chunk))
                tmp.replace(path)
        bar.close()
        return [Path(dest) / k for k in sorted(wanted)]

    def archive(self, job_id: str, dest: str | Path) -> Path:
        """The whole dataset as one tar file (streamed, with a progress bar)."""
        dest = Path(dest)
        tmp = dest.with_name(dest.name + ".part")
        with self.http.stream("GET", f"/v1/jobs/{job_id}/archive") as r:
            if r.status_code >= 400:
                r.read()
                self._check(r)
            bar = tqdm(
                total=int(r.headers.get("content-length", 0)) or None,
                unit="B",
                unit_scale=True,
                desc="archive",
            )
            with tmp.open("wb") as f:
                for chunk in r.iter_bytes():
                    f.write(chunk)
                    bar.update(len(chunk))
            bar.close()
        tmp.replace(dest)
        return dest
