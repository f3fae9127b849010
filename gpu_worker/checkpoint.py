"""Checkpoints and results in S3, keyed by job id (a second writer can never leave two).

Checkpoints may instead live in a directory (``WORKER_CHECKPOINT_DIR``, e.g. an EFS mount shared
by the fleet): each is written to a temporary file and renamed over the old one, so a reader
never sees half a checkpoint, even when the writer's host vanishes mid-write.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from spotline.contract import InvalidJob, input_key

logger = Logger(service="spotline-worker", child=True)

CHECKPOINT_PREFIX = "checkpoints/"
# User metadata on each checkpoint object: when its state was taken, epoch seconds with
# milliseconds. S3's LastModified has one-second resolution, too coarse to tell how much work a
# hard kill cost when checkpoints are a second apart.
SAVED_AT_METADATA = "saved-at"
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
        body, raw = _encode(state)
        content_type = "application/octet-stream" if raw else "application/json"
        self._s3.put_object(
            Bucket=self._bucket,
            Key=self.key(job_id),
            Body=body,
            ContentType=content_type,
            Metadata={SAVED_AT_METADATA: f"{time.time():.3f}"},
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
        return _decode_json(body, job_id)

    def delete(self, job_id: str) -> None:
        self._s3.delete_object(Bucket=self._bucket, Key=self.key(job_id))


def _decode_json(body: bytes, job_id: str) -> Any | None:
    """A checkpoint that is not JSON (written by hand, truncated by a broken disk) is no
    checkpoint: the job starts over rather than failing on every attempt."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        logger.warning("checkpoint unreadable; starting over", extra={"job_id": job_id})
        return None


def _encode(state: Any) -> tuple[bytes, bool]:
    """(body, is_raw_bytes)."""
    if isinstance(state, bytes | bytearray):
        return bytes(state), True
    return json.dumps(state).encode("utf-8"), False


_SAFE_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class FileCheckpointStore:
    """``{directory}/{job_id}.ckpt``: one byte saying JSON (``J``) or raw bytes (``B``), then
    the state. Same interface as CheckpointStore."""

    SUFFIX = ".ckpt"

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, job_id: str) -> Path:
        if not _SAFE_JOB_ID.match(job_id):
            raise ValueError(f"job id {job_id!r} cannot name a checkpoint file")
        return self.directory / f"{job_id}{self.SUFFIX}"

    def save(self, job_id: str, state: Any) -> None:
        target = self.path(job_id)
        body, raw = _encode(state)
        fd, temp_name = tempfile.mkstemp(prefix=f".{job_id}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(b"B" if raw else b"J")
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_name, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            raise
        # The rename itself must survive a crash too: sync the directory entry.
        with contextlib.suppress(OSError):
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def load(self, job_id: str) -> Any | None:
        try:
            data = self.path(job_id).read_bytes()
        except FileNotFoundError:
            return None
        kind, body = data[:1], data[1:]
        if kind == b"B":
            return body
        return _decode_json(body, job_id)

    def delete(self, job_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(job_id).unlink()


class ResultStore:
    def __init__(self, s3: Any, bucket: str) -> None:
        self._s3 = s3
        self._bucket = bucket

    def key(self, job_id: str, attempt_id: str) -> str:
        """One object per attempt: the record's ``result_uri`` names the one whose completion
        was recorded, and a presumed-dead holder's late output can never replace it."""
        return f"{RESULT_PREFIX}{job_id}/result-{attempt_id}.json"

    def put(self, job_id: str, output_json: str, attempt_id: str) -> str:
        key = self.key(job_id, attempt_id)
        self._s3.put_object(
            Bucket=self._bucket,
            Key=key,
            Body=output_json.encode("utf-8"),
            ContentType="application/json",
        )
        return f"s3://{self._bucket}/{key}"

    def discard(self, job_id: str, attempt_id: str) -> None:
        """Remove an attempt's output that no record names (its completion was refused or
        never landed, or a later attempt's was recorded)."""
        self._s3.delete_object(Bucket=self._bucket, Key=self.key(job_id, attempt_id))

    def put_artifact(self, job_id: str, name: str, data: bytes, content_type: str) -> str:
        """``results/{job_id}/{name}``: keyed by job, so a second writer overwrites, never adds."""
        key = f"{RESULT_PREFIX}{job_id}/{name}"
        self._s3.put_object(Bucket=self._bucket, Key=key, Body=data, ContentType=content_type)
        return f"s3://{self._bucket}/{key}"

    def load_input(self, uri: str, max_bytes: int) -> Any:
        """The job's input object: under inputs/ of this bucket only, at most ``max_bytes``
        (counted on the read itself: an object replaced after a HEAD cannot slip past)."""
        try:
            key = input_key(uri, self._bucket)
        except InvalidJob as exc:
            detail = "; ".join(v.message for v in exc.violations) or str(exc)
            raise InputError(f"input_uri refused: {detail}") from exc
        try:
            response = self._s3.get_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if _missing(exc):
                raise InputError(f"input object {uri} does not exist") from exc
            raise
        stream = response["Body"]
        try:
            if int(response.get("ContentLength") or 0) > max_bytes:
                raise InputError(f"input object is larger than {max_bytes} bytes")
            body = stream.read(max_bytes + 1)
        finally:
            stream.close()
        if len(body) > max_bytes:
            raise InputError(f"input object is larger than {max_bytes} bytes")
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise InputError(f"input object {uri} is not JSON") from exc
