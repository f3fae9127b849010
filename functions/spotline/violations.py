"""How a refused request says what is wrong: every failing path, in JSON-path form."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SchemaViolation:
    path: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class InvalidJob(ValueError):
    """A job request that can never succeed as sent (HTTP 400, or INVALID_INPUT in the worker)."""

    def __init__(self, message: str, violations: list[SchemaViolation] | None = None) -> None:
        super().__init__(message)
        self.violations = violations or []


def json_path(parts: Any) -> str:
    path = "$"
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def describe_error(error: Any) -> str:
    # oneOf on input/input_uri produces an unreadable default message; say what the rule is.
    if error.validator == "oneOf" and not error.path:
        return "exactly one of 'input' or 'input_uri' is required"
    return str(error.message)
