"""A bound on a request's head (request line and headers), in the HTTP protocol itself.

uvicorn's httptools protocol parses a head of any size: one connection sending a 30 MB header
kept the event loop busy for seconds and held every other client up. This protocol counts the
bytes of each request's head as they arrive and, past ``max_header_bytes``
(``VIGFACE_MAX_HEADER_BYTES``), answers 431 and closes the connection without parsing more.
``vigface serve`` runs uvicorn with it, in one process and with ``--workers``, so the compose
deployment (which serves with ``vigface serve``) has it too.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _limit() -> int:
    from jobstore.settings import get_settings

    return get_settings().max_header_bytes


class BoundedHeadProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded request head (431 past it)."""

    max_head_bytes: int | None = None  # None: the deployment's setting

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.limit = self.max_head_bytes or _limit()
        self.head_bytes, self.in_head = 0, True

    def data_received(self, data: bytes) -> None:
        if self.in_head:
            self.head_bytes += len(data)
            if self.head_bytes > self.limit:
                self.refuse()
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self.in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.head_bytes, self.in_head = 0, True  # the next request on this connection

    def refuse(self) -> None:
        body = json.dumps(
            {
                "detail": [
                    {
                        "field": "headers",
                        "message": f"request line and headers above {self.limit} bytes",
                    }
                ]
            }  # fmt: skip
        ).encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()
        self.in_head = False
