"""Invoke the real Lambda handlers in-process, with events shaped as their AWS sources send them."""

from __future__ import annotations

import copy
import importlib
import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from devstack.cfn import REPO_ROOT, Stack, function_environment

FUNCTIONS_DIR = REPO_ROOT / "functions"
EVENTS_DIR = REPO_ROOT / "events"


def load_event(name: str) -> dict[str, Any]:
    """A sample event from events/ (the same JSON a user passes to ``sam local invoke``)."""
    path = EVENTS_DIR / (name if name.endswith(".json") else f"{name}.json")
    data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    return data


@dataclass
class LambdaContext:
    """What the Lambda runtime passes as ``context``; enough for Powertools."""

    function_name: str = "spotline-local"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 256
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "/aws/lambda/spotline-local"
    log_stream_name: str = "local"

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def load_handler_module(
    module: str, stack: Stack, logical_id: str, extra_env: dict[str, str] | None = None
) -> ModuleType:
    """Import ``functions/<module>`` with the function's environment from the template."""
    if str(FUNCTIONS_DIR) not in sys.path:
        sys.path.insert(0, str(FUNCTIONS_DIR))
    os.environ.update(function_environment(stack, logical_id))
    os.environ.update(extra_env or {})
    if module in sys.modules:
        return importlib.reload(sys.modules[module])
    return importlib.import_module(module)


def http_event(
    method: str,
    path: str,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    path_parameters: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An HTTP API (payload 2.0) event, built from the sample in events/."""
    event = copy.deepcopy(load_event("enqueue_submit"))
    route = f"{method} /jobs" if not path_parameters else f"{method} /jobs/{{job_id}}"
    event["routeKey"] = route
    event["rawPath"] = path
    event["requestContext"]["routeKey"] = route
    event["requestContext"]["http"]["method"] = method
    event["requestContext"]["http"]["path"] = path
    event["requestContext"]["requestId"] = str(uuid.uuid4())
    event["headers"] = {"content-type": "application/json", **(headers or {})}
    if body is None:
        event.pop("body", None)
    else:
        event["body"] = body if isinstance(body, str) else json.dumps(body)
    event["isBase64Encoded"] = False
    if path_parameters:
        event["pathParameters"] = path_parameters
    else:
        event.pop("pathParameters", None)
    return event
