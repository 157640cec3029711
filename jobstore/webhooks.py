"""Completion and failure webhooks through a database outbox, signed the Standard Webhooks way.

Headers ``webhook-id`` (the job id + status), ``webhook-timestamp`` (unix seconds) and
``webhook-signature: v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>``.

When a job reaches a final state, :func:`notify` writes one row to ``webhook_deliveries``
(unique per ``webhook-id``, so a finalize that runs twice sends one event). Each attempt is one
POST recorded on that row (``attempts``, ``last_error``, ``next_attempt_at`` with exponential
back-off); after ``webhook_max_attempts`` the row is ``failed``. Who makes the attempts:

* with a broker, the Celery task ``vigface.deliver_webhook`` (retried by Celery with the same
  back-off), handed to :func:`notify` as its ``deliver`` callable by the workers; the reaper
  also sweeps due rows, so a lost task message delays, never loses, an event;
* embedded, the in-process worker sweeps due rows between shards.

The job's API record shows the delivery's state (``webhook``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable
from datetime import timedelta
from urllib.parse import urlparse

import httpx
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from jobstore.models import DeliveryStatus, Job, WebhookDelivery, utcnow
from jobstore.settings import Settings

log = logging.getLogger(__name__)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = (
        base64.b64decode(secret.removeprefix("whsec_"))
        if secret.startswith("whsec_")
        else secret.encode()
    )
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def addresses_behind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list:
    """``ip`` and every IPv4 address an IPv6 spelling of it reaches: IPv4-mapped
    (``::ffff:a.b.c.d``), IPv4-compatible (``::a.b.c.d``, ``::7f00:1``), 6to4 (``2002::/16``)
    and NAT64 (``64:ff9b::/96``). Each must be public for the address to be."""
    out = [ip]
    if ip.version == 6:
        if ip.ipv4_mapped:
            out.append(ip.ipv4_mapped)
        if ip.sixtofour:
            out.append(ip.sixtofour)
        if ip in NAT64 or (ip in IPV4_COMPATIBLE and int(ip) > 1):
            out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return out


def refused_address(url: str, allowed_hosts: list[str]) -> str | None:
    """Why a webhook URL must not be called, or None. A webhook is a request the service makes
    on a customer's behalf: to private, loopback, link-local or otherwise reserved addresses it
    would reach inside our network (server-side request forgery), so those are refused unless
    the host is in ``webhook_allowed_hosts``. Checked at order time and again before every
    attempt (a name can resolve elsewhere later)."""
    try:
        host = urlparse(url).hostname
    except ValueError as exc:  # "http://[::1" and other malformed authorities
        return f"not a valid URL: {exc}"
    if not host:
        return "the URL has no host"
    if host in allowed_hosts:
        return None
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return f"{host} does not resolve"
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        if not all(a.is_global and not a.is_multicast for a in addresses_behind(ip)):
            return (
                f"{host} resolves to {ip}, a private, loopback or reserved address "
                "(VIGFACE_WEBHOOK_ALLOWED_HOSTS lists hosts that may be called anyway)"
            )
    return None


def post_once(url: str, secret: str, msg_id: str, payload: dict, timeout: float = 10) -> str | None:
    """One signed POST; None when the receiver accepted it (2xx), else why not."""
    body = json.dumps(payload, sort_keys=True).encode()
    ts = int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
    }
    try:
        r = httpx.post(url, content=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if r.status_code < 300 else f"HTTP {r.status_code}"


def notify(
    sessions: sessionmaker, job_id: str, deliver: Callable[[int], None] | None = None
) -> int | None:
    """Write the outbox row for a job's final state (once) and hand its id to ``deliver``
    (a broker's task queue); without one, the next sweep (:func:`deliver_due`) sends it."""
    with sessions() as db:
        job = db.get(Job, job_id)
        if job is None or not job.webhook_url:
            return None
        row = WebhookDelivery(
            job_id=job.id,
            msg_id=f"{job.id}:{job.status}",
            url=job.webhook_url,
            payload={
                "type": f"job.{job.status}",
                "job_id": job.id,
                "status": str(job.status),
                "images_done": job.images_done,
                "error": job.error,
            },
        )
        db.add(row)
        try:
            db.commit()
        except IntegrityError:  # this event is in the outbox already
            db.rollback()
            return None
        delivery_id = row.id
    if deliver is not None:
        deliver(delivery_id)
    return delivery_id


def attempt_delivery(sessions: sessionmaker, settings: Settings, delivery_id: int) -> str:
    """One attempt at a pending delivery; returns its status afterwards."""
    with sessions() as db:
        row = db.get(WebhookDelivery, delivery_id)
        if row is None or row.status != DeliveryStatus.PENDING:
            return row.status if row is not None else "missing"
        refused = refused_address(row.url, settings.webhook_allowed_hosts)
        if refused is not None:  # never retried: the address will not become acceptable
            row.attempts, row.status, row.last_error = (
                row.attempts + 1,
                DeliveryStatus.FAILED,
                refused,
            )
            db.commit()
            return row.status
        error = post_once(row.url, settings.webhook_secret, row.msg_id, row.payload)
        row.attempts += 1
        if error is None:
            row.status, row.delivered_at, row.last_error = DeliveryStatus.DELIVERED, utcnow(), None
        else:
            log.warning("webhook %s attempt %d: %s", row.msg_id, row.attempts, error)
            row.last_error = error
            if row.attempts >= settings.webhook_max_attempts:
                row.status = DeliveryStatus.FAILED
            else:
                row.next_attempt_at = utcnow() + timedelta(seconds=backoff(settings, row.attempts))
        db.commit()
        return row.status


def backoff(settings: Settings, attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones."""
    return settings.webhook_backoff_seconds * 2 ** (attempts - 1)


def deliver_due(sessions: sessionmaker, settings: Settings) -> int:
    """One attempt for every pending delivery whose time has come; returns how many."""
    with sessions() as db:
        due = list(
            db.scalars(
                select(WebhookDelivery.id).where(
                    WebhookDelivery.status == DeliveryStatus.PENDING,
                    WebhookDelivery.next_attempt_at <= utcnow(),
                )
            )
        )
    for delivery_id in due:
        attempt_delivery(sessions, settings, delivery_id)
    return len(due)
