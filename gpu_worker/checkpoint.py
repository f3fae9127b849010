"""Checkpoints and results in S3, keyed by job id (a second writer can never leave two)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlparse

from botocore.exceptions import ClientError

CHECKPOINT_PREFIX = "checkpoints/"
RESULT_PREFIX = "results/"


class InputError(ValueError):
    """The job's input_uri cannot be used (wrong bucket, missing, too large, not JSON)."""


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound"}


class CheckpointStore:
    """``checkpoints/{job_id}``: JSON state or raw bytes, written whole (S3 puts are atomic)."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self._s3 = s3
        self._bucket = bucket

    def key(self, job_id: str) -> str:
        return f"{CHECKPOINT_PREFIX}{job_id}"

    def save(self, job_id: str, state: Any) -> None:
        if isinstance(state, bytes | bytearray):
            body, content_type = bytes(state), "application/octet-stream"
        else:
            body, content_type = json.dumps(state).encode("utf-8"), "application/json"
        self._s3.put_object(
            Bucket=self._bucket, Key=self.key(job_id), Body=body, ContentType=content_type
        )

    def load(self, job_id: str) -> Any | None:
        try:
            response = self._s3.get_object(Bucket=self._bucket, Key=self.key(job_id))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        body = response["Body"].read()
        if response.get("ContentType") == "application/octet-stream":
            return body
        return json.loads(body)

    def delete(self, job_id: str) -> None:
        self._s3.delete_object(Bucket=self._bucket, Key=self.key(job_id))


class ResultStore:
    def __init__(self, s3: Any, bucket: str) -> None:
        self._s3 = s3
        self._bucket = bucket

    def put(self, job_id: str, output_json: str) -> str:
        key = f"{RESULT_PREFIX}{job_id}.json"
        self._s3.put_object(
            Bucket=self._bucket,
            Key=key,
            Body=output_json.encode("utf-8"),
            ContentType="application/json",
        )
        return f"s3://{self._bucket}/{key}"

    def load_input(self, uri: str, max_bytes: int) -> Any:
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or parsed.netloc != self._bucket:
            raise InputError(f"input_uri must be in the stack's bucket s3://{self._bucket}/")
        key = parsed.path.lstrip("/")
        try:
            head = self._s3.head_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if _missing(exc):
                raise InputError(f"input object {uri} does not exist") from exc
            raise
        if int(head.get("ContentLength", 0)) > max_bytes:
            raise InputError(f"input object is larger than {max_bytes} bytes")
        body = self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()
        try:
            return json.loads(body)
        except ValueError as exc:
            raise InputError(f"input object {uri} is not JSON") from exc
