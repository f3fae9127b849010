"""Invoke the real Lambda handlers in-process, with events shaped as their AWS sources send them."""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import json
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
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


# devstack runs every function in one process: one os.environ and one Powertools logger (they all
# log as service "spotline", so they share its formatter and its keys). Lambda runs each function
# in a container of its own, one invocation at a time; here a function's environment and log keys
# exist only while it is being loaded or invoked, and invocations take turns (the dead-letter
# router invokes from its own thread while the demo calls the API).
_INVOCATION_LOCK = threading.RLock()


@contextlib.contextmanager
def function_scope(env: dict[str, str], logger: Any = None) -> Iterator[None]:
    """Run as one function: its environment set, the shared logger's keys (Lambda context,
    appended keys) put back as they were afterwards, no other function running meanwhile."""
    with _INVOCATION_LOCK:
        saved_env = {key: os.environ.get(key) for key in env}
        saved_keys = dict(logger.get_current_keys()) if logger is not None else None
        os.environ.update(env)
        try:
            yield
        finally:
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if saved_keys is not None:
                logger.remove_keys(list(logger.get_current_keys()))
                logger.append_keys(**saved_keys)


def _scoped_handler(handler: Callable[..., Any], env: dict[str, str], logger: Any) -> Any:
    @functools.wraps(handler)
    def invoke(event: Any, context: Any) -> Any:
        with function_scope(env, logger):
            return handler(event, context)

    return invoke


def load_handler_module(
    module: str, stack: Stack, logical_id: str, extra_env: dict[str, str] | None = None
) -> ModuleType:
    """Import ``functions/<module>`` with the function's environment from the template.

    The environment is set while the module loads (its cold start reads it) and while its
    ``handler`` runs, and taken away after each: it never leaks into the caller or into
    another function."""
    if str(FUNCTIONS_DIR) not in sys.path:
        sys.path.insert(0, str(FUNCTIONS_DIR))
    env = {**function_environment(stack, logical_id), **(extra_env or {})}
    with function_scope(env):
        if module in sys.modules:
            loaded = importlib.reload(sys.modules[module])
        else:
            loaded = importlib.import_module(module)
    if callable(getattr(loaded, "handler", None)):
        loaded.handler = _scoped_handler(loaded.handler, env, getattr(loaded, "logger", None))
    return loaded


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
