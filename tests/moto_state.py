"""Provision template.yaml into moto once per session; give each test its own copy of the result.

Provisioning the whole template costs a few hundred ms of CPU per stack (about thirty API calls,
and moto makes an RSA key for each KMS key); done per unit test it was a third of the unit suite.
moto keeps all of its state in one backend object per service, account and region, and resets a
backend by rebuilding its ``__dict__``. A deep copy of those objects, taken right after
provisioning and put back into a freshly reset moto, is the same stack, built from the same
template, for a few ms. Each restore is a new copy: no test sees another test's writes.
"""

from __future__ import annotations

import contextlib
import copy
import copyreg
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from moto.core.base_backend import BackendDict

# Locks inside moto's models (an SQS queue's Condition, an S3 key's Lock) are never held between
# API calls, so a copy gets a fresh, unheld one. Registered only while copying.
_FRESH_LOCKS: dict[type, Any] = {
    type(threading.Lock()): lambda _lock: (threading.Lock, ()),
    type(threading.RLock()): lambda _lock: (threading.RLock, ()),
    threading.Condition: lambda _condition: (threading.Condition, ()),
}


@contextlib.contextmanager
def _copyable_locks() -> Iterator[None]:
    saved = {kind: copyreg.dispatch_table.get(kind) for kind in _FRESH_LOCKS}
    copyreg.dispatch_table.update(_FRESH_LOCKS)
    try:
        yield
    finally:
        for kind, reducer in saved.items():
            if reducer is None:
                copyreg.dispatch_table.pop(kind, None)
            else:
                copyreg.dispatch_table[kind] = reducer


def _copy(value: Any) -> Any:
    with _copyable_locks():
        return copy.deepcopy(value)


@dataclass(frozen=True)
class MotoState:
    """Every moto backend in use when captured, by (service, account, region), as a private copy."""

    places: tuple[tuple[BackendDict[Any], str, str], ...]
    backends: tuple[Any, ...]

    @classmethod
    def capture(cls) -> MotoState:
        """Copy the state of the active mock (call inside ``mock_aws``)."""
        places, backends = [], []
        for backend_dict in BackendDict._instances:
            for account_id, regions in backend_dict.items():
                for region, backend in regions.items():
                    places.append((backend_dict, account_id, region))
                    backends.append(backend)
        # One copy for all: a reference from one backend's model to another's stays one object.
        return cls(tuple(places), tuple(_copy(backends)))

    def restore(self) -> None:
        """Put a fresh copy of the captured state into the active mock, which must be fresh
        (a test's own ``mock_aws``): backends the capture did not hold stay as they are."""
        for (backend_dict, account_id, region), backend in zip(
            self.places, _copy(self.backends), strict=True
        ):
            # Indexing the BackendDict registers the service as in use, so the mock's reset at
            # the end of the test clears it as usual.
            dict.__setitem__(backend_dict[account_id], region, backend)
