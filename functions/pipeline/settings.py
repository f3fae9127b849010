"""Configuration of the Lambda functions, read once per cold start."""

from __future__ import annotations

import os
from dataclasses import dataclass


class MissingSetting(RuntimeError):
    """A required environment variable is not set; the message names it."""


def require_env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise MissingSetting(f"environment variable {name} is required")
    return value


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise MissingSetting(
            f"environment variable {name} must be an integer, got {raw!r}"
        ) from exc


@dataclass(frozen=True)
class Settings:
    jobs_table: str
    jobs_queue_url: str
    data_bucket: str
    max_message_bytes: int = 262144

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            jobs_table=require_env("JOBS_TABLE"),
            jobs_queue_url=require_env("JOBS_QUEUE_URL"),
            data_bucket=require_env("DATA_BUCKET"),
            max_message_bytes=env_int("MAX_MESSAGE_BYTES", 262144),
        )
