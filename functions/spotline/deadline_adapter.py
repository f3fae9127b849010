"""The ``requests`` adapter whose connections are shut down at their attempt's deadline
(spotline/webhooks.py tells the story).

Apart from webhooks.py because subclassing ``HTTPAdapter`` needs ``requests`` loaded (20-30 ms of
a cold start): every function that may send a webhook imports webhooks.py, and this module is
imported only when a client makes its session, on its first delivery.
"""

from __future__ import annotations

from typing import Any

from requests.adapters import HTTPAdapter

from spotline.webhooks import WatchedHTTPPool, WatchedHTTPSPool


class DeadlineAdapter(HTTPAdapter):
    """An adapter whose connections are shut down at their attempt's deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": WatchedHTTPPool,
            "https": WatchedHTTPSPool,
        }
