"""X-Ray for every function (the template's ``Tracing: Active``): one Powertools Tracer per
function, patching botocore so that each AWS call is a subsegment.

Only botocore: a webhook delivery runs in a helper thread whose sockets are shut down at its
deadline (spotline/webhooks.py), and X-Ray's patches of requests and http.client would wrap
that machinery for little gain. A handler's response is not recorded (``capture_response``
off): GET /jobs/{id} answers with the user's request, and traces keep no user payloads.
Outside Lambda (tests, devstack, ``sam local invoke``) Powertools disables the Tracer itself;
``POWERTOOLS_TRACE_DISABLED=true`` does it anywhere.
"""

from __future__ import annotations

from aws_lambda_powertools import Tracer

TRACED_MODULES = ("botocore",)


def function_tracer() -> Tracer:
    return Tracer(patch_modules=TRACED_MODULES)
