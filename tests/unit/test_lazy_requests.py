"""The functions that may send a webhook do not pay for ``requests`` at cold start (20-30 ms of
their import): importing their handlers leaves it unloaded, making a client does too, and the
first delivery loads it and is delivered as before. A client still makes one session, once.

Each check runs in a fresh interpreter, where nothing else has imported ``requests`` yet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from devstack.cfn import REPO_ROOT, Stack, function_environment
from devstack.sink import WebhookSink
from spotline.webhooks import WebhookClient


def run_fresh(code: str, *args: str, env: dict[str, str] | None = None) -> list[str]:
    """Run ``code`` (``args`` in ``sys.argv[1:]``) in a new interpreter with the Lambda bundle's
    root on its path; the words it prints."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO_ROOT / "functions",
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.split()


@pytest.mark.parametrize(
    ("module", "logical_id"),
    [
        ("alarm_fanout.app", "AlarmFanoutFunction"),
        ("dead_letter.app", "DeadLetterFunction"),
    ],
)
def test_importing_a_handler_that_may_send_leaves_requests_unloaded(
    stack: Stack, module: str, logical_id: str
) -> None:
    code = f"import sys; import {module}; print('requests' in sys.modules)"
    assert run_fresh(code, env=function_environment(stack, logical_id)) == ["False"]


def test_importing_the_modules_that_send_leaves_requests_unloaded() -> None:
    # spot_events.standby is how the spot events function reaches the alert sender.
    code = (
        "import sys; import spotline.alerts, dead_letter.callbacks, spot_events.standby; "
        "print('requests' in sys.modules)"
    )
    assert run_fresh(code) == ["False"]


def test_the_first_alert_loads_requests_and_is_delivered() -> None:
    code = (
        "import sys; from spotline.webhooks import WebhookClient; "
        "client = WebhookClient(max_attempts=1); "
        "print('requests' in sys.modules); "
        "delivery = client.post_json(sys.argv[1], {'text': 'hello'}); "
        "print('requests' in sys.modules, delivery.ok, delivery.status)"
    )
    with WebhookSink() as sink:
        output = run_fresh(code, sink.url + "/slack")
        assert output == ["False", "True", "True", "200"]
        assert [r.json() for r in sink.on("/slack")] == [{"text": "hello"}]


def test_the_first_user_notice_loads_requests_and_is_delivered() -> None:
    code = (
        "import sys; from dead_letter.callbacks import CallbackSender; "
        "from spotline.standard_webhooks import generate_key_pair; "
        "secret, public = generate_key_pair(); "
        "sender = CallbackSender(signing_key_ref='k', public_key=public, "
        "resolve={'k': secret}.__getitem__, test_mode=True); "
        "print('requests' in sys.modules); "
        "delivery = sender.send(sys.argv[1], {'job_id': 'j-1'}); "
        "print('requests' in sys.modules, delivery.ok, delivery.status)"
    )
    with WebhookSink() as sink:
        output = run_fresh(code, sink.url + "/cb")
        assert output == ["False", "True", "True", "200"]
        (received,) = sink.on("/cb")
        assert json.loads(received.body) == {"job_id": "j-1"}
        assert "webhook-signature" in {name.lower() for name in received.headers}


def test_a_client_makes_its_session_once_however_many_threads_send_first() -> None:
    made: list[object] = []
    asking = threading.Semaphore(0)  # one release per thread that has asked for the session
    release = threading.Event()  # the factory holds until every thread has asked

    def held_factory() -> Any:
        assert release.wait(timeout=10), "the threads never all asked"
        made.append(object())
        return made[-1]

    client = WebhookClient(session_factory=held_factory)

    def first_use() -> object:
        asking.release()
        return client.session

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(first_use) for _ in range(8)]
        for _ in range(8):  # all eight are asking while the first one is still making it
            assert asking.acquire(timeout=10), "a thread never asked"
        release.set()
        sessions = [future.result(timeout=10) for future in futures]
    assert len(made) == 1
    assert all(session is made[0] for session in sessions)
