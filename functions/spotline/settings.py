"""Configuration of the Lambda functions, read once per cold start."""

from __future__ import annotations

import os
from dataclasses import dataclass

from spotline.catalog import load_catalog
from spotline.contract import DEFAULT_MAX_RUNTIME_S, RequestPolicy
from spotline.tiers import InvalidTiers, Tier, parse_tiers


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


def env_bool(name: str, default: bool) -> bool:
    """ "true" or "false" (the template's AllowedValues); anything else fails at import."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in ("true", "false"):
        raise MissingSetting(f"environment variable {name} must be true or false, got {raw!r}")
    return raw == "true"


@dataclass(frozen=True)
class JobResources:
    """The stack's job table, queue and bucket: what every function but enqueue needs (they
    read nothing else of Settings, so the template sets nothing else for them)."""

    jobs_table: str
    jobs_queue_url: str
    data_bucket: str

    @classmethod
    def from_env(cls) -> JobResources:
        return cls(
            jobs_table=require_env("JOBS_TABLE"),
            jobs_queue_url=require_env("JOBS_QUEUE_URL"),
            data_bucket=require_env("DATA_BUCKET"),
        )


@dataclass(frozen=True)
class Settings:
    """The enqueue function's: the job resources and the stack's limits on requests."""

    jobs_table: str
    jobs_queue_url: str
    data_bucket: str
    max_message_bytes: int = 262144
    # EnableDrillAnalyzers: only devstack, tests and drills accept the analyzers that break things.
    drills_enabled: bool = False
    # WorkerMaxRuntimeS: every attempt's runtime limit; a request may lower it, never raise it.
    max_runtime_s: int = DEFAULT_MAX_RUNTIME_S
    # JOB_TIERS (stacks with WorkerTiers): a job starts on the smallest tier that fits its
    # analyzer's declared memory (spotline/tiers.py); empty: every job on JOBS_QUEUE_URL.
    tiers: tuple[Tier, ...] = ()

    @classmethod
    def from_env(cls) -> Settings:
        max_runtime_s = env_int("MAX_RUNTIME_S", DEFAULT_MAX_RUNTIME_S)
        if max_runtime_s < 1:
            raise MissingSetting(
                f"environment variable MAX_RUNTIME_S must be positive, got {max_runtime_s}"
            )
        resources = JobResources.from_env()
        return cls(
            jobs_table=resources.jobs_table,
            jobs_queue_url=resources.jobs_queue_url,
            data_bucket=resources.data_bucket,
            max_message_bytes=env_int("MAX_MESSAGE_BYTES", 262144),
            drills_enabled=env_bool("ENABLE_DRILL_ANALYZERS", False),
            max_runtime_s=max_runtime_s,
            tiers=job_tiers_from_env(),
        )

    def request_policy(self) -> RequestPolicy:
        """What this stack accepts beyond the schema (the worker applies the same policy)."""
        return RequestPolicy(
            bucket=self.data_bucket,
            drills_enabled=self.drills_enabled,
            max_runtime_s=self.max_runtime_s,
            # Read at cold start, once: a request only looks its analyzer up.
            catalog=load_catalog(),
        )


def job_tiers_from_env() -> tuple[Tier, ...]:
    """JOB_TIERS (enqueue, sweep): the tiers' queues, smallest first; empty without tiers."""
    return _tiers(os.environ.get("JOB_TIERS", ""))


def _tiers(text: str) -> tuple[Tier, ...]:
    """JOB_TIERS, checked at cold start: a wrong value fails with its name, never a request."""
    try:
        return parse_tiers(text)
    except InvalidTiers as exc:
        raise MissingSetting(str(exc)) from exc
