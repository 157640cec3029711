"""Completion and failure webhooks, signed the Standard Webhooks way.

Headers ``webhook-id`` (the job id + status), ``webhook-timestamp`` (unix seconds) and
``webhook-signature: v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>``. Delivery
is retried with exponential back-off in a background thread; attempts are logged on the job.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time

import httpx
from sqlalchemy.orm import sessionmaker

from workers.db.models import Job
from workers.settings import Settings

log = logging.getLogger(__name__)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = (
        base64.b64decode(secret.removeprefix("whsec_"))
        if secret.startswith("whsec_")
        else secret.encode()
    )
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def deliver(
    url: str, secret: str, msg_id: str, payload: dict, attempts: int = 5, base_delay: float = 1.0
) -> bool:
    body = json.dumps(payload, sort_keys=True).encode()
    for n in range(attempts):
        ts = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(secret, msg_id, ts, body),
        }
        try:
            r = httpx.post(url, content=body, headers=headers, timeout=10)
            if r.status_code < 300:
                return True
            log.warning("webhook %s: HTTP %s", url, r.status_code)
        except httpx.HTTPError as exc:
            log.warning("webhook %s: %s", url, exc)
        time.sleep(base_delay * 2**n)
    return False


def notify(sessions: sessionmaker, settings: Settings, job_id: str) -> threading.Thread | None:
    with sessions() as db:
        job = db.get(Job, job_id)
        if job is None or not job.webhook_url:
            return None
        payload = {
            "type": f"job.{job.status}",
            "job_id": job.id,
            "status": job.status,
            "images_done": job.images_done,
            "error": job.error,
        }
        url, msg_id = job.webhook_url, f"{job.id}:{job.status}"
    t = threading.Thread(
        target=deliver, args=(url, settings.webhook_secret, msg_id, payload), daemon=True
    )
    t.start()
    return t
