"""``python -m devstack.moto_main``: moto server, with two SQS races of moto 5.2 closed.

moto's server answers requests on many threads, but its SQS queue only locks ``add_message``:
``delete_message`` rebuilds the message list without the lock (a message sent while another
client deletes can vanish), and ``receive_message`` moves a message to the DLQ with an unlocked
``list.remove`` (a delete rebuilding the list at the same moment can bring it back). Real SQS
does neither, and a harness that loses messages by itself would hide or invent the pipeline's
own losses, so both run under the queue's lock here. The lock is a ``Condition`` over an RLock:
the long poll inside ``receive_message`` waits on it and so releases it while it waits.
"""

from __future__ import annotations

import functools
from typing import Any

from moto.sqs import models


def close_races() -> None:
    """Run SQS deletes and receives under the queue's message lock (idempotent)."""
    queue_delete = models.Queue.delete_message
    if getattr(queue_delete, "_spotline_locked", False):
        return

    @functools.wraps(queue_delete)
    def delete_message(self: models.Queue, receipt_handle: str) -> None:
        with self._messages_lock:
            queue_delete(self, receipt_handle)

    backend_receive = models.SQSBackend.receive_message

    @functools.wraps(backend_receive)
    def receive_message(self: models.SQSBackend, queue_name: str, *args: Any, **kwargs: Any) -> Any:
        queue = self.get_queue(queue_name)
        with queue._messages_lock:
            return backend_receive(self, queue_name, *args, **kwargs)

    delete_message._spotline_locked = True  # type: ignore[attr-defined]
    models.Queue.delete_message = delete_message  # type: ignore[method-assign]
    models.SQSBackend.receive_message = receive_message  # type: ignore[method-assign]


def main() -> None:
    close_races()
    from moto.server import main as moto_server

    moto_server()


if __name__ == "__main__":
    main()
