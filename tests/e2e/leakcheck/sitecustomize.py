"""Loaded by every Python process of a demo run whose PYTHONPATH names this folder (the leak
test's subprocess): when SPOTLINE_LEAKCHECK_FILE is set, it records each secret written to SSM
(SecureString) or Secrets Manager, and each job message sent to SQS, as one JSON line there, so
the test knows exactly what must never appear in a log."""

from __future__ import annotations

import json
import os
from typing import Any

_PATH = os.environ.get("SPOTLINE_LEAKCHECK_FILE")


def _note(kind: str, value: Any) -> None:
    assert _PATH is not None
    with open(_PATH, "a", encoding="utf-8") as out:
        out.write(json.dumps({"kind": kind, "value": value}) + "\n")


def _install() -> None:
    import botocore.client

    original = botocore.client.BaseClient._make_api_call

    def recording(self: Any, operation: str, params: Any) -> Any:
        if operation == "PutParameter" and params.get("Type") == "SecureString":
            _note("secret", params.get("Value"))
        elif operation in ("CreateSecret", "PutSecretValue", "UpdateSecret"):
            if params.get("SecretString"):
                _note("secret", params["SecretString"])
        elif operation == "SendMessage":
            _note("message", params.get("MessageBody"))
        return original(self, operation, params)

    botocore.client.BaseClient._make_api_call = recording


if _PATH:
    _install()
