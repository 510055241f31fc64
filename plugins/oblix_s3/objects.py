"""A thin layer over a boto3 S3 client: conditional puts, reads, deletes, clear errors.

Every failure a user can cause (missing bucket, denied access, rejected or missing
credentials, unreachable endpoint) becomes an :class:`~oblix_core.errors.OblixError`
naming the bucket and endpoint, never a credential. Transient failures (500, 503,
``SlowDown``, connection errors) are retried by botocore's ``standard`` retry mode with
exponential backoff before they surface.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import boto3
import botocore.config
import botocore.exceptions

from oblix.plugin import OblixError

#: Error codes meaning "the credentials themselves were rejected".
_BAD_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
}
_DENIED = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "InvalidObjectState"}
_CONFLICT_STATUS = {409, 412}
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}


class ConditionFailed(Exception):
    """A conditional write lost: the object changed (412) or a concurrent write raced (409)."""


def public_endpoint(endpoint_url: str | None) -> str:
    """The endpoint for messages: user info (``user:pass@``) and query strings removed."""
    if not endpoint_url:
        return "AWS S3 (default endpoint)"
    parts = urlsplit(endpoint_url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class S3Objects:
    """Objects of one bucket through a thread-safe boto3 client (credentials: the AWS chain)."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_attempts: int = 5,
        timeout: float = 30.0,
        pool_size: int = 32,
    ) -> None:
        self.bucket = bucket
        self.endpoint = public_endpoint(endpoint_url)
        config = botocore.config.Config(
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=min(timeout, 10.0),
            read_timeout=timeout,
            max_pool_connections=pool_size,
        )
        session = boto3.session.Session()
        with self._errors("connect"):
            self.client = session.client(
                "s3", endpoint_url=endpoint_url, region_name=region or None, config=config
            )

    def where(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key} at {self.endpoint}"

    # -- error translation ----------------------------------------------------------------

    @contextmanager
    def _errors(self, action: str, key: str = "") -> Iterator[None]:
        try:
            yield
        except botocore.exceptions.ClientError as exc:
            raise self._client_error(exc, action, key) from None
        except botocore.exceptions.NoCredentialsError:
            raise OblixError(
                f"No AWS credentials found for the S3 session store ({self.where()}). Set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or use an instance role."
            ) from None
        except (botocore.exceptions.PartialCredentialsError, botocore.exceptions.CredentialRetrievalError):
            raise OblixError(
                f"The AWS credentials for the S3 session store ({self.where()}) are incomplete or "
                "could not be retrieved; check your AWS environment variables or profile."
            ) from None
        except (botocore.exceptions.HTTPClientError, botocore.exceptions.ConnectionError) as exc:
            raise OblixError(
                f"Cannot reach S3 at {self.endpoint} to {action} {self.where(key)} "
                f"({type(exc).__name__}, after retries). Check that the endpoint is up and reachable, "
                "then try again."
            ) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise OblixError(f"S3 {action} of {self.where(key)} failed: {type(exc).__name__}.") from None

    def _client_error(self, exc: botocore.exceptions.ClientError, action: str, key: str) -> OblixError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return OblixError(
                f"The S3 bucket {self.bucket!r} does not exist at {self.endpoint}. Create it, or set the "
                "s3 store's `bucket` option to an existing bucket."
            )
        if code in _BAD_CREDENTIALS:
            return OblixError(
                f"{self.endpoint} rejected the AWS credentials ({code}) while trying to {action} "
                f"{self.where(key)}. Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or your AWS profile."
            )
        if code in _DENIED or status == 403:
            return OblixError(
                f"Access denied ({code or status}) to {action} {self.where(key)}. The credentials need "
                "s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket on the store's prefix."
            )
        return OblixError(
            f"S3 {action} of {self.where(key)} failed: {code or 'HTTP'} (status {status}). "
            "Try again; if it persists, check the service's status."
        )

    @staticmethod
    def _is(exc: botocore.exceptions.ClientError, codes: set[str], statuses: set[int]) -> bool:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in codes or status in statuses

    # -- operations -------------------------------------------------------------------------

    def get(self, key: str, if_none_match: str | None = None) -> tuple[bytes, str] | None:
        """``(body, etag)``, or ``None`` if the key does not exist.

        With ``if_none_match``, an unchanged object returns ``(b"", if_none_match)``
        without transferring its body.
        """
        extra = {"IfNoneMatch": if_none_match} if if_none_match else {}
        with self._errors("read", key):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=key, **extra)
            except botocore.exceptions.ClientError as exc:
                if self._is(exc, _NOT_FOUND, {404}) and not self._is(exc, {"NoSuchBucket"}, set()):
                    return None
                if if_none_match and self._is(exc, {"304", "NotModified"}, {304}):
                    return b"", if_none_match
                raise
            return response["Body"].read(), str(response["ETag"])

    def put(self, key: str, body: bytes, *, if_match: str | None = None, create: bool = False) -> str:
        """Write ``key`` and return its new ETag.

        ``create=True`` sends ``If-None-Match: *`` (only if absent); ``if_match`` sends
        ``If-Match`` (only if unchanged). A lost condition raises :class:`ConditionFailed`;
        ``If-Match`` on a missing object raises it too (S3 answers 404 there).
        """
        extra: dict[str, Any] = {}
        if create:
            extra["IfNoneMatch"] = "*"
        if if_match:
            extra["IfMatch"] = if_match
        with self._errors("write", key):
            try:
                response = self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentType="application/json", **extra
                )
            except botocore.exceptions.ClientError as exc:
                if extra and self._is(
                    exc, {"PreconditionFailed", "ConditionalRequestConflict"}, _CONFLICT_STATUS
                ):
                    raise ConditionFailed(key) from None
                if if_match and self._is(exc, _NOT_FOUND - {"NotFound"}, set()):
                    raise ConditionFailed(key) from None
                raise
            return str(response["ETag"])

    def delete(self, keys: Sequence[str]) -> None:
        """Delete ``keys`` (missing ones are fine), 1,000 per request."""
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            with self._errors("delete", batch[0]["Key"]):
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def list_keys(self, prefix: str, start_after: str = "") -> list[str]:
        """Every key under ``prefix`` (paginated listing), only those after ``start_after`` if given."""
        keys: list[str] = []
        extra = {"StartAfter": start_after} if start_after else {}
        with self._errors("list", prefix):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, **extra):
                keys.extend(str(item["Key"]) for item in page.get("Contents", ()))
        return keys

    def close(self) -> None:
        self.client.close()
