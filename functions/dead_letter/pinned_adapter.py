"""The adapter that connects a user notice to the address its SSRF check looked at
(dead_letter/callbacks.py tells the story).

Apart from callbacks.py because subclassing an adapter needs ``requests`` loaded (20-30 ms of a
cold start): this module is imported when the callback client makes its session, on the first
notice sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spotline.deadline_adapter import DeadlineAdapter

if TYPE_CHECKING:
    import requests


class PinnedHostAdapter(DeadlineAdapter):
    """Connects to the address in the URL while SNI and certificate checks use the Host header's
    name: the connection goes where the SSRF check looked, and TLS still proves who answers.
    Its connections are shut down at their delivery's deadline, like every outbound one."""

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: bool | str, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        host = request.headers.get("Host", "")
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        if host_params.get("scheme") == "https" and name:
            pool_kwargs["server_hostname"] = name
            pool_kwargs["assert_hostname"] = name
        return host_params, pool_kwargs
