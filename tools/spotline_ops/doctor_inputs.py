"""What the doctor reads before it checks anything, each failure as one line (no traceback): a
template that is missing or not YAML, a ``--parameter`` the template does not declare, a stack
that AWS cannot be asked about."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from botocore.exceptions import BotoCoreError, ClientError


class InputError(Exception):
    """A doctor input that cannot be used; the message is the one line the user sees."""


def read_template(path: Path, load: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """The template at ``path`` through ``load``; InputError for a missing file or bad YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise InputError(f"{path}: a directory, not a template") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot be read ({exc})") from exc
    try:
        return load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise InputError(f"{path}: not valid YAML ({where}{exc.problem})") from exc
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({one_line(str(exc))})") from exc
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from exc


def parameter_overrides(pairs: Iterable[str], declared: Mapping[str, Any]) -> dict[str, str]:
    """``--parameter NAME=VALUE`` pairs as a dict, every NAME one the template declares."""
    overrides: dict[str, str] = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise InputError(f"--parameter {pair!r}: expected NAME=VALUE")
        if name not in declared:
            close = difflib.get_close_matches(name, list(declared), n=1)
            hint = f"did you mean {close[0]}?" if close else "see the template's Parameters"
            raise InputError(f"--parameter {name}: the template has no such parameter ({hint})")
        overrides[name] = value
    return overrides


def one_line(text: str) -> str:
    return " ".join(text.split())


def aws_failure(stack_name: str, exc: Exception) -> InputError:
    """An AWS error while reading the stack, as one line that says what to check."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        detail = f"{error.get('Code', 'error')}: {error.get('Message', '')}"
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return InputError(f"stack {stack_name}: cannot read it from AWS ({one_line(detail)})")


AWS_ERRORS = (BotoCoreError, ClientError)
