"""``python -m gpu_worker.healthcheck``: the image's HEALTHCHECK, one GET of the worker's /healthz.

Exit 0 on a 200, 1 otherwise (a 503, a refused connection, a timeout), with one line saying
why: docker keeps the last lines of each check in ``docker inspect``. It asks the supervisor's
port (WORKER_HEALTH_PORT) on the loopback, whatever address the server binds.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_PORT = 8080
TIMEOUT_S = 3.0


def check(port: int, *, timeout_s: float = TIMEOUT_S) -> tuple[bool, str]:
    """Whether ``/healthz`` on 127.0.0.1:port answers 200, and a line that says what it got."""
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return True, f"{url}: {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: {exc.code}"
    except (OSError, ValueError) as exc:  # refused, timed out, unreachable
        # urllib wraps the socket's error: name that one (ConnectionRefusedError, TimeoutError).
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return False, f"{url}: {type(reason).__name__}: {reason}"


def main() -> int:
    raw = os.environ.get("WORKER_HEALTH_PORT", "").strip() or str(DEFAULT_PORT)
    try:
        port = int(raw)
    except ValueError:
        print(f"healthcheck: WORKER_HEALTH_PORT must be a port number, got {raw!r}")
        return 1
    healthy, line = check(port)
    print(f"healthcheck: {line}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
