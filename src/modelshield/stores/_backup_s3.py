"""A backup store in an S3-compatible bucket (AWS S3, SeaweedFS, MinIO...), with boto3.

``s3://bucket/prefix``. Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY``, a profile, an instance role); ``endpoint`` (or ``AWS_ENDPOINT_URL``)
names a server other than AWS. A single PUT, and a multipart upload once completed, is atomic in
S3, so an interrupted upload never leaves a partial object under its name.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any, BinaryIO

from modelshield.errors import ConfigError, InvalidInputError, ServiceUnavailableError

__all__ = ["S3BackupStore", "parse_s3_url"]

_CHUNK = 1 << 20


def parse_s3_url(url: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``s3://bucket/prefix`` (the prefix without a trailing ``/``)."""
    if not url.startswith("s3://"):
        raise ConfigError(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise ConfigError(f"no bucket in {url!r}")
    return bucket, prefix.strip("/")


def _status(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        return str(error.get("Code", ""))
    return ""


def _unavailable(exc: BaseException) -> ServiceUnavailableError:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return ServiceUnavailableError(f"backup store unavailable: {type(exc).__name__}: {first}")


class S3BackupStore:
    """A :class:`~modelshield.backup.BackupStore` over one bucket and key prefix.

    ``create`` makes the bucket when it does not exist (``backup create``); timeouts and retries
    are bounded. Close the store to release its connection pool.
    """

    def __init__(
        self,
        url: str,
        *,
        endpoint: str | None = None,
        region: str | None = None,
        create: bool = False,
        client: Any = None,
    ) -> None:
        self._url = url
        self.bucket, self.prefix = parse_s3_url(url)
        if client is None:
            try:
                import boto3
                from botocore.config import Config as BotoConfig  # type: ignore[import-untyped]
            except ImportError:
                raise ConfigError(
                    "s3:// backups need boto3: pip install 'modelshield[s3]'"
                ) from None
            client = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name=region or "us-east-1",
                config=BotoConfig(
                    connect_timeout=10,
                    read_timeout=60,
                    retries={"max_attempts": 3, "mode": "standard"},
                ),
            )
        self._client = client
        if create:
            self._ensure_bucket()

    @property
    def url(self) -> str:
        return self._url

    def _key(self, name: str) -> str:
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise InvalidInputError(f"not a backup object name: {name!r}")
        return f"{self.prefix}/{name}" if self.prefix else name

    def _ensure_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except Exception as exc:
            if _status(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise _unavailable(exc) from None
        try:
            self._client.create_bucket(Bucket=self.bucket)
        except Exception as exc:
            if _status(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise _unavailable(exc) from None

    def put(self, name: str, source: BinaryIO | bytes) -> None:
        body: BinaryIO = (
            io.BytesIO(bytes(source))
            if isinstance(source, bytes | bytearray | memoryview)
            else source
        )
        try:
            self._client.upload_fileobj(body, self.bucket, self._key(name))
        except Exception as exc:
            raise _unavailable(exc) from None

    def get(self, name: str) -> bytes | None:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as exc:
            if _status(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise _unavailable(exc) from None
        body = response["Body"]
        try:
            data: bytes = body.read()
        finally:
            body.close()
        return data

    def read(self, name: str) -> Iterator[bytes]:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as exc:
            if _status(exc) in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(name) from None
            raise _unavailable(exc) from None
        body = response["Body"]
        try:
            yield from body.iter_chunks(_CHUNK)
        finally:
            body.close()

    def size(self, name: str) -> int | None:
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as exc:
            if _status(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise _unavailable(exc) from None
        return int(response["ContentLength"])

    def list(self, prefix: str) -> Iterator[str]:
        full = self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        strip = len(f"{self.prefix}/") if self.prefix else 0
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            )
            for page in pages:
                for item in page.get("Contents", ()):
                    yield str(item["Key"])[strip:]
        except Exception as exc:
            if _status(exc) == "NoSuchBucket":
                return
            raise _unavailable(exc) from None

    def delete(self, name: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as exc:
            raise _unavailable(exc) from None

    def close(self) -> None:
        self._client.close()
