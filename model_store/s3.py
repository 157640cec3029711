"""S3 (and S3-compatible: MinIO, moto) object storage through boto3.

Uploads go through boto3's managed transfer (multipart above 8 MB) with a SHA-256 checksum
that S3 verifies; the file's whole SHA-256 is also kept as object metadata (``sha256``), so a
resumed upload can tell which objects are already there intact (a multipart object's own
checksum is a checksum of part checksums, not the file's); the client retries throttling
and transient errors (``adaptive`` mode).
Downloads for users are presigned GET links.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from model_store.digest import file_sha256
from vigface.atomic import atomic_path


class S3Store:
    """A bucket and key prefix; user downloads are presigned links valid ``link_seconds``."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        link_seconds: int = 3600,
        public_endpoint_url: str | None = None,
    ):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.link_seconds = link_seconds
        config = Config(
            signature_version="s3v4",
            retries={"max_attempts": 8, "mode": "adaptive"},
            request_checksum_calculation="when_supported",
        )
        self.client = boto3.client("s3", endpoint_url=endpoint_url, config=config)
        # a presigned link's signature covers the host: sign for the address clients use
        # (``http://minio:9000`` inside Docker is not one a client outside can resolve)
        self.link_client = (
            boto3.client("s3", endpoint_url=public_endpoint_url, config=config)
            if public_endpoint_url
            else self.client
        )
        self.transfer = TransferConfig(multipart_threshold=8 * 2**20, multipart_chunksize=8 * 2**20)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, key: str, src: str | Path) -> None:
        self.client.upload_file(
            str(src),
            self.bucket,
            self._key(key),
            Config=self.transfer,
            ExtraArgs={"ChecksumAlgorithm": "SHA256", "Metadata": {"sha256": file_sha256(src)}},
        )

    def sha256(self, key: str) -> str | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return head.get("Metadata", {}).get("sha256")

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except self.client.exceptions.ClientError:
            return False

    def read_bytes(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def size(self, key: str) -> int:
        return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])

    def iter_bytes(self, key: str, chunk_size: int = 2**20) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        yield from body.iter_chunks(chunk_size)

    def download(self, key: str, dest: str | Path) -> None:
        with atomic_path(dest) as tmp:
            self.client.download_file(self.bucket, self._key(key), str(tmp))

    def list(self, prefix: str) -> list[str]:
        out, strip = [], len(self.prefix) + 1 if self.prefix else 0
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._key(prefix)
        )
        for page in pages:
            out += [o["Key"][strip:] for o in page.get("Contents", [])]
        return sorted(out)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def link(self, key: str, plain_link: Callable[[str], str] | None = None) -> str:
        return self.link_client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=self.link_seconds,
        )

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)
